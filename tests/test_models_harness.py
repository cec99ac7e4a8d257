"""Shared checks for the zoo backbones, and tests of the attention switch
and the blocks."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import pytest
from keras_hub.layers import CachedMultiHeadAttention

from collab_keras.layers import CachedCollaborativeAttention
from collab_keras.layers import CollaborativeAttention
from collab_keras.models import TransformerDecoderBlock
from collab_keras.models import TransformerEncoderBlock
from collab_keras.models import make_attention

ATTENTIONS = [
    pytest.param("concatenate", None, id="concatenate"),
    pytest.param("collaborative", 16, id="collaborative"),
]


def numpy_outputs(outputs):
    """A backbone's outputs (a dict or one tensor) as a dict of arrays."""
    if not isinstance(outputs, dict):
        outputs = {"output": outputs}
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


def check_backbone(backbone, inputs, tmp_path):
    """Forward, a training step, `.keras` round trip (safe mode), preset
    round trip, SavedModel export: the same outputs throughout.

    Args:
        backbone: A zoo backbone (eval outputs must be deterministic).
        inputs: A batch of inputs (dict of arrays or one array).
        tmp_path: pytest temporary folder.
    """
    import tensorflow as tf

    # Forward.
    outputs = numpy_outputs(backbone(inputs))
    for value in outputs.values():
        assert np.all(np.isfinite(value))

    # One training step changes the weights and gives a finite loss.
    before = [w.numpy().copy() for w in backbone.trainable_weights]
    optimizer = keras.optimizers.Adam(1e-3)
    with tf.GradientTape() as tape:
        predictions = backbone_tensors(backbone(inputs, training=True))
        loss = sum(tf.reduce_mean(tf.square(p)) for p in predictions)
    gradients = tape.gradient(loss, backbone.trainable_weights)
    optimizer.apply_gradients(zip(gradients, backbone.trainable_weights))
    assert np.isfinite(float(loss))
    changed = [
        not np.allclose(b, w.numpy())
        for b, w in zip(before, backbone.trainable_weights)
    ]
    assert sum(changed) > len(changed) // 2
    outputs = numpy_outputs(backbone(inputs))

    # `.keras` round trip (safe mode): same class, config and outputs.
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert type(restored) is type(backbone)
    assert restored.get_config() == backbone.get_config()
    assert_same(numpy_outputs(restored(inputs)), outputs)

    # Preset round trip through keras-hub's saver and loader.
    preset = str(tmp_path / "preset")
    backbone.save_to_preset(preset)
    restored = type(backbone).from_preset(preset)
    assert restored.get_config() == backbone.get_config()
    assert_same(numpy_outputs(restored(inputs)), outputs)

    # SavedModel export: the `serve` endpoint gives the same outputs.
    export_dir = str(tmp_path / "saved_model")
    backbone.export(export_dir, format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(export_dir)  # keep: it owns the variables
    served = reloaded.serve(inputs)
    assert_same(numpy_outputs(served), outputs)


def backbone_tensors(outputs):
    """A backbone's outputs as a list of tensors."""
    return list(outputs.values()) if isinstance(outputs, dict) else [outputs]


def assert_same(actual, expected, atol=1e-5):
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, atol=atol, rtol=1e-5)


@pytest.mark.parametrize(
    "attention, cached, expected",
    [
        ("concatenate", False, keras.layers.MultiHeadAttention),
        ("concatenate", True, CachedMultiHeadAttention),
        ("collaborative", False, CollaborativeAttention),
        ("collaborative", True, CachedCollaborativeAttention),
    ],
)
def test_make_attention_switch(attention, cached, expected):
    layer = make_attention(attention, num_heads=4, key_dim=8, cached=cached)
    assert type(layer) is expected


