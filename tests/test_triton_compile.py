"""The torch Triton kernels compiled for an H100 / H200 (sm_90) on the CPU.

Triton compiles ahead of time without a GPU (`ptxas` ships in its wheel).
`benchmarks/kernel_resources.py` (run in a process of its own,
`tests/_kernel_resources.py`) compiles every kernel that a forward and a
backward launch, with the default tiles (`_triton_attention.default_config`)
and Triton's own argument specialization, at every shared key width from 64
to 512 in steps of 64, both backwards, every mask kind, causal, float16,
float32 and wider values; each must compile (Triton's rules on tile shapes,
`ptxas`) and fit a block's shared memory by the compiler's own count
(`--check`), not only by `fit_tiles`' model of it.
"""

import importlib.util

import pytest

from tests import _kernel_resources

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or importlib.util.find_spec("torch") is None,
    reason="the Triton package and torch compile the kernels")

KEY_WIDTHS = (64, 128, 192, 256, 320, 384, 448, 512)


def _compiled_rows(tmp_path, *args):
    result, rows = _kernel_resources.run(tmp_path, "--kernels", "triton",
                                         *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for backward, last in (("written", "mixing_gradient_kernel"),
                           ("flash", "query_kernel")):
        names = {row["kernel"] for row in rows if row["backward"] == backward}
        assert {"forward_kernel", "key_kernel", last} <= names, names
    return rows


def test_kernels_compile_at_every_key_width(tmp_path):
    rows = _compiled_rows(tmp_path, "--mask", "none")
    assert {row["key_width"] for row in rows} == set(KEY_WIDTHS)


@pytest.mark.parametrize(
    "args",
    [
        ("--key-widths", "256", "--mask", "keys", "--causal"),
        ("--key-widths", "384", "--mask", "full", "--causal"),
        # values 80 with a general mask: refused on the H200 once
        ("--key-widths", "192", "--mask", "full", "--value-width", "80"),
        ("--key-widths", "256", "--dtype", "float32"),
        ("--key-widths", "384", "--dtype", "float16", "--causal",
         "--value-width", "128"),
    ],
    ids=["causal-keys", "causal-full", "full-v80", "float32", "float16-v128"])
def test_kernels_compile_for_masks_dtypes_and_widths(tmp_path, args):
    rows = _compiled_rows(tmp_path, *args)
    assert rows and all(row["shared_bytes"] > 0 for row in rows)


def test_the_script_reports_rows_tiles_and_bad_arguments(tmp_path):
    result, rows = _kernel_resources.run(
        tmp_path, "--kernels", "triton", "--key-widths", "64", "--backwards",
        "flash", "--tiles", "warps_bwd=8")
    assert result.returncode == 0, result.stderr[-3000:]
    kernels = {row["kernel"]: row for row in rows}
    assert set(kernels) == {"forward_kernel", "delta_kernel", "key_kernel",
                            "query_kernel"}
    assert kernels["query_kernel"]["warps"] == 8  # --tiles reached it
    assert all(row["registers"] for row in rows)
    assert result.stdout.count("| triton | 64 | flash |") == 4
    # A tile too large for a block's shared memory fails --check.
    result, rows = _kernel_resources.run(
        tmp_path, "--kernels", "triton", "--key-widths", "256", "--backwards",
        "flash", "--tiles", "block_q=256,block_k=256")
    assert result.returncode == 1 and "more than a block's" in result.stderr
    for bad, message in ((["--tiles", "warps_bwd=x"], "Received: warps_bwd=x"),
                         (["--kernels", "cuda"], "Received: cuda"),
                         (["--backwards", "fast"], "Received: fast")):
        result, _ = _kernel_resources.run(tmp_path, *bad, check=False)
        assert result.returncode == 2 and message in result.stderr, bad
