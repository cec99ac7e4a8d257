"""CollaborativeAttention against keras 3.15's MultiHeadAttention: exactness
for large content terms under every dtype policy, NaN propagation, empty
inputs, `use_gate`, `sliding_window`, rank-4 masks, causal-only calls, the
`_compute_attention` hook and argument checks. They run under every Keras
backend (tests/test_backends.py reruns this file under JAX and torch).
"""

import os
import re

import keras
import numpy as np
import pytest
from keras import backend
from keras import layers
from keras import ops

from collab_keras import CollaborativeAttention
from collab_keras.layers import CachedCollaborativeAttention
from collab_keras.layers import collaborative_attention as module
from collab_keras.reparametrization import reparametrize
from tests.reference import collaborative_attention_reference
from tests.reference import copy_multi_head_attention


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x), "float64")


def _weights(layer):
    prefix = layer.name + "/"
    return {w.path[len(prefix) :]: _numpy(w) for w in layer.weights}


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.config.set_dtype_policy("float32")


def _pair(query, value, seed=0, **kwargs):
    """A built MultiHeadAttention with random biases and its exact copy."""
    keras.utils.set_random_seed(seed)
    mha = layers.MultiHeadAttention(
        3, 4, bias_initializer="random_normal", **kwargs
    )
    collaborative = CollaborativeAttention(3, 4, **kwargs)
    mha(query, value)
    collaborative(query, value)
    copy_multi_head_attention(mha, collaborative)
    return mha, collaborative


def _with_policy(layer, policy, **overrides):
    """`layer` rebuilt under `policy` with the same weights."""
    config = {**layer.get_config(), "dtype": policy, **overrides}
    twin = layer.__class__.from_config(config)
    twin.build(**layer._build_shapes_dict)
    twin.set_weights(layer.get_weights())
    return twin


# Relative error allowed on top of 3x MultiHeadAttention's own error against
# the float64 formula: the rounding of the policy's compute dtype.
_FLOOR = {"float32": 1e-6, "mixed_float16": 2e-3, "mixed_bfloat16": 2e-2}


@pytest.mark.parametrize(
    "policy,scale",
    [(policy, scale) for policy in sorted(_FLOOR) for scale in (1.0, 1e2, 1e4)]
    # float16 holds at most 65504: at this size MultiHeadAttention's own
    # float16 output overflows.
    + [("float32", 5e4), ("mixed_bfloat16", 5e4)],
)
def test_exact_for_large_content_terms(policy, scale):
    """Content terms up to ~1e4 logits, with dot products of the same size.

    The fused path once moved the content term into the values (`[w v, w]`,
    `w = exp(c - max c)`), which dropped keys whose content term lay more
    than ~80 logits below the largest: relative error up to 0.97 here.
    """
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 6, 12)) * np.sqrt(scale)).astype("float32")
    y = (rng.normal(size=(2, 7, 12)) * np.sqrt(scale)).astype("float32")
    mha, collaborative = _pair(x, y, seed=1)
    bias = _numpy(mha.query_dense.bias) * np.sqrt(scale)
    mha.query_dense.bias.assign(bias.astype("float32"))
    copy_multi_head_attention(mha, collaborative)
    expected, _ = collaborative_attention_reference(
        x, y, _weights(collaborative), 3, 4
    )
    content = np.einsum("bsf,fh->bhs", y, _weights(collaborative)["content_bias"])
    if scale >= 1e4:  # the content term spans thousands of logits
        assert np.ptp(content / 2, axis=-1).max() > 1e3 * scale / 1e4

    def error(output):
        output = _numpy(output)
        return np.linalg.norm(output - expected) / np.linalg.norm(expected)

    keras.config.set_dtype_policy(policy)
    reference = _with_policy(mha, policy)
    bound = 3 * error(reference(x, y, return_attention_scores=True)[0])
    bound += _FLOOR[policy]
    for flash in (True, False):
        layer = _with_policy(collaborative, policy, flash_attention=flash)
        assert error(layer(x, y)) <= bound, (flash, error(layer(x, y)), bound)