def test_make_attention_factory():
    calls = []

    def factory(**kwargs):
        calls.append(kwargs)
        kwargs.pop("cached")
        return CollaborativeAttention(**kwargs)

    block = TransformerEncoderBlock(4, 32, attention=factory, shared_key_dim=8)
    block(np.zeros((1, 5, 16), "float32"))
    assert calls[0]["shared_key_dim"] == 8
    assert calls[0]["num_heads"] == 4
    assert isinstance(block.self_attention_layer, CollaborativeAttention)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attention": "talking_heads"}, "Received: attention='talking_heads'"),
        (
            {"attention": "concatenate", "shared_key_dim": 6},
            "multiple of `num_heads`. Received: shared_key_dim=6, num_heads=4",
        ),
        (
            {"attention": "collaborative", "shared_key_dim": 0},
            "Received: shared_key_dim=0",
        ),
        ({"activation": "swishy"}, "Received: activation='swishy'"),
        ({"key_dim": 0}, "Received: key_dim=0"),
        ({"dropout": 1.5}, "Received: dropout=1.5"),
    ],
)
@pytest.mark.parametrize(
    "block_class", [TransformerEncoderBlock, TransformerDecoderBlock]
)
def test_block_bad_arguments(block_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        block_class(num_heads=4, intermediate_dim=32, **kwargs)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_block_padding_changes_nothing(
    attention, shared_key_dim, normalize_first
):
    block = TransformerEncoderBlock(
        4,
        64,
        attention=attention,
        shared_key_dim=shared_key_dim,
        normalize_first=normalize_first,
    )
    x = np.random.default_rng(0).normal(size=(2, 9, 32)).astype("float32")
    mask = np.ones((2, 9), "int32")
    mask[:, 6:] = 0
    padded = keras.ops.convert_to_numpy(block(x, padding_mask=mask))
    garbage = x.copy()
    garbage[:, 6:] = 100.0
    changed = keras.ops.convert_to_numpy(block(garbage, padding_mask=mask))
    short = keras.ops.convert_to_numpy(block(x[:, :6]))
    np.testing.assert_allclose(padded[:, :6], changed[:, :6], atol=1e-5)
    np.testing.assert_allclose(padded[:, :6], short, atol=1e-5)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_decoder_block_masks(attention, shared_key_dim):
    block = TransformerDecoderBlock(
        4, 64, attention=attention, shared_key_dim=shared_key_dim
    )
    rng = np.random.default_rng(1)
    target = rng.normal(size=(2, 7, 32)).astype("float32")
    source = rng.normal(size=(2, 9, 32)).astype("float32")
    source_mask = np.ones((2, 9), "int32")
    source_mask[:, 5:] = 0
    full = keras.ops.convert_to_numpy(
        block(target, source, encoder_padding_mask=source_mask)
    )
    # Padded source positions are not attended to.
    changed_source = source.copy()
    changed_source[:, 5:] = -50.0
    out = block(target, changed_source, encoder_padding_mask=source_mask)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), full, atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(block(target, source[:, :5])), full, atol=1e-5
    )
    # Causal: changing a future target position changes no earlier output.
    changed_target = target.copy()
    changed_target[:, 4:] = 7.0
    out = keras.ops.convert_to_numpy(
        block(changed_target, source, encoder_padding_mask=source_mask)
    )
    np.testing.assert_allclose(out[:, :4], full[:, :4], atol=1e-5)
    assert not np.allclose(out[:, 4:], full[:, 4:])


@pytest.mark.parametrize(
    "block_class", [TransformerEncoderBlock, TransformerDecoderBlock]
)
def test_block_config_round_trip(block_class):
    block = block_class(
        num_heads=4,
        intermediate_dim=32,
        attention="collaborative",
        shared_key_dim=8,
        normalize_first=True,
        activation="gelu",
        attention_kwargs={"mixing_initializer": "random_normal"},
    )
    config = block.get_config()
    restored = block_class.from_config(config)
    assert restored.get_config() == config


@pytest.mark.parametrize(
    "block_class", [TransformerEncoderBlock, TransformerDecoderBlock]
)
def test_block_bad_attention_kwargs(block_class):
    with pytest.raises(TypeError, match=r"Received: attention_kwargs=\[1\]"):
        block_class(num_heads=4, intermediate_dim=32, attention_kwargs=[1])


def test_block_accepts_numpy_sizes():
    block = TransformerEncoderBlock(
        np.int64(4),
        np.int32(32),
        attention="collaborative",
        shared_key_dim=np.int64(8),
    )
    assert block(np.zeros((1, 3, 16), "float32")).shape == (1, 3, 16)
    config = block.get_config()
    assert type(config["num_heads"]) is int
    assert type(config["shared_key_dim"]) is int
