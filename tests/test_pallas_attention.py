"""The Pallas collaborative attention kernel, in Pallas' interpreter (CPU).

The same kernels as on a GPU run here with `interpret=True` and small tiles,
so that ragged tails, several key and query blocks, grouped heads and every
mask kind are covered; outputs and the gradients of every input are compared
with the explicit computation in float32, for both backwards (the score
gradient written, in chunks of batch rows, and the flash one). The compiled (Triton) kernel is
checked on a GPU by `tests/gpu_pallas_attention.py` (run on the GPU machine;
its output is in benchmarks/results/); here it is lowered for CUDA at every
shared key width from 64 to 512 (where Triton's tile rules are enforced)
and its Triton IR compiled for sm_90, the shared memory of every kernel
counted by the compiler.
"""

import importlib.util

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("jax.experimental.pallas")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from collab_keras.ops import _pallas_attention as pa  # noqa: E402

TILES = pa.Config(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16,
                  block_q_ds=16, block_k_ds=16, block_t_mix=16,
                  block_c_mix=16)
# The two backwards: the score gradient written (the default where it fits)
# and the flash one (`score_gradient_bytes=0`).
FLASH = {"score_gradient_bytes": 0}
BACKWARDS = pytest.mark.parametrize("backward", [{}, FLASH],
                                    ids=["written", "flash"])


def _inputs(batch=2, length=21, keys=35, heads=3, key_width=24, value_width=8,
            content=True, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 6)
    q = jax.random.normal(ks[0], (batch, length, key_width), dtype)
    k = jax.random.normal(ks[1], (batch, keys, key_width), dtype)
    v = jax.random.normal(ks[2], (batch, keys, heads, value_width), dtype)
    m = jax.random.normal(ks[3], (heads, key_width), dtype)
    c = jax.random.normal(ks[4], (batch, keys, heads), dtype) * 3 if content else None
    g = jax.random.normal(ks[5], (batch, length, heads, value_width), jnp.float32)
    return [q, k, v, m, c], g


def _output_and_grads(fn, args, g, **kwargs):
    argnums = tuple(i for i, a in enumerate(args) if a is not None)

    def loss(*a):
        out = fn(*a, **kwargs)
        return jnp.sum(out.astype(jnp.float32) * g), out

    (_, out), grads = jax.value_and_grad(loss, argnums, has_aux=True)(*args)
    return [out] + list(grads)


def _kernel(config=TILES):
    def fn(*args, **kwargs):
        return pa.attention(*args, **kwargs, config=config, interpret=True)

    return fn


def _assert_close(got, want, rtol):
    for a, b in zip(got, want):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = np.max(np.abs(b)) + 1e-30
        assert np.max(np.abs(a - b)) <= rtol * scale, np.max(np.abs(a - b)) / scale


KEY_PADDING = (np.arange(35)[None, :] < np.array([35, 20])[:, None])[:, None, None, :]
GENERAL = np.random.default_rng(0).random((2, 3, 21, 35)) < 0.5
GENERAL[:, :, 4, :] = False  # fully masked rows


@BACKWARDS
@pytest.mark.parametrize(
    "content, mask, causal, groups, tiles",
    [
        # ragged tails, heads looped in one program
        (True, None, False, 1, {}),
        # causal, one head per program; score-gradient tiles of two sizes
        (False, None, True, 3, {"block_q_ds": 16, "block_k_ds": 32}),
        (False, None, True, 0, {"block_q_ds": 32, "block_k_ds": 16}),
        # (B, 1, 1, S): read as key flags
        (True, KEY_PADDING, False, 1, {}),
        # per-head boolean mask + causal, auto groups
        (True, GENERAL, True, 0, {}),
        # (B, 1, T, S) mask
        (True, GENERAL[:, :1], False, 3, {}),
    ],
)
def test_matches_explicit_float32(backward, content, mask, causal, groups,
                                  tiles):
    args, g = _inputs(content=content)
    mask = None if mask is None else jnp.asarray(mask)
    kwargs = dict(mask=mask, scale=0.3, is_causal=causal)
    config = TILES._replace(head_groups=groups, **tiles, **backward)
    got = _output_and_grads(_kernel(config), args, g, **kwargs)
    want = _output_and_grads(pa.reference, args, g, **kwargs)
    _assert_close(got, want, 1e-5)