@pytest.mark.parametrize("flash", [True, False])
def test_nan_and_inf_propagate_like_multi_head_attention(flash):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 12)).astype("float32")
    mha, collaborative = _pair(x, x)
    layer = _with_policy(collaborative, "float32", flash_attention=flash)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[0, 3, 2] = bad  # one key (and query) position of batch item 0
        expected = _numpy(mha(y, y, return_attention_scores=True)[0])
        output = _numpy(layer(y, y))
        np.testing.assert_array_equal(np.isnan(output), np.isnan(expected))
        assert np.isnan(output[0]).any() and np.isfinite(output[1]).all()
    # A fully masked row is finite: the output bias.
    mask = np.ones((2, 5, 5), bool)
    mask[1, 2] = False
    output = _numpy(layer(x, x, attention_mask=mask))
    assert np.isfinite(output).all()
    np.testing.assert_allclose(
        output[1, 2], _numpy(collaborative.output_dense.bias), atol=1e-6
    )


def _gradients(layer, query, value):
    """The output and the gradients of its sum w.r.t. query and value."""
    name = backend.backend()
    if name == "jax":
        import jax

        def loss(q, v):
            out = layer(q, v)
            return ops.sum(out), out

        (_, out), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
            query, value
        )
        return out, grads
    if name == "torch":
        import torch

        q = torch.tensor(query, requires_grad=True)
        v = torch.tensor(value, requires_grad=True)
        out = layer(q, v)
        grads = torch.autograd.grad(out.sum(), [q, v], allow_unused=True)
        return out.detach(), grads
    import tensorflow as tf

    q, v = tf.constant(query), tf.constant(value)
    with tf.GradientTape() as tape:
        tape.watch([q, v])
        out = layer(q, v)
        total = tf.reduce_sum(out)
    grads = tape.gradient(
        total, [q, v], unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return out, grads


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize(
    "query_shape,value_shape",
    [((0, 5, 12), (0, 4, 12)), ((2, 0, 12), (2, 4, 12)), ((2, 5, 12), (2, 0, 12))],
    ids=["batch", "queries", "keys"],
)
def test_empty_inputs_forward_and_backward(flash, query_shape, value_shape):
    x = np.ones((2, 5, 12), "float32")
    mha, collaborative = _pair(x, x, use_gate=True)
    layer = _with_policy(collaborative, "float32", flash_attention=flash)
    query = np.ones(query_shape, "float32")
    value = np.ones(value_shape, "float32")
    output, (grad_query, grad_value) = _gradients(layer, query, value)
    assert tuple(output.shape) == query_shape
    np.testing.assert_allclose(_numpy(output), _numpy(mha(query, value)), atol=1e-6)
    assert tuple(grad_query.shape) == query_shape
    assert tuple(grad_value.shape) == value_shape
    assert np.isfinite(_numpy(grad_query)).all()


def test_empty_cache_batch():
    layer = CachedCollaborativeAttention(2, 4, use_gate=True, sliding_window=2)
    layer.build((0, 3, 8), (0, 3, 8))
    cache = layer.initial_cache(batch_size=0, max_length=3)
    step = np.zeros((0, 1, 8), "float32")
    output, cache = layer(step, step, cache=cache, cache_update_index=1)
    assert tuple(output.shape) == (0, 1, 8)
    assert tuple(cache["key"].shape) == (0, 3, 8)


def _compare(mha, collaborative, query, value, **kwargs):
    """Both paths against MultiHeadAttention's explicit one (its fused path
    attends uniformly where a row is fully masked)."""
    expected, expected_scores = mha(
        query, value, return_attention_scores=True, **kwargs
    )
    output, scores = collaborative(
        query, value, return_attention_scores=True, **kwargs
    )
    fused = _with_policy(collaborative, "float32", flash_attention=True)
    np.testing.assert_allclose(_numpy(output), _numpy(expected), atol=2e-6)
    np.testing.assert_allclose(_numpy(scores), _numpy(expected_scores), atol=2e-6)
    np.testing.assert_allclose(
        _numpy(fused(query, value, **kwargs)), _numpy(expected), atol=2e-6
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "extra",
    [{"use_gate": True}, {"sliding_window": 2}, {"use_gate": True, "sliding_window": 3}],
    ids=["gate", "window", "gate_window"],
)
def test_gate_and_sliding_window_equal_multi_head_attention(extra, causal):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 12)).astype("float32")
    mha, collaborative = _pair(x, x, **extra)
    names = {w.path.split("/", 1)[1] for w in collaborative.weights}
    assert ("gate/kernel" in names) == bool(extra.get("use_gate"))
    mask = rng.random((2, 7, 7)) > 0.2
    _compare(mha, collaborative, x, x, use_causal_mask=causal)
    _compare(mha, collaborative, x, x, attention_mask=mask, use_causal_mask=causal)


