"""benchmarks/attention_layer.py: the memory column (issue 21) measures what
a step allocates, on JAX from XLA's memory analysis, so on the CPU too."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_jax_step_memory_holds_the_saved_attention_weights(tmp_path):
    log = tmp_path / "rows.jsonl"
    batch, length, heads = 2, 256, 4
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "attention_layer.py"),
         "--sizes", f"{batch},{length},64,{heads},32", "--variants", "explicit",
         "--repeats", "1", "--log", str(log)],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = {row["mode"]: row for row in map(json.loads, log.read_text().splitlines()) if "mode" in row}
    assert set(rows) == {"fwd", "fwd+bwd"}
    # The backward keeps the (batch, heads, length, length) float32
    # attention weights of both layers' explicit paths for the gradient.
    scores_mib = batch * heads * length * length * 4 / 2**20
    for name in ("mha_mib", "collab_mib"):
        assert rows["fwd+bwd"][name] >= scores_mib, (name, rows["fwd+bwd"][name])
        assert rows["fwd+bwd"][name] > rows["fwd"][name] > 0, name
    assert "| MHA MiB | collab MiB |" in result.stdout