@BACKWARDS
def test_matches_explicit_bfloat16(backward):
    args, g = _inputs(dtype=jnp.bfloat16, length=20, keys=33)
    got = _output_and_grads(_kernel(TILES._replace(**backward)), args, g,
                            scale=0.2, is_causal=True)
    f32 = [None if a is None else a.astype(jnp.float32) for a in args]
    want = _output_and_grads(pa.reference, f32, g, scale=0.2, is_causal=True)
    assert got[0].dtype == jnp.bfloat16
    _assert_close(got, want, 3e-2)


def test_fully_masked_rows_are_zero_and_nan_propagates():
    args, _ = _inputs(content=False, length=20, keys=20)
    mask = np.ones((2, 1, 20, 20), bool)
    mask[0, 0, 3] = False
    out = _kernel()(*args, mask=jnp.asarray(mask), scale=0.3)
    assert np.all(np.asarray(out[0, 3]) == 0)
    assert np.all(np.isfinite(np.asarray(out)))
    q = args[0].at[1, 7, 2].set(jnp.nan)
    out = np.asarray(_kernel()(q, *args[1:], mask=jnp.asarray(mask), scale=0.3))
    assert np.all(np.isnan(out[1, 7]))
    assert np.all(np.isfinite(np.delete(out[1], 7, axis=0)))
    assert np.all(out[0, 3] == 0) and np.all(np.isfinite(out[0]))


@BACKWARDS
def test_nan_in_gradients_as_explicit(backward):
    """A NaN in one query row reaches the same gradient entries as on the
    explicit path: not the keys masked for that row; the other batch row
    stays finite."""
    args, g = _inputs(length=20, keys=20)
    args[0] = args[0].at[1, 7, 2].set(jnp.nan)
    mask = jnp.asarray(GENERAL[:, :, :20, :20])
    got = _output_and_grads(_kernel(TILES._replace(**backward)), args, g,
                            mask=mask, scale=0.3)
    want = _output_and_grads(pa.reference, args, g, mask=mask, scale=0.3)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.all(np.isfinite(np.asarray(got[1])[0]))  # dq of batch row 0


def _pallas_kernels(args, g, config, **kwargs):
    """Names of the Pallas kernels that the gradient runs."""
    text = str(jax.make_jaxpr(
        lambda *a: _output_and_grads(_kernel(config), a, g, **kwargs))(*args))
    return {name for name in ("score_gradient", "backward_keys",
                              "backward_queries") if name in text}


@pytest.mark.parametrize(
    "batch, rows_budget, rows",
    [(4, 2, 2), (3, 2, 1), (2, 0.5, 0)],
)
def test_written_in_chunks_of_batch_rows(batch, rows_budget, rows):
    """A budget of `rows_budget` rows of score gradient: chunks of `rows`
    rows (a divisor of the batch), run one after the other; less than one
    row: the flash backward."""
    args, g = _inputs(batch=batch, length=20, keys=30)
    # Lengths padded to the 16-wide tiles, key width 24 to 32; per row the
    # score gradient, the mixed query and its gradient (float32).
    heads, t_pad, s_pad, k_pad = 3, 32, 32, 32
    per_row = heads * t_pad * (s_pad * 4 + k_pad * 8)
    config = TILES._replace(score_gradient_bytes=int(rows_budget * per_row))
    assert pa.written_rows(batch, heads, t_pad, s_pad, k_pad, jnp.float32,
                           config) == rows
    mask = jnp.asarray(np.arange(30)[None, :] < np.arange(batch)[:, None] * 7 + 9)
    kwargs = dict(mask=mask[:, None, None, :], scale=0.3, is_causal=True)
    kernels = _pallas_kernels(args, g, config, **kwargs)
    if rows:
        assert kernels == {"score_gradient"}
    else:
        assert kernels == {"backward_keys", "backward_queries"}
    got = _output_and_grads(_kernel(config), args, g, **kwargs)
    want = _output_and_grads(pa.reference, args, g, **kwargs)
    _assert_close(got, want, 1e-5)


def test_value_width_differs_from_key_width():
    args, g = _inputs(key_width=40, value_width=5, heads=2, length=17, keys=18)
    got = _output_and_grads(_kernel(), args, g, scale=0.25)
    assert got[0].shape == (2, 17, 2, 5)
    _assert_close(got, _output_and_grads(pa.reference, args, g, scale=0.25), 1e-5)