@pytest.mark.parametrize("heads", [1, 3], ids=["broadcast", "per_head"])
def test_rank_four_masks_equal_multi_head_attention(heads):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 12)).astype("float32")
    y = rng.normal(size=(2, 6, 12)).astype("float32")
    mha, collaborative = _pair(x, y)
    mask = rng.random((2, heads, 5, 6)) > 0.3
    mask[0, 0, 1] = False  # a fully masked row in (one) head
    _compare(mha, collaborative, x, y, attention_mask=mask)
    # With a query mask too (MultiHeadAttention broadcasts its (B, T, S)
    # mask against (B, N, T, S) from the right, so it is given one merged).
    query_mask = np.arange(5)[None] < np.array([[5], [3]])
    merged = mask & query_mask[:, None, :, None]
    expected = mha(x, y, attention_mask=merged, return_attention_scores=True)[0]
    for flash in (True, False):
        layer = _with_policy(collaborative, "float32", flash_attention=flash)
        output = layer(x, y, query_mask=query_mask, attention_mask=mask)
        np.testing.assert_allclose(_numpy(output), _numpy(expected), atol=2e-6)


def test_bad_rank_four_mask():
    layer = CollaborativeAttention(3, 4)
    x = np.zeros((2, 5, 12), "float32")
    with pytest.raises(ValueError, match=r"Received: attention_mask.shape=\(2, 2, 5, 5\)"):
        layer(x, x, attention_mask=np.ones((2, 2, 5, 5), bool))


def test_causal_only_call_reaches_the_kernel_as_a_flag(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 12)).astype("float32")
    mha, collaborative = _pair(x, x)
    layer = _with_policy(collaborative, "float32", flash_attention=True)
    seen = []
    dispatch = module.collaborative_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("mask"), kwargs.get("is_causal")))
        return dispatch(*args, **kwargs)

    monkeypatch.setattr(module, "collaborative_dot_product_attention", spy)
    output = layer(x, x, use_causal_mask=True)
    assert seen == [(None, True)]
    expected = mha(x, x, use_causal_mask=True, return_attention_scores=True)[0]
    np.testing.assert_allclose(_numpy(output), _numpy(expected), atol=2e-6)
    # With a key padding mask the flag stays and the mask arrives as it is,
    # (B, 1, S); the outputs are those of the merged mask.
    padding = (np.arange(6)[None] < np.array([[6], [4]]))[:, None, :]
    output = layer(x, x, use_causal_mask=True, attention_mask=padding)
    assert tuple(seen[-1][0].shape) == (2, 1, 6) and seen[-1][1]
    merged = padding & np.tri(6, dtype=bool)[None]
    expected = mha(x, x, attention_mask=merged, return_attention_scores=True)[0]
    np.testing.assert_allclose(_numpy(output), _numpy(expected), atol=2e-6)
    # A sliding window is merged into the mask with the causal part.
    window = _with_policy(collaborative, "float32", flash_attention=True, sliding_window=2)
    window(x, x, use_causal_mask=True)
    assert tuple(seen[-1][0].shape)[-2:] == (6, 6) and not seen[-1][1]


def test_subclass_of_the_multi_head_attention_hook_gets_a_clear_error():
    class Custom(CollaborativeAttention):
        def _compute_attention(self, query, key, value, attention_mask=None,
                               training=None, return_attention_scores=False,
                               use_causal_mask=False):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="_compute_collaborative_attention.*Received: Custom._compute_attention"):
        Custom(2, 4)

    class Hooked(CollaborativeAttention):
        """The layer's own hook: scores doubled."""

        def _compute_collaborative_attention(self, query, key, value, *args, **kwargs):
            return super()._compute_collaborative_attention(
                query * 2, key, value, *args, **kwargs
            )

    x = np.random.default_rng(6).normal(size=(1, 4, 8)).astype("float32")
    plain = CollaborativeAttention(2, 4, use_bias=False, flash_attention=False)
    hooked = Hooked(2, 4, use_bias=False, flash_attention=False)
    plain(x, x)
    hooked(x, x)
    hooked.set_weights(plain.get_weights())
    plain.query_dense.kernel.assign(_numpy(plain.query_dense.kernel) * 2)
    np.testing.assert_allclose(_numpy(hooked(x, x)), _numpy(plain(x, x)), atol=1e-6)


