"""The Pallas decoding kernel, in Pallas' interpreter (CPU).

The kernel that runs on GPUs runs here with `interpret=True`: small key
blocks and several splits of the keys, odd cache lengths and widths (masked
loads), every mask kind the layer passes, rows with no key, NaN; outputs
are compared with the explicit computation in float32. The layer's routing
to the kernel is checked with the GPU faked (in a JAX subprocess). The
compiled kernel is checked on a GPU by `tests/gpu_pallas_decode.py`.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("jax.experimental.pallas")

import jax.numpy as jnp  # noqa: E402

from collab_keras.ops import _pallas_decode as pd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(batch=2, rows=1, keys=37, heads=3, width=24, value_width=8,
            content=True, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (batch, rows, width), dtype)
    k = jax.random.normal(ks[1], (batch, keys, width), dtype)
    v = jax.random.normal(ks[2], (batch, keys, heads, value_width), dtype)
    m = jax.random.normal(ks[3], (heads, width), dtype)
    c = jax.random.normal(ks[4], (batch, keys, heads), dtype) * 3 if content else None
    return q, k, v, m, c


def _mask(kind, batch, rows, keys, heads, seed=1):
    """The masks the layer passes: None, the decoding prefix `(1, 1, S)`,
    `(B, T, S)` and per head `(B, N, T, S)` with a row with no key."""
    rng = np.random.default_rng(seed)
    if kind is None:
        return None
    if kind == "prefix":
        return jnp.asarray(np.arange(keys)[None, None, :] <= keys // 2)
    shape = (batch, rows, keys) if kind == "rows" else (batch, heads, rows, keys)
    mask = rng.random(shape) < 0.6
    mask[1, ..., 0, :] = False  # rows with no key
    return jnp.asarray(mask)


def _run(*args, config, **kwargs):
    return pd.attention(*args, config=config, interpret=True, **kwargs)


@pytest.mark.parametrize(
    "rows, heads, keys, width, value_width, content, mask, config",
    [
        (1, 3, 37, 24, 8, True, "prefix", pd.Config(block_k=16, splits=1)),
        (1, 12, 37, 24, 8, True, "rows", pd.Config(block_k=16, splits=3)),
        (2, 3, 64, 16, 16, False, "heads", pd.Config(block_k=16, splits=2)),
        (3, 5, 50, 40, 5, True, "heads", pd.Config(block_k=16)),  # auto splits
        (1, 4, 19, 32, 16, True, None, pd.Config(block_k=16, splits=4)),
        (4, 16, 33, 16, 8, True, "rows", pd.Config(block_k=32, splits=2)),
    ],
)
def test_matches_explicit_float32(rows, heads, keys, width, value_width,
                                  content, mask, config):
    args = _inputs(rows=rows, heads=heads, keys=keys, width=width,
                   value_width=value_width, content=content)
    mask = _mask(mask, 2, rows, keys, heads)
    got = _run(*args, mask=mask, scale=0.3, config=config)
    want = pd.reference(*args, mask=mask, scale=0.3)
    assert got.shape == (2, rows, heads, value_width)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6,
                               rtol=1e-5)
    if mask is not None and mask.ndim > 3:
        assert np.all(np.asarray(got)[1, 0] == 0)  # no key: 0


def test_matches_explicit_bfloat16():
    args = _inputs(rows=1, heads=12, keys=45, width=32, value_width=16,
                   dtype=jnp.bfloat16)
    mask = _mask("prefix", 2, 1, 45, 12)
    got = _run(*args, mask=mask, scale=0.2, config=pd.Config(block_k=16))
    f32 = [None if a is None else a.astype(jnp.float32) for a in args]
    want = np.asarray(pd.reference(*f32, mask=mask, scale=0.2))
    assert got.dtype == jnp.bfloat16
    error = np.max(np.abs(np.asarray(got, np.float32) - want))
    assert error <= 2e-2 * np.max(np.abs(want)), error


def test_nan_propagates_as_on_the_explicit_path():
    q, k, v, m, c = _inputs(rows=2, heads=3, keys=40)
    mask = np.ones((2, 2, 40), bool)
    mask[:, :, 30:] = False
    mask = jnp.asarray(mask)
    config = pd.Config(block_k=16, splits=3)
    q = q.at[0, 1, 5].set(jnp.nan)  # every head of that row
    k = k.at[1, 35].set(jnp.nan)  # a masked key: no effect
    v = v.at[1, 3, 2, 0].set(jnp.nan)  # one head's value: that head only
    got = np.asarray(_run(q, k, v, m, c, mask=mask, scale=0.3, config=config))
    want = np.asarray(pd.reference(q, k, v, m, c, mask=mask, scale=0.3))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0, 1]).all() and np.isfinite(got[0, 0]).all()
    assert np.isnan(got[1, :, 2, 0]).all()
    assert np.isfinite(np.delete(got[1], 2, axis=1)).all()
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], atol=2e-6, rtol=1e-5)


def test_rows_with_no_key_give_zero():
    args = _inputs(rows=1, heads=3, keys=40)
    mask = jnp.zeros((2, 1, 40), bool).at[0, 0, :7].set(True)
    got = np.asarray(_run(*args, mask=mask, scale=0.3,
                          config=pd.Config(block_k=16, splits=3)))
    assert np.all(got[1] == 0) and np.isfinite(got).all()
    np.testing.assert_allclose(
        got, np.asarray(pd.reference(*args, mask=mask, scale=0.3)), atol=2e-6
    )


def test_splits_fill_the_card_in_one_wave():
    tiles = 2 * pd._tile_bytes(32, 256, 12, 64)  # 133 kB: one per SM
    assert pd.splits_for(32, 2048, 32, tiles) == 4  # 128 of 132 SMs
    assert pd.splits_for(32, 2048, 16, tiles // 2) == 12  # 2 per SM
    assert pd.splits_for(1, 100, 64, tiles) == 2  # one per key block
    assert pd.splits_for(512, 2048, 32, tiles) == 1


def test_default_tiles_fit_shared_memory():
    # The benchmark's layer (Dk 256, 12 heads of 64): 32 keys, two stages.
    assert pd.default_config(256, 12, 64) == pd.Config(block_k=32, stages=2)
    assert pd.default_config(64, 4, 64) == pd.Config(block_k=64, stages=2)
    assert pd.default_config(512, 16, 128) == pd.Config(block_k=16, stages=1)
    for width, heads, value_width in [(256, 12, 64), (512, 16, 128), (64, 1, 16)]:
        config = pd.default_config(width, heads, value_width)
        tiles = pd._tile_bytes(config.block_k, width, heads, value_width)
        assert config.stages * tiles <= pd.SHARED_MEMORY_BUDGET
    assert pd.default_config(512, 64, 256) is None  # 64 heads of 256


def test_rejects_what_it_cannot_run():
    q, k, v, m, c = _inputs(rows=6, heads=12)  # 72 query rows
    with pytest.raises(ValueError, match="rows.*Received: query.shape"):
        pd.attention(q, k, v, m, c)
    q, k, v, m, c = _inputs()
    with pytest.raises(ValueError, match="mask.shape=\\(2, 2, 1, 37\\)"):
        pd.attention(q, k, v, m, c, mask=jnp.ones((2, 2, 1, 37), bool))
    with pytest.raises(ValueError, match="mixed dtypes"):
        pd.attention(q, k, v.astype(jnp.bfloat16), m, c)
    with pytest.raises(ValueError, match="Received: config.block_k=24"):
        pd.attention(q, k, v, m, c, config=pd.Config(block_k=24))
    q, k, v, m, c = _inputs(heads=64, value_width=256)
    with pytest.raises(ValueError, match="shared memory.*Received"):
        pd.attention(q, k, v, m, c)


def test_chosen_on_gpu_for_half_precision_decoding(monkeypatch):
    from collab_keras.ops import _jax_attention

    q, k, v, _, c = _inputs(rows=1, heads=12, dtype=jnp.bfloat16)
    assert not pd.chosen(q, k, v, c)  # a CPU
    monkeypatch.setattr(_jax_attention, "on_gpu", lambda: True)
    assert pd.chosen(q, k, v, c)
    assert pd.chosen(q.astype(jnp.float16), k.astype(jnp.float16),
                     v.astype(jnp.float16), c.astype(jnp.float16))
    f32 = [x.astype(jnp.float32) for x in (q, k, v, c)]
    assert pd.applies(*f32) and not pd.chosen(*f32)
    assert not pd.chosen(q, k, v, c.astype(jnp.float32))  # mixed dtypes
    wide = _inputs(rows=6, heads=12, dtype=jnp.bfloat16)  # 72 rows
    assert not pd.chosen(*wide[:3], wide[4])


LAYER_CHECK = textwrap.dedent(
    r"""
    import functools
    import numpy as np
    import keras
    from keras import ops
    from collab_keras.layers import CachedCollaborativeAttention
    from collab_keras.ops import _jax_attention
    from collab_keras.ops import _pallas_decode

    calls = []
    run = _pallas_decode.attention

    def interpreted(*args, **kwargs):
        calls.append(args[0].shape)
        config = _pallas_decode.Config(block_k=16)
        return run(*args, config=config, interpret=True, **kwargs)

    _pallas_decode.attention = interpreted
    _jax_attention.on_gpu = lambda: True  # the GPU, faked
    keras.config.set_dtype_policy("bfloat16")
    layer = CachedCollaborativeAttention(
        num_heads=4, key_dim=8, shared_key_dim=12,
        mixing_initializer="random_normal", bias_initializer="random_normal")
    rng = np.random.default_rng(0)
    source = ops.cast(rng.normal(size=(2, 21, 32)), "bfloat16")
    layer(source[:, :1], source)  # build
    cache = layer.compute_cache(source)
    step = source[:, 20:21]
    mask = np.arange(21)[None, None, :] <= np.array([[[20]], [[9]]])  # (B, 1, S)
    got, new_cache = layer(step, step, attention_mask=mask, cache=cache,
                           cache_update_index=20)
    assert calls == [(2, 1, 12)], calls
    layer._DECODE_KERNEL = False  # the XLA decoding core
    want, _ = layer(step, step, attention_mask=mask, cache=cache,
                    cache_update_index=20)
    assert len(calls) == 1, calls
    got = ops.convert_to_numpy(ops.cast(got, "float32"))
    want = ops.convert_to_numpy(ops.cast(want, "float32"))
    error = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert error < 2e-2, error
    keras.config.set_dtype_policy("float32")  # float32: the explicit core
    layer32 = CachedCollaborativeAttention(num_heads=4, key_dim=8,
                                           shared_key_dim=12)
    x = ops.cast(source, "float32")
    layer32(x[:, :1], x)
    layer32(x[:, :1], x[:, :1], cache=layer32.compute_cache(x),
            cache_update_index=3)
    assert len(calls) == 1, calls
    print(f"OK layer routing, bfloat16 relative error {error:.1e}")
    """
)


def test_layer_takes_the_kernel_on_a_jax_gpu():
    """With the GPU faked, a bfloat16 decoding step of the layer runs the
    kernel (interpreted) and equals the explicit core; float32 does not."""
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    proc = subprocess.run(
        [sys.executable, "-c", LAYER_CHECK], capture_output=True, text=True,
        env=env, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK layer routing" in proc.stdout


@pytest.mark.parametrize(
    "rows, heads, keys, width, value_width, mask_shape",
    [
        (1, 12, 2048, 256, 64, (1, 1, 2048)),  # the benchmark's step
        (2, 12, 2047, 192, 48, (3, 12, 2, 2047)),  # odd sizes, per head
        (4, 16, 100, 512, 256, (3, 4, 100)),  # the widest
    ],
)
def test_lowers_to_triton(rows, heads, keys, width, value_width, mask_shape):
    """The compiled kernel's Pallas -> Triton lowering (the power-of-two
    tiles, the masked loads) for CUDA, traced on this CPU."""
    bf16 = jnp.bfloat16
    args = [jnp.zeros((3, rows, width), bf16), jnp.zeros((3, keys, width), bf16),
            jnp.zeros((3, keys, heads, value_width), bf16),
            jnp.zeros((heads, width), bf16), jnp.zeros((3, keys, heads), bf16),
            jnp.ones(mask_shape, bool)]
    lowered = jax.jit(lambda *a: pd.attention(*a, scale=0.125)).trace(
        *args).lower(lowering_platforms=("cuda",))
    assert "__gpu$xla.gpu.triton" in lowered.as_text()