@pytest.mark.parametrize(
    "key_width,tiles",
    [(24, (32,)), (64, (64,)), (100, (128,)), (128, (128,)),
     (136, (128, 16)), (192, (128, 64)), (200, (256,)), (256, (256,)),
     (320, (256, 64)), (384, (256, 128)), (448, (256, 256)),
     (512, (256, 256))],
)
def test_key_tiles(key_width, tiles):
    # Shared by both GPU kernels (torch's tiles A and B).
    assert pa.key_tiles(key_width) == tiles


@BACKWARDS
@pytest.mark.parametrize("key_width", [136, 160])  # 128 + 16, 128 + 32
def test_key_width_in_two_tiles(backward, key_width):
    # Widths whose next power of two would waste columns are cut into two
    # tiles whose score products add up (`_attention_utils.key_tiles`).
    assert len(pa.key_tiles(key_width)) == 2
    args, g = _inputs(key_width=key_width, heads=2, length=17, keys=19)
    kwargs = dict(mask=jnp.asarray(KEY_PADDING[:, :, :, :19]), scale=0.1,
                  is_causal=True)
    got = _output_and_grads(_kernel(TILES._replace(**backward)), args, g,
                            **kwargs)
    _assert_close(got, _output_and_grads(pa.reference, args, g, **kwargs),
                  1e-5)


KEY_WIDTHS = (64, 128, 192, 256, 320, 384, 448, 512)


