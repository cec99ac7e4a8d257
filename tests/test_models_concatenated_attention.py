"""Concatenated heads at a reduced key size: `attention="concatenate",
shared_key_dim=D` (the paper's baseline), and `CachedConcatenatedAttention`."""

import argparse
import os

import keras
import numpy as np
import pytest
from keras_hub.layers import CachedMultiHeadAttention

from collab_keras.models import TransformerDecoderBlock
from collab_keras.models import TransformerNMTBackbone
from collab_keras.models import count_parameters
from collab_keras.models import make_attention
from collab_keras.models.cached_concatenated_attention import CachedConcatenatedAttention
from collab_keras.models.concatenated_attention import ConcatenatedAttention
from collab_keras.models.zoo_model import convert_attention
from collab_keras.training import cli
from collab_keras.training import tasks
from collab_keras.training.config import RunConfig


def _random_weights(layer, seed=0):
    """Non-zero biases too, so that every term is exercised."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        weight.assign(rng.normal(0, 0.3, weight.shape).astype("float32"))


def test_make_attention_builds_multi_head_attention_with_reduced_keys():
    layer = make_attention("concatenate", num_heads=4, key_dim=16, shared_key_dim=8)
    assert type(layer) is ConcatenatedAttention
    assert (layer.num_heads, layer.key_dim, layer.value_dim) == (4, 2, 16)
    cached = make_attention("concatenate", num_heads=4, key_dim=16, shared_key_dim=8, cached=True)
    assert type(cached) is CachedConcatenatedAttention
    assert (cached.key_dim, cached.value_dim) == (2, 16)
    # shared_key_dim=None: exactly today's keras-hub layers.
    assert type(make_attention("concatenate", 4, 16)) is keras.layers.MultiHeadAttention
    full = make_attention("concatenate", 4, 16, cached=True)
    assert type(full) is CachedMultiHeadAttention and full.value_dim == 16


@pytest.mark.parametrize("shared_key_dim", [6, 2])
def test_shared_key_dim_must_be_a_multiple_of_num_heads(shared_key_dim):
    message = f"multiple of `num_heads`. Received: shared_key_dim={shared_key_dim}, num_heads=4"
    with pytest.raises(ValueError, match=message):
        make_attention("concatenate", num_heads=4, key_dim=16, shared_key_dim=shared_key_dim)
    with pytest.raises(ValueError, match=message):
        TransformerNMTBackbone.from_architecture(
            "transformer_tiny", vocabulary_size=50, attention="concatenate", shared_key_dim=shared_key_dim
        )


def test_cached_layer_equals_multi_head_attention_on_every_path():
    """Same weights, same outputs: no cache, an updated cache, a static one."""
    x = np.random.default_rng(1).normal(size=(2, 6, 32)).astype("float32")
    memory = np.random.default_rng(2).normal(size=(2, 5, 32)).astype("float32")
    reference = keras.layers.MultiHeadAttention(num_heads=4, key_dim=2, value_dim=8)
    layer = CachedConcatenatedAttention(num_heads=4, key_dim=2, value_dim=8)
    reference.build((2, 6, 32), (2, 6, 32))
    layer.build((2, 6, 32), (2, 6, 32))
    _random_weights(reference)
    layer.set_weights(reference.get_weights())
    assert tuple(layer._query_dense.kernel.shape) == (32, 4, 2)
    assert tuple(layer._value_dense.kernel.shape) == (32, 4, 8)

    causal = np.tril(np.ones((6, 6), bool))[None]  # (1, T, S)
    expected = reference(x, x, attention_mask=causal)
    np.testing.assert_allclose(layer(x, x, attention_mask=causal), expected, atol=1e-5)

    # Self-attention one position at a time through the cache.
    cache = layer.initial_cache(batch_size=2, max_length=6)
    assert tuple(cache["key"].shape) == (2, 6, 4, 2)
    assert tuple(cache["value"].shape) == (2, 6, 4, 8)
    for i in range(6):
        step, cache = layer(
            x[:, i : i + 1], x[:, i : i + 1], attention_mask=causal[:, i : i + 1],
            cache=cache, cache_update_index=i,
        )
        np.testing.assert_allclose(step[:, 0], expected[:, i], atol=1e-5)

    # Cross-attention from a static cache: the value input is ignored.
    expected = reference(x, memory)
    static = layer.compute_cache(memory)
    output, unchanged = layer(x, x, cache=static)
    np.testing.assert_allclose(output, expected, atol=1e-5)
    for name in ("key", "value"):
        np.testing.assert_array_equal(unchanged[name], static[name])
    output, scores, _ = layer(x, x, cache=static, return_attention_scores=True)
    assert tuple(scores.shape) == (2, 4, 6, 5)

    with pytest.raises(ValueError, match="Received: cache_update_index=0"):
        layer(x, x, cache_update_index=0)


def test_backbone_decodes_with_the_cache_as_without_and_saves(tmp_path):
    backbone = TransformerNMTBackbone.from_architecture(
        "transformer_tiny", vocabulary_size=50, max_sequence_length=8,
        attention="concatenate", shared_key_dim=16, dropout=0.0,
    )
    block = backbone.decoder_transformer_layers[0]
    assert isinstance(block, TransformerDecoderBlock)
    for layer in (block.self_attention_layer, block.cross_attention_layer):
        assert type(layer) is CachedConcatenatedAttention
        assert (layer.key_dim, layer.value_dim) == (4, 16)
    encoder_layer = backbone.encoder_transformer_layers[0].self_attention_layer
    assert type(encoder_layer) is ConcatenatedAttention and encoder_layer.key_dim == 4
    assert backbone.count_params() == count_parameters(
        "transformer", "transformer_tiny", vocabulary_size=50, max_sequence_length=8,
        attention="concatenate", shared_key_dim=16,
    )

    rng = np.random.default_rng(0)
    inputs = {
        "encoder_token_ids": rng.integers(1, 50, (2, 5)).astype("int32"),
        "encoder_padding_mask": np.ones((2, 5), "int32"),
        "decoder_token_ids": rng.integers(1, 50, (2, 6)).astype("int32"),
        "decoder_padding_mask": np.ones((2, 6), "int32"),
    }
    full = np.asarray(backbone(inputs)["decoder_sequence_output"])
    encoder_output = backbone.call_encoder(inputs["encoder_token_ids"], inputs["encoder_padding_mask"])
    self_cache, cross_cache = backbone.initialize_decoder_cache(encoder_output, 6)
    for i in range(6):
        step, self_cache = backbone.call_decoder_with_cache(
            inputs["decoder_token_ids"][:, i : i + 1], inputs["encoder_padding_mask"], self_cache, i, cross_cache
        )
        np.testing.assert_allclose(np.asarray(step)[:, 0], full[:, i], atol=2e-5)

    # `.keras` round trip: same class, same outputs.
    path = os.path.join(tmp_path, "backbone.keras")
    backbone.save(path)
    restored = keras.saving.load_model(path)
    layer = restored.decoder_transformer_layers[0].self_attention_layer
    assert type(layer) is CachedConcatenatedAttention
    np.testing.assert_allclose(restored(inputs)["decoder_sequence_output"], full, atol=1e-6)


def test_preset_key_size_changes_only_by_conversion_to_collaborative():
    backbone = TransformerNMTBackbone.from_architecture("transformer_tiny", vocabulary_size=50)
    with pytest.raises(ValueError, match=r"changing the key size of concatenated heads is not "
                                         r"supported .* Received: shared_key_dim=32"):
        convert_attention(backbone, "concatenate", 32, None)
    # A collaborative preset converts to a smaller shared key (or a larger one, exactly).
    collaborative = TransformerNMTBackbone.from_architecture(
        "transformer_tiny", vocabulary_size=50, attention="collaborative", shared_key_dim=32)
    assert convert_attention(collaborative, "collaborative", None, None) is collaborative
    smaller = convert_attention(collaborative, "collaborative", 16, None)
    assert (smaller.attention, smaller.shared_key_dim) == ("collaborative", 16)
    assert [e["shared_key_dim"] for e in smaller.conversion_report] == [16] * 6
    reduced = TransformerNMTBackbone.from_architecture(
        "transformer_tiny", vocabulary_size=50, attention="concatenate", shared_key_dim=32
    )
    assert convert_attention(reduced, "concatenate", None, None) is reduced
    # Concatenated heads at a reduced key size (scores scaled by 1/sqrt(8), where the
    # collaborative twin keeps the model's 1/sqrt(16)) convert exactly at their total width.
    inputs = {
        "encoder_token_ids": np.array([[5, 6, 7, 0]], "int32"),
        "encoder_padding_mask": np.array([[1, 1, 1, 0]], "int32"),
        "decoder_token_ids": np.array([[1, 8, 9]], "int32"),
        "decoder_padding_mask": np.array([[1, 1, 1]], "int32"),
    }
    converted = convert_attention(reduced, "collaborative", None, None)
    assert (converted.attention, converted.shared_key_dim) == ("collaborative", 32)
    assert all(e["relative_error"] == 0.0 for e in converted.conversion_report)
    np.testing.assert_allclose(converted(inputs)["decoder_sequence_output"],
                               reduced(inputs)["decoder_sequence_output"], atol=1e-5)
    assert convert_attention(reduced, "collaborative", 16, None).shared_key_dim == 16


def test_cli_trains_the_reduced_key_baseline(tmp_path):
    parser = argparse.ArgumentParser()
    cli._train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["train", "nmt", "--attention", "concatenate", "--shared-key-dim", "32",
         "--output-dir", str(tmp_path / "run")]
    )
    config = cli.config_from_args(args)
    assert (config.attention, config.shared_key_dim) == ("concatenate", 32)
    model = tasks.build(config, vocabulary=["[PAD]", "[START]", "[END]", "[UNK]", "a", "b"])
    layer = model.backbone.decoder_transformer_layers[0].self_attention_layer
    assert type(layer) is CachedConcatenatedAttention and layer.key_dim == 8


@pytest.mark.parametrize(
    "preset, overrides, num_heads", [(None, {}, 4), ("transformer_tiny", {"num_heads": 8}, 8)]
)
def test_run_config_checks_the_key_size_before_any_data(tmp_path, preset, overrides, num_heads):
    with pytest.raises(ValueError, match=f"Received: shared_key_dim=30, num_heads={num_heads}"):
        RunConfig(task="nmt", output_dir=str(tmp_path), preset=preset, overrides=overrides,
                  attention="concatenate", shared_key_dim=30)
    RunConfig(task="nmt", output_dir=str(tmp_path), attention="collaborative", shared_key_dim=30)


def test_reduced_key_size_runs_without_dropout_on_jax():
    # keras' MultiHeadAttention without dropout tries its fused path, which on
    # JAX needs keys and values of one head size: the reduced-key baseline
    # (keys D / N, values key_dim) failed there ("value shape should be ...").
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from collab_keras.models import BertBackbone\n"
        "b = BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,\n"
        "                 max_sequence_length=8, dropout=0.0, attention='concatenate', shared_key_dim=8)\n"
        "ids = np.ones((2, 6), 'int32')\n"
        "out = b({'token_ids': ids, 'segment_ids': 0 * ids, 'padding_mask': ids})\n"
        "assert np.all(np.isfinite(np.asarray(out['sequence_output'])))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # Full size: keras' own layer (its fused path untouched), reduced: the layer that takes two head sizes.
    assert type(make_attention("concatenate", num_heads=2, key_dim=8, shared_key_dim=None)) is (
        keras.layers.MultiHeadAttention)
    assert isinstance(make_attention("concatenate", num_heads=2, key_dim=8, shared_key_dim=8), ConcatenatedAttention)


def test_concatenated_attention_is_multi_head_attention_with_two_head_sizes():
    rng = np.random.default_rng(0)
    query, value = rng.normal(size=(2, 5, 16)).astype("float32"), rng.normal(size=(2, 7, 16)).astype("float32")
    mask = rng.random((2, 5, 7)) < 0.7
    reference = keras.layers.MultiHeadAttention(2, 4, value_dim=8, dropout=0.5)  # dropout: the explicit path
    layer = ConcatenatedAttention.from_config(dict(reference.get_config(), dropout=0.0))
    reference(query, value)
    layer(query, value)
    layer.set_weights(reference.get_weights())
    np.testing.assert_allclose(
        np.asarray(layer(query, value, attention_mask=mask, use_causal_mask=True)),
        np.asarray(reference(query, value, attention_mask=mask, use_causal_mask=True, training=False)),
        rtol=1e-5, atol=1e-6)
    output, scores = layer(query, value, return_attention_scores=True)
    assert tuple(scores.shape) == (2, 2, 5, 7)
