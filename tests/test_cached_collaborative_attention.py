"""Tests of CachedCollaborativeAttention."""

import keras
import numpy as np
import pytest
from keras import ops

from collab_keras.layers import CachedCollaborativeAttention


def _layer(use_bias=True, **kwargs):
    layer = CachedCollaborativeAttention(
        num_heads=4,
        key_dim=8,
        shared_key_dim=12,
        use_bias=use_bias,
        mixing_initializer="random_normal",
        bias_initializer="random_normal",
        **kwargs,
    )
    layer.build((2, 6, 32), (2, 6, 32))
    return layer


@pytest.mark.parametrize("use_bias", [True, False])
def test_incremental_decoding_equals_causal_attention(use_bias):
    layer = _layer(use_bias)
    x = np.random.default_rng(0).normal(size=(2, 6, 32)).astype("float32")
    expected = ops.convert_to_numpy(layer(x, x, use_causal_mask=True))
    cache = layer.initial_cache(batch_size=2, max_length=6)
    outputs = []
    for i in range(6):
        mask = ops.arange(6)[None, None, :] <= i  # (1, 1, S)
        step = x[:, i : i + 1]
        output, cache = layer(
            step, step, attention_mask=mask, cache=cache, cache_update_index=i
        )
        outputs.append(ops.convert_to_numpy(output))
    np.testing.assert_allclose(
        np.concatenate(outputs, axis=1), expected, atol=1e-5
    )
    # The cache holds the shared key, the content term and the values.
    assert tuple(cache["key"].shape) == (2, 6, 12)
    assert tuple(cache["value"].shape) == (2, 6, 4, 8)
    assert ("content" in cache) == use_bias
    if use_bias:
        assert tuple(cache["content"].shape) == (2, 6, 4)
    assert layer.cache_size_per_position() == 12 + 4 * 8 + (4 if use_bias else 0)


def test_static_cache_equals_cross_attention():
    layer = _layer()
    rng = np.random.default_rng(1)
    query = rng.normal(size=(2, 3, 32)).astype("float32")
    source = rng.normal(size=(2, 6, 32)).astype("float32")
    mask = np.ones((2, 1, 6), bool)
    mask[1, :, 4:] = False
    expected = ops.convert_to_numpy(layer(query, source, attention_mask=mask))
    cache = layer.compute_cache(source)
    output, same_cache = layer(query, query, attention_mask=mask, cache=cache)
    np.testing.assert_allclose(ops.convert_to_numpy(output), expected, atol=1e-5)
    for name in cache:  # a static cache is returned unchanged
        np.testing.assert_array_equal(
            ops.convert_to_numpy(same_cache[name]), ops.convert_to_numpy(cache[name])
        )


@pytest.mark.parametrize("use_bias", [True, False])
def test_decode_core_equals_explicit_path(use_bias):
    # A step of a few positions takes `_compute_decode_attention`; with the
    # threshold at 0 the same call takes the explicit path.
    layer = _layer(use_bias)
    rng = np.random.default_rng(2)
    query = rng.normal(size=(2, 2, 32)).astype("float32")
    source = rng.normal(size=(2, 6, 32)).astype("float32")
    mask = rng.random((2, 4, 2, 6)) > 0.3  # per head
    mask[1, 2, 0] = False  # a row with no key: 0 on both paths
    cache = layer.compute_cache(source)
    projected = layer._query_dense(query)
    assert layer._use_decode_core(projected, False, None)
    assert not layer._use_decode_core(projected, True, None)
    output, _ = layer(query, query, attention_mask=mask, cache=cache)
    layer._DECODE_MAX_ROWS = 0
    assert not layer._use_decode_core(projected, False, None)
    expected, _ = layer(query, query, attention_mask=mask, cache=cache)
    np.testing.assert_allclose(
        ops.convert_to_numpy(output), ops.convert_to_numpy(expected), atol=1e-5
    )


def test_decode_core_keeps_each_heads_nan_to_itself():
    # A NaN in one head's cached values reaches that head's output only, as
    # on the explicit path.
    layer = _layer()
    rng = np.random.default_rng(3)
    query = rng.normal(size=(1, 1, 32)).astype("float32")
    source = rng.normal(size=(1, 5, 32)).astype("float32")
    cache = layer.compute_cache(source)
    value = ops.convert_to_numpy(cache["value"]).copy()  # (B, S, N, V)
    value[0, 2, 1, 0] = np.nan
    cache["value"] = ops.convert_to_tensor(value)
    projected = layer._query_dense(query)
    assert layer._use_decode_core(projected, False, None)
    per_head = ops.convert_to_numpy(
        layer._compute_decode_attention(
            projected, cache["key"], cache["value"], cache.get("content"), None
        )
    )  # (B, T, N, V)
    assert np.isnan(per_head[0, 0, 1, 0])
    finite = np.ones(per_head.shape, bool)
    finite[0, 0, 1, 0] = False
    assert np.isfinite(per_head[finite]).all()


def test_return_attention_scores_with_cache():
    layer = _layer()
    x = np.ones((2, 1, 32), "float32")
    cache = layer.initial_cache(2, 6)
    output, scores, cache = layer(
        x, x, cache=cache, cache_update_index=0, return_attention_scores=True
    )
    assert tuple(scores.shape) == (2, 4, 1, 6)


def test_bad_calls():
    layer = _layer()
    x = np.ones((2, 1, 32), "float32")
    with pytest.raises(ValueError, match="Received: cache_update_index=0"):
        layer(x, x, cache_update_index=0)
    with pytest.raises(ValueError, match="Received: cache with keys"):
        layer(x, x, cache={"key": x}, cache_update_index=0)
    with pytest.raises(ValueError, match="Received: use_causal_mask=True"):
        layer(x, x, cache=layer.initial_cache(2, 6), use_causal_mask=True)


def test_serialization():
    layer = _layer()
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is CachedCollaborativeAttention
    assert restored.get_config() == layer.get_config()