def test_new_arguments_in_config_and_keras_file(tmp_path):
    x = np.random.default_rng(7).normal(size=(2, 5, 12)).astype("float32")
    layer = CollaborativeAttention(
        3, 4, shared_key_dim=np.int64(6), use_gate=True, sliding_window=np.int32(2),
        mixing_initializer="random_normal",
    )
    config = layer.get_config()
    assert config["use_gate"] is True and config["sliding_window"] == 2
    assert type(config["shared_key_dim"]) is int
    inputs = keras.Input((5, 12))
    model = keras.Model(inputs, layer(inputs, inputs, use_causal_mask=True))
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(_numpy(restored(x)), _numpy(model(x)), atol=1e-6)
    assert restored.layers[1].get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"flash_attention": "false"}, ValueError, "flash_attention='false'"),
        # 0 and 1 are False and True, as Keras' layers read them (issue 22).
        ({"flash_attention": 2}, ValueError, "flash_attention=2"),
        ({"use_bias": "no"}, ValueError, "use_bias='no'"),
        ({"use_gate": 2}, ValueError, "use_gate=2"),
        ({"sliding_window": 0}, ValueError, "sliding_window=0"),
        ({"sliding_window": 2.5}, ValueError, "sliding_window=2.5"),
        ({"mixing_initializer": None}, ValueError, "mixing_initializer=None"),
        ({"shared_key_dim": 1}, ValueError, "shared_key_dim=1"),
        ({"num_heads": np.float32(2)}, ValueError, "num_heads=np.float32(2.0)"),
        ({"dropout": True}, ValueError, "dropout=True"),
        ({"seed": "1"}, ValueError, "seed='1'"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, message):
    arguments = {"num_heads": 2, "key_dim": 4, **kwargs}
    with pytest.raises(error, match="Received: .*" + re.escape(message)):
        CollaborativeAttention(**arguments)


def test_numpy_integer_sizes_are_accepted():
    layer = CollaborativeAttention(
        np.int64(2), np.int32(4), shared_key_dim=np.int16(6),
        value_dim=np.uint8(3), sliding_window=np.int64(3),
        output_shape=(np.int64(5),), attention_axes=np.int64(1),
        use_bias=np.bool_(True), flash_attention=np.bool_(False),
    )
    x = np.ones((1, 4, 8), "float32")
    assert tuple(layer(x, x).shape) == (1, 4, 5)
    assert type(layer.get_config()["num_heads"]) is int


@pytest.mark.parametrize(
    "case,error,message",
    [
        ("int_query", TypeError, "query.dtype=int32"),
        ("bool_value", TypeError, "value.dtype=bool"),
        ("batch", ValueError, "query.shape=(2, 4, 8), value.shape=(3, 4, 8)"),
        ("width", ValueError, "query.shape=(2, 4, 6)"),
        ("scores_flag", ValueError, "return_attention_scores='yes'"),
        ("causal_flag", ValueError, "use_causal_mask=2"),
    ],
)
def test_bad_call_arguments(case, error, message):
    layer = CollaborativeAttention(2, 4)
    x = np.ones((2, 4, 8), "float32")
    layer(x, x)  # built for 8 features
    query, value, kwargs = x, x, {}
    if case == "int_query":
        query = np.ones((2, 4, 8), "int32")
    elif case == "bool_value":
        value = np.ones((2, 4, 8), bool)
    elif case == "batch":
        value = np.ones((3, 4, 8), "float32")
    elif case == "width":
        query = np.ones((2, 4, 6), "float32")
    elif case == "scores_flag":
        kwargs["return_attention_scores"] = "yes"
    else:
        kwargs["use_causal_mask"] = 2
    with pytest.raises(error, match="Received: .*" + re.escape(message)):
        layer(query, value, **kwargs)


def test_cached_decoding_with_gate_and_sliding_window():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 6, 12)).astype("float32")
    mha, collaborative = _pair(x, x, use_gate=True, sliding_window=3)
    layer = CachedCollaborativeAttention.from_config(collaborative.get_config())
    layer.build(x.shape, x.shape)
    layer.set_weights(collaborative.get_weights())
    expected = mha(x, x, use_causal_mask=True, return_attention_scores=True)[0]
    cache = layer.initial_cache(batch_size=2, max_length=6)
    outputs = []
    for i in range(6):
        mask = np.arange(6)[None, None, :] <= i
        step = x[:, i : i + 1]
        output, cache = layer(step, step, attention_mask=mask, cache=cache,
                              cache_update_index=np.int64(i))
        outputs.append(_numpy(output))
    np.testing.assert_allclose(np.concatenate(outputs, 1), _numpy(expected), atol=2e-6)