def _compiled_rows(tmp_path, *args):
    """The Pallas kernels lowered for CUDA (where Triton's tile rules are
    enforced) and compiled for sm_90 by `benchmarks/kernel_resources.py`
    (`--check`: each within a block's shared memory, by the compiler's
    count): its rows."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("the Triton package compiles the kernels")
    from tests import _kernel_resources

    result, rows = _kernel_resources.run(tmp_path, "--kernels", "pallas", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return rows


def test_compiles_for_gpus_at_every_key_width(tmp_path):
    rows = _compiled_rows(tmp_path)
    forward = ["collaborative_attention_forward"]
    expected = {
        "written": forward + ["collaborative_attention_score_gradient",
                              "collaborative_attention_mixing_gradient"],
        "flash": forward + ["collaborative_attention_backward_keys",
                            "collaborative_attention_backward_queries"],
    }
    for width in KEY_WIDTHS:
        for backward, names in expected.items():
            got = [row["kernel"] for row in rows if row["key_width"] == width
                   and row["backward"] == backward]
            want = [name.replace("collaborative_attention_", "")
                    for name in names]
            assert sorted(got) == sorted(want), (width, backward, got)


@pytest.mark.parametrize("mask", ["none", "full"])
def test_compiles_for_gpus_with_every_mask_kind(tmp_path, mask):
    rows = _compiled_rows(tmp_path, "--key-widths", "384", "--mask", mask)
    assert {row["backward"] for row in rows} == {"written", "flash"}
    assert all(row["mask"] == mask and row["shared_bytes"] > 0 for row in rows)


def test_rejects_what_it_cannot_run():
    args, _ = _inputs(key_width=600)
    with pytest.raises(ValueError, match="Received: query.shape"):
        pa.attention(*args)
    args, _ = _inputs()
    with pytest.raises(ValueError, match="mask.shape"):
        pa.attention(*args, mask=jnp.ones((2, 2, 21, 35), bool))


def test_not_taken_on_cpu():
    args, _ = _inputs(dtype=jnp.bfloat16)
    q, k, v, _, c = args
    assert not pa.applies(q, k, v)
    assert not pa.chosen(q, k, v, c)


@pytest.mark.parametrize("key_width", [64, 128, 192, 256, 384, 512])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_default_tiles(key_width, dtype):
    config = pa.default_config(key_width, 64, dtype)
    for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd",
                 "block_q_ds", "block_k_ds"):
        size = getattr(config, name)
        assert size >= 16 and size & (size - 1) == 0
    groups = pa.head_groups(12, 2, 128, config.block_k_bwd)
    assert 12 % groups == 0
    assert pa.head_groups(12, 64, 2048, 64) == 1


# The automatic choice on JAX GPUs, with the device faked: which core runs
# for a query length, shared key width and dtype (12 heads, values 64, the
# content term on unless said), as measured on an H200 (docs/performance.md).
@pytest.mark.parametrize(
    "length,key_width,dtype,content,expected",
    [
        (128, 128, jnp.bfloat16, True, "pallas"),
        (128, 64, jnp.float16, True, "pallas"),
        (256, 128, jnp.bfloat16, True, "pallas"),
        (512, 128, jnp.bfloat16, True, "cudnn"),
        (2048, 128, jnp.bfloat16, True, "cudnn"),
        (128, 192, jnp.bfloat16, True, "pallas"),
        (512, 192, jnp.bfloat16, True, "pallas"),  # cuDNN takes it, slower
        (8192, 192, jnp.bfloat16, True, "cudnn"),
        (512, 256, jnp.bfloat16, True, "pallas"),  # 257 columns: no cuDNN
        (2048, 256, jnp.bfloat16, True, "pallas"),
        (512, 256, jnp.bfloat16, False, "pallas"),
        (8192, 256, jnp.bfloat16, True, "explicit"),
        (8192, 256, jnp.bfloat16, False, "cudnn"),
        (512, 320, jnp.bfloat16, True, "pallas"),  # 384's entry
        (2048, 384, jnp.bfloat16, True, "pallas"),
        (4096, 384, jnp.bfloat16, True, "explicit"),
        (512, 448, jnp.bfloat16, True, "explicit"),  # not measured
        (128, 128, jnp.float32, True, "explicit"),
        (8, 128, jnp.bfloat16, True, "explicit"),  # a decoding step
    ],
)
def test_automatic_choice_on_gpu(monkeypatch, length, key_width, dtype,
                                 content, expected):
    import importlib

    import keras

    from collab_keras.ops import _jax_attention

    dispatch = importlib.import_module(
        "collab_keras.ops.collaborative_dot_product_attention"
    )

    monkeypatch.setattr(_jax_attention, "on_gpu", lambda: True)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    q = jnp.zeros((2, length, key_width), dtype)
    k = jnp.zeros((2, length, key_width), dtype)
    v = jnp.zeros((2, length, 12, 64), dtype)
    c = jnp.zeros((2, length, 12), dtype) if content else None
    fused = dispatch.fused_attention_preferred(q, key_width, 64, 12, content)
    if not fused:
        got = "explicit"
    elif pa.chosen(q, k, v, c):
        got = "pallas"
    else:
        assert _jax_attention.cudnn_applies(key_width, 64, dtype, content)
        got = "cudnn"
    assert got == expected


def test_preferred_lengths_by_key_width(monkeypatch):
    from collab_keras.ops import _jax_attention

    monkeypatch.setattr(_jax_attention, "on_gpu", lambda: True)
    monkeypatch.setattr(pa, "PREFERRED_LENGTHS", {128: 512, 256: 4096})
    bf = jnp.bfloat16
    assert pa.preferred(511, 128, bf) and not pa.preferred(512, 128, bf)
    assert pa.preferred(2048, 192, bf) and pa.preferred(2048, 256, bf)
    assert not pa.preferred(4096, 256, bf)
    assert not pa.preferred(128, 384, bf)  # wider than every entry
    assert not pa.preferred(128, 128, jnp.float32)
    assert not pa.preferred(None, 128, bf)


def test_forced_fused_path_takes_pallas_where_cudnn_cannot(monkeypatch):
    from collab_keras.ops import _jax_attention

    monkeypatch.setattr(_jax_attention, "on_gpu", lambda: True)
    args, _ = _inputs(length=512, keys=512, key_width=256, value_width=64,
                      heads=12, dtype=jnp.bfloat16)
    q, k, v, _, c = args
    assert pa.chosen(q, k, v, c) and pa.chosen(q, k, v, None)  # the table
    # Where the table does not take the kernel (as at length 8192), a fused
    # call still runs it where cuDNN cannot.
    monkeypatch.setattr(pa, "PREFERRED_LENGTHS", {})
    assert pa.chosen(q, k, v, c)  # Dk 256 + content: 257 columns
    assert not pa.chosen(q, k, v, None)  # 256 columns: cuDNN
    wide = jnp.zeros((2, 512, 384), jnp.bfloat16)
    assert not pa.chosen(wide, wide, v, c)  # Dk 384: explicit
