"""The torch Triton kernel's routing on CPUs, and its kernels in Triton's
interpreter.

Without a GPU: the torch kernel choice (`_torch_attention.triton_kernel`,
`fused_preferred`, `collab_keras.ops.fused_attention_preferred`) never takes
Triton on CPU tensors, shapes the kernel does not take are refused with a
clear error, and the same kernels as on a GPU run in Triton's interpreter
(`TRITON_INTERPRET=1`) with small tiles so that ragged tails, several blocks,
grouped heads, two key tiles (width over 256), every mask kind, fully masked
rows and NaN are covered; outputs and the gradients of every input are
compared with the explicit computation in float64. float32 runs the kernels'
IEEE products; float16 is checked at its rounding (the interpreter's
bfloat16 is not numpy's, so bfloat16 is left to the GPU check). The compiled
kernel is checked on a GPU by `tests/gpu_triton_attention.py`.
"""

import functools
import importlib
import os
import sys

import pytest

torch = pytest.importorskip("torch")

from tests._torch_attention_reference import explicit  # noqa: E402
from tests._torch_attention_reference import output_and_grads  # noqa: E402

from collab_keras.ops import _torch_attention  # noqa: E402


def _interpreted_kernel_module():
    """`_triton_attention` with its kernels in Triton's interpreter (which
    reads `TRITON_INTERPRET` when the kernels are defined and when they
    run)."""
    pytest.importorskip("triton")
    from triton.runtime import interpreter

    _index_scalars_of_any_shape(interpreter)
    name = "collab_keras.ops._triton_attention"
    if name in sys.modules:
        return importlib.reload(sys.modules[name])
    return importlib.import_module(name)