@pytest.mark.parametrize(
    "case,message",
    [
        ("index_float", "cache_update_index=1.0"),
        ("index_range", "cache_update_index=6"),
        ("index_negative", "cache_update_index=-1"),
        ("cache_shape", 'cache["key"].shape=(2, 6, 5)'),
        ("cache_batch", 'cache["key"].shape=(3, 6, 8)'),
        ("int_query", "query.dtype=int32"),
    ],
)
def test_cached_layer_bad_calls(case, message):
    layer = CachedCollaborativeAttention(2, 4, shared_key_dim=8)
    layer.build((2, 6, 8), (2, 6, 8))
    cache = layer.initial_cache(2, 6)
    step = np.ones((2, 1, 8), "float32")
    index = 1
    if case == "index_float":
        index = 1.0
    elif case == "index_range":
        index = 6
    elif case == "index_negative":
        index = -1
    elif case == "cache_shape":
        cache["key"] = np.zeros((2, 6, 5), "float32")
    elif case == "cache_batch":
        cache = layer.initial_cache(3, 6)
    else:
        step = np.ones((2, 1, 8), "int32")
    error = TypeError if case == "int_query" else ValueError
    with pytest.raises(error, match=re.escape(message)):
        layer(step, step, cache=cache, cache_update_index=index)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": -1, "max_length": 4}, "batch_size=-1"),
        ({"batch_size": 2, "max_length": 0}, "max_length=0"),
        ({"batch_size": 2.0, "max_length": 4}, "batch_size=2.0"),
    ],
)
def test_initial_cache_bad_sizes(kwargs, message):
    layer = CachedCollaborativeAttention(2, 4)
    with pytest.raises(ValueError, match=re.escape("Received: " + message)):
        layer.initial_cache(**kwargs)
    cache = layer.initial_cache(np.int64(2), np.int32(3))
    assert tuple(cache["key"].shape) == (2, 3, 8)


@pytest.mark.parametrize(
    "extra", [{"use_gate": True}, {"sliding_window": 2}], ids=["gate", "window"]
)
def test_reparametrize_gate_and_sliding_window_exact(extra):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 5, 12)).astype("float32")
    keras.utils.set_random_seed(0)
    mha = layers.MultiHeadAttention(3, 4, bias_initializer="random_normal", **extra)
    mha(x, x)
    layer, _ = reparametrize(mha, 12)
    assert {k: layer.get_config()[k] for k in extra} == extra
    for kwargs in ({}, {"use_causal_mask": True}):
        expected = mha(x, x, return_attention_scores=True, **kwargs)[0]
        np.testing.assert_allclose(_numpy(layer(x, x, **kwargs)), _numpy(expected), atol=2e-6)


@pytest.mark.parametrize(
    "data",
    ["zeros", "single_position", "nan", "batch_0"],
)
def test_reparametrize_degenerate_calibration_data(data):
    keras.utils.set_random_seed(0)
    mha = layers.MultiHeadAttention(2, 4)
    mha(np.ones((1, 3, 8)), np.ones((1, 3, 8)))
    calibration = {
        "zeros": np.zeros((4, 5, 8)),
        "single_position": np.random.default_rng(0).normal(size=(4, 1, 8)),
        "nan": np.full((4, 5, 8), np.nan),
        "batch_0": np.zeros((0, 5, 8)),
    }[data]
    with pytest.raises(ValueError, match="calibration_data.*Received"):
        reparametrize(mha, 4, calibration_data=calibration)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"shared_key_dim": np.float64(4)}, "shared_key_dim=np.float64(4.0)"),
        ({"max_iterations": 2.5}, "max_iterations=2.5"),
        ({"tolerance": "small"}, "tolerance='small'"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"verbose": "yes"}, "verbose='yes'"),
    ],
)
def test_reparametrize_bad_arguments(kwargs, message):
    mha = layers.MultiHeadAttention(2, 4)
    mha(np.ones((1, 3, 8)), np.ones((1, 3, 8)))
    arguments = {"shared_key_dim": 4, **kwargs}
    with pytest.raises(ValueError, match="Received: .*" + re.escape(message)):
        reparametrize(mha, **arguments)
    layer, _ = reparametrize(mha, np.int64(8), max_iterations=np.int32(3), seed=np.int64(1))
    assert layer.shared_key_dim == 8


@pytest.mark.skipif(
    backend.backend() != "tensorflow", reason="backend-independent snippets"
)
def test_docs_layer_snippets_run():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "layer.md")
    with open(path) as file:
        blocks = re.findall(r"```python\n(.*?)```", file.read(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, path, "exec"), {})
