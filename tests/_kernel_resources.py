"""Runs `benchmarks/kernel_resources.py` in a process of its own and reads its
rows: Triton fixes at its first import whether `@triton.jit` functions
(its own library's included) are interpreted, so compiling for the GPU in
the test process would break the interpreter tests that share it."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "kernel_resources.py")


def run(tmp_path, *args, check=True):
    """The script's completed process and its rows (`--json`)."""
    rows_path = tmp_path / "rows.jsonl"
    env = {name: value for name, value in os.environ.items()
           if name != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    result = subprocess.run(
        [sys.executable, SCRIPT, *args, "--json", str(rows_path)]
        + (["--check"] if check else []),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    rows = []
    if rows_path.exists():
        rows = [json.loads(line)
                for line in rows_path.read_text().splitlines()]
    return result, rows