def _index_scalars_of_any_shape(interpreter):
    """Triton 3.6's interpreter turns its scalars (1-element arrays) into
    loop bounds with `int(array)`, which NumPy 2.4 refuses for arrays of one
    dimension; take the element instead."""
    patch = getattr(interpreter, "_patch_lang_tensor")
    if getattr(patch, "_takes_any_shape", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__",
                       lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._takes_any_shape = True
    interpreter._patch_lang_tensor = patched


@pytest.fixture(scope="module")
def ta():
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield _interpreted_kernel_module()
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _inputs(batch=2, length=21, keys=35, heads=3, key_width=24, value_width=8,
            content=True, mask=None, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen)
    q, k = rand(batch, length, key_width), rand(batch, keys, key_width)
    v, m = rand(batch, keys, heads, value_width), rand(heads, key_width)
    c = rand(batch, keys, heads) * 3 if content else None
    if mask == "keys":  # (B, 1, 1, S), one row with a single key
        lengths = torch.tensor([keys, 1, keys // 2][:batch])
        mask = (torch.arange(keys)[None, :] < lengths[:, None])[:, None, None, :]
    elif mask in ("shared", "heads"):  # (B, 1|N, T, S), a fully masked row
        mask = torch.rand(batch, heads if mask == "heads" else 1, length, keys,
                          generator=gen) < 0.5
        mask[:, :, 2, :] = False
    g = rand(batch, length, heads, value_width)
    cast = lambda x: None if x is None else x.to(dtype)
    return [cast(x) for x in (q, k, v, m, c)], mask, g


# The reference in float64.
_explicit = functools.partial(explicit, dtype=torch.float64)


def _assert_close(got, want, rtol):
    for a, b in zip(got, want):
        error = float((a.double() - b.double()).abs().max())
        assert error <= rtol * float(b.abs().max()), error / float(b.abs().max())


def _small_tiles(ta, **changes):
    return ta.Config(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16,
                     block_q_ds=16, block_k_ds=16, block_t_mix=16,
                     block_c_mix=16, **changes)


# The two backward passes: the score gradient written to memory (the
# default where it fits) and the flash backward (a budget of 0 bytes).
BACKWARDS = {"written": {}, "flash": {"score_gradient_bytes": 0}}


@pytest.mark.parametrize("backward", sorted(BACKWARDS))
@pytest.mark.parametrize(
    "mask,causal,content",
    [(None, False, True), (None, True, True), ("keys", False, True),
     ("shared", True, False), ("heads", False, True), ("keys", True, True)],
)
def test_interpreted_kernel_matches_explicit(ta, mask, causal, content,
                                             backward):
    args, mask, g = _inputs(mask=mask, content=content)
    kwargs = dict(mask=mask, scale=0.2, is_causal=causal)
    got = output_and_grads(ta.attention, args, g,
                            config=_small_tiles(ta, **BACKWARDS[backward]),
                            **kwargs)
    want = output_and_grads(_explicit, args, g, **kwargs)
    _assert_close(got, want, 1e-5)


@pytest.mark.parametrize("backward", sorted(BACKWARDS))
@pytest.mark.parametrize(
    "shape,groups",
    [
        # B, T, S, N, K (two tiles: 256 + 16, 128 + 16), V
        ((1, 18, 20, 4, 272, 20), 0),
        ((1, 18, 20, 2, 144, 20), 0),
        ((2, 17, 33, 4, 24, 8), 2),  # heads split over two programs
    ],
)
def test_interpreted_kernel_wide_keys_and_head_groups(ta, shape, groups,
                                                      backward):
    batch, length, keys, heads, key_width, value_width = shape
    args, mask, g = _inputs(batch, length, keys, heads, key_width,
                            value_width, mask="heads")
    kwargs = dict(mask=mask, scale=key_width**-0.5, is_causal=True)
    config = _small_tiles(ta, head_groups=groups, **BACKWARDS[backward])
    got = output_and_grads(ta.attention, args, g, config=config, **kwargs)
    want = output_and_grads(_explicit, args, g, **kwargs)
    _assert_close(got, want, 1e-5)


@pytest.mark.parametrize(
    "kind,batch,heads,budget_heads,launches",
    [
        # A budget of one batch row's score gradient (3 heads): one row at a
        # time, a per-batch mask sliced with the rows, a broadcast one not.
        ("keys", 3, 3, 3, 3),
        ("heads", 3, 3, 3, 3),
        ("broadcast", 3, 3, 3, 3),
        # A row over the budget: its heads in chunks (3 + 1 of 4: the last
        # chunk smaller), each kernel reading its heads' slices (a per-head
        # mask, the content term, the values and their gradients); dq and dk
        # summed over the chunks.
        ("heads", 2, 4, 3, 4),
        ("keys", 2, 4, 3, 4),
    ],
)
def test_interpreted_written_backward_in_chunks(ta, kind, batch, heads,
                                                budget_heads, launches,
                                                monkeypatch):
    """The written backward in chunks (of batch rows, or of one row's heads)
    gives the gradients of the whole batch in one go."""
    length, keys = 21, 35
    args, mask, g = _inputs(batch, length, keys, heads,
                            mask="heads" if kind == "broadcast" else kind)
    if kind == "broadcast":
        mask = mask[:1]  # (1, N, T, S)
    head_bytes = length * keys * args[0].element_size()
    grids = []
    monkeypatch.setattr(ta, "_key_kernel", _Counting(ta._key_kernel, grids))
    kwargs = dict(mask=mask, scale=0.2)
    chunked = output_and_grads(
        ta.attention, args, g,
        config=_small_tiles(ta, score_gradient_bytes=budget_heads
                            * head_bytes),
        **kwargs)
    # grids: (key blocks, batch rows, head groups), one launch per chunk.
    assert [grid[1] for grid in grids] == [1] * launches
    whole = output_and_grads(ta.attention, args, g,
                             config=_small_tiles(ta), **kwargs)
    assert grids[-1][1] == batch
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    want = output_and_grads(_explicit, args, g, **kwargs)
    _assert_close(chunked, want, 1e-5)


@pytest.mark.parametrize("backward", sorted(BACKWARDS))
def test_interpreted_gradients_of_a_sum(ta, backward):
    """The upstream gradient of `out.sum()` is a stride-0 view of one value
    (not a tensor in memory); every backward kernel, `_delta_kernel` first,
    reads it through its strides."""
    args, mask, _ = _inputs(mask="keys")
    config = _small_tiles(ta, **BACKWARDS[backward])
    got_args = [x.detach().requires_grad_() for x in args]
    out = ta.attention(*got_args, mask=mask, scale=0.2, config=config)
    got = torch.autograd.grad(out.sum(), got_args)
    want_args = [x.detach().double().requires_grad_() for x in args]
    want = torch.autograd.grad(
        _explicit(*want_args, mask=mask, scale=0.2).sum(), want_args)
    _assert_close(got, want, 1e-5)


def test_score_gradient_rows_fit_the_budget():
    from collab_keras.ops._attention_utils import SCORE_GRADIENT_BYTES
    from collab_keras.ops._attention_utils import score_gradient_heads
    from collab_keras.ops._attention_utils import score_gradient_rows

    # bf16 dS rows of 12 heads: 8 x 2048^2 fit in 1 GiB, 8192^2 does not.
    assert score_gradient_rows(8, 12, 2048, 2048 * 2) == 8
    assert score_gradient_rows(2, 12, 8192, 8192 * 2) == 0
    assert score_gradient_rows(64, 12, 2048, 2048 * 2) == (
        SCORE_GRADIENT_BYTES // (12 * 2048 * 2048 * 2))
    assert score_gradient_rows(3, 2, 4, 5, budget=2 * 4 * 5 * 2) == 2
    assert score_gradient_rows(3, 2, 4, 5, budget=0) == 0
    # One row over the budget: its heads in chunks, 8 of 12 at 8192^2.
    assert score_gradient_heads(12, 8192, 8192 * 2) == 8
    assert score_gradient_heads(12, 2048, 2048 * 2) == 12
    assert score_gradient_heads(12, 32768, 32768 * 2) == 0
    assert score_gradient_heads(4, 5, 6, budget=3 * 5 * 6) == 3


def test_default_tiles_fit_shared_memory(ta):
    """The tiles measured with values 64 wide, made smaller where they do
    not fit in an H200's shared memory: on the H200 the forward's 128 x 128
    tiles at keys 192 (then a 256 tile; 128 + 64 since) and values 80 (a
    128 tile) asked for 262144 bytes of its 232448."""
    from collab_keras.ops._attention_utils import SHARED_MEMORY_BYTES
    from collab_keras.ops._attention_utils import fit_tiles

    assert SHARED_MEMORY_BYTES == 232448
    measured = ta.default_config(256)
    assert (measured.block_q, measured.block_k) == (128, 128)
    wide_values = ta.default_config(256, value_width=80)
    assert (wide_values.block_q, wide_values.block_k) == (128, 64)
    # Keys 192 as 128 + 64 columns: (128 * 192 + 2 * 128 * 320) * 2 fits.
    narrower = ta.default_config(192, value_width=80)
    assert (narrower.block_q, narrower.block_k) == (128, 128)
    # (128 * 256 + 2 * 128 * 384) * 2 bytes = 262144: halve the streamed
    # key and value tiles.
    assert fit_tiles(128, 128, 2, 256, 384, 2) == (128, 64)
    assert fit_tiles(128, 128, 2, 256, 320, 2) == (128, 128)
    assert fit_tiles(64, 64, 3, 10**6, 10**6, 4) == (16, 16)  # the floor
    # A general mask's uint8 tiles (the layer check's (B, T, S) padding
    # mask was refused on the H200 at 128 x 128): the key tiles halved.
    masked = ta.default_config(256, full_mask=True)
    assert (masked.block_q, masked.block_k) == (128, 64)
    assert fit_tiles(128, 128, 2, 256, 320, 2, mask_itemsize=1) == (128, 64)


class _Counting:
    """A Triton kernel that records the grids it is launched with."""

    def __init__(self, kernel, grids):
        self.kernel, self.grids = kernel, grids

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def test_interpreted_kernel_float16(ta):
    args, mask, g = _inputs(mask="keys", dtype=torch.float16)
    got = output_and_grads(ta.attention, args, g, mask=mask, scale=0.2,
                            config=_small_tiles(ta))
    want = output_and_grads(_explicit, args, g, mask=mask, scale=0.2)
    assert all(x.dtype == torch.float16 for x in got)
    _assert_close(got, want, 3e-3)


def test_interpreted_kernel_empty_rows_and_nan(ta):
    args, mask, g = _inputs(mask="shared")
    out = ta.attention(*args, mask=mask, scale=0.2, config=_small_tiles(ta))
    assert bool((out[:, 2] == 0).all())  # the fully masked row
    grads = output_and_grads(ta.attention, args, g, mask=mask, scale=0.2,
                              config=_small_tiles(ta))[1:]
    assert all(bool(x.isfinite().all()) for x in grads)
    args[0][1, 5, 3] = float("nan")
    out = ta.attention(*args, mask=mask, scale=0.2, config=_small_tiles(ta))
    assert bool(out[1, 5].isnan().all())
    assert bool(out[0].isfinite().all())


@pytest.mark.parametrize("backward", sorted(BACKWARDS))
@pytest.mark.parametrize("mask,causal", [("keys", False), ("heads", False)])
def test_interpreted_gradients_nan_where_the_explicit_path_has_nan(
        ta, backward, mask, causal):
    """A NaN in one query row: every output and gradient is NaN exactly
    where the explicit path's is (keys masked for that row get no NaN
    through the score gradient) and equal elsewhere. (With a causal mask
    the kernels skip the blocks above the diagonal, so the keys after the
    NaN row keep finite value gradients, where the explicit path's
    `exp(-inf - NaN)` makes them NaN.)"""
    args, mask, g = _inputs(mask=mask)
    args[0][1, 5, 3] = float("nan")
    kwargs = dict(mask=mask, scale=0.2, is_causal=causal)
    got = output_and_grads(ta.attention, args, g,
                            config=_small_tiles(ta, **BACKWARDS[backward]),
                            **kwargs)
    want = output_and_grads(_explicit, args, g, **kwargs)
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a.double().nan_to_num(),
                                   b.double().nan_to_num(), rtol=1e-5,
                                   atol=1e-5)


def test_routing_runs_the_kernel_where_it_applies(ta, monkeypatch):
    """`_torch_attention.attention` takes the Triton kernel when `applies`
    says so (CUDA inputs; forced here on CPU, the kernel interpreted)."""
    args, mask, _ = _inputs(mask="keys")
    config = _small_tiles(ta)
    monkeypatch.setattr(ta, "default_config", lambda *a, **k: config)
    monkeypatch.setattr(_torch_attention, "triton_kernel",
                        lambda *a, **k: ta)
    routed = _torch_attention.attention(*args, mask, 0.2, False)
    direct = ta.attention(*args, mask=mask, scale=0.2, config=config)
    assert torch.equal(routed, direct)


def test_no_triton_on_cpu_tensors():
    args, mask, _ = _inputs(mask="keys", dtype=torch.bfloat16)
    assert _torch_attention.triton_kernel(args[0], args[1], args[2], mask) is None
    query = args[0]
    for key_width in (64, 256, 384):
        assert not _torch_attention.fused_preferred(query, key_width, 64, 12,
                                                    True)
    out = _torch_attention.attention(*args, mask, 0.2, False)  # SDPA path
    want = _explicit(*args, mask=mask, scale=0.2)
    assert float((out.double() - want).abs().max()) < 0.05


def test_applies_needs_cuda_half_dtypes_and_widths(ta):
    args, mask, _ = _inputs(mask="keys", dtype=torch.float16)
    q, k, v = args[:3]
    assert not ta.applies(q, k, v, mask)  # CPU tensors
    assert ta._unsupported(q, k, v, mask) is None
    assert ta._unsupported(q[0], k, v, None) == "ranks"
    assert ta._unsupported(q.int(), k, v, None).startswith("dtype")
    assert ta._unsupported(q, k.float(), v, None) == "mixed dtypes"
    wide = torch.zeros(2, 21, 520, dtype=torch.float16)
    assert ta._unsupported(wide, wide, v, None) == "width"
    assert ta._unsupported(q, k, v, mask[:, :, :, :4]) == "mask shape"


def test_attention_rejects_what_it_does_not_take(ta):
    args, mask, _ = _inputs()
    with pytest.raises(ValueError, match=r"Received: query.shape=\(2, 21, 24\)"):
        ta.attention(args[0].int(), *args[1:])
