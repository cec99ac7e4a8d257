"""The torch Triton kernels compiled for an H100 / H200 (sm_90) on the CPU.

Triton compiles ahead of time without a GPU (`ptxas` ships in its wheel).
Every kernel that a forward and a backward launch, with the default tiles
(`_triton_attention.default_config`), is compiled at every shared key width
from 64 to 512 in steps of 64, both backwards, every mask kind, causal,
float32 and wider values (`benchmarks/kernel_resources.py`: the launches of
the kernel module's own `_forward` and `_backward` on CPU tensors, compiled
with Triton's own argument specialization); each must compile (Triton's
rules on tile shapes, `ptxas`) and fit a block's shared memory by the
compiler's own count, not only by `fit_tiles`' model of it.
"""

import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))

import kernel_resources  # noqa: E402

from collab_keras.ops._attention_utils import SHARED_MEMORY_BYTES  # noqa: E402


@pytest.fixture(scope="module")
def ta(tmp_path_factory):
    """The kernel module with compiled kernels; Triton's cache in a
    temporary folder."""
    saved = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton"))
    try:
        yield kernel_resources.triton_module()
    finally:
        os.environ.pop("TRITON_CACHE_DIR")
        if saved is not None:
            os.environ["TRITON_CACHE_DIR"] = saved


CASES = [
    # key width, dtype, mask, causal, value width
    *[(width, torch.bfloat16, "none", False, 64)
      for width in kernel_resources.KEY_WIDTHS],
    (256, torch.bfloat16, "keys", True, 64),
    (384, torch.bfloat16, "full", True, 64),
    (192, torch.bfloat16, "full", False, 80),  # refused on the H200 once
    (256, torch.float32, "keys", False, 64),
    (384, torch.float16, "none", True, 128),
]


@pytest.mark.parametrize("backward", sorted(kernel_resources.BACKWARDS))
@pytest.mark.parametrize(
    "key_width,dtype,mask,causal,value_width", CASES,
    ids=[f"k{w}-{str(d)[6:]}-mask_{m}{'-causal' if c else ''}-v{v}"
         for w, d, m, c, v in CASES])
def test_kernels_compile_for_hopper_and_fit_shared_memory(
        ta, key_width, dtype, mask, causal, value_width, backward):
    launches = kernel_resources.triton_launches(
        ta, key_width, backward, dtype, mask, causal, value_width)
    names = {kernel.__name__ for kernel, _, _ in launches}
    written = {"_mixing_gradient_kernel"} if backward == "written" else {
        "_query_kernel"}
    assert {"_forward_kernel", "_key_kernel"} | written <= names
    for kernel, args, kwargs in launches:
        compiled = kernel_resources.compile_triton(kernel, args, kwargs)
        shared = compiled.metadata.shared
        assert shared <= SHARED_MEMORY_BYTES, (kernel.__name__, shared, kwargs)


def test_the_script_prints_a_row_per_kernel_and_checks_its_arguments(
        tmp_path):
    import json
    import subprocess

    script = kernel_resources.__file__
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, script, "--kernels", "triton", "--key-widths", "64",
         "--backwards", "flash", "--tiles", "warps_bwd=8",
         "--json", str(tmp_path / "rows.jsonl")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line)
            for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    kernels = {row["kernel"]: row for row in rows}
    assert set(kernels) == {"forward_kernel", "delta_kernel", "key_kernel",
                            "query_kernel"}
    assert kernels["query_kernel"]["warps"] == 8  # --tiles reached it
    assert all(row["shared_bytes"] > 0 and row["registers"] for row in rows)
    assert result.stdout.count("| triton | 64 | flash |") == 4
    for bad, message in ((["--tiles", "warps_bwd=x"], "Received: warps_bwd=x"),
                         (["--kernels", "cuda"], "Received: cuda"),
                         (["--backwards", "fast"], "Received: fast")):
        result = subprocess.run([sys.executable, script, *bad],
                                capture_output=True, text=True, env=env,
                                timeout=600)
        assert result.returncode == 2 and message in result.stderr, bad
