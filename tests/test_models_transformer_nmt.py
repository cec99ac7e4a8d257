"""TransformerNMT: builder, cached generation, masks, errors."""

import keras
import numpy as np
import pytest

from collab_keras.models import TransformerNMT
from collab_keras.reparametrization import reparametrize
from tests.test_models_harness import ATTENTIONS
from tests.test_models_harness import check_model
from tests.test_models_harness import numpy_outputs


def _model(attention="concatenate", shared_key_dim=None, **kwargs):
    kwargs.setdefault("dropout", 0.0)
    return TransformerNMT.from_preset(
        "transformer_tiny",
        attention=attention,
        shared_key_dim=shared_key_dim,
        **kwargs,
    )


def _source(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 1000, (2, 9)).astype("int32")
    mask = np.ones((2, 9), "int32")
    mask[1, 6:] = 0
    tokens[1, 6:] = 0
    return tokens, mask


def _inputs(target_length=7, seed=0):
    source, source_mask = _source(seed)
    rng = np.random.default_rng(seed + 1)
    target = rng.integers(3, 1000, (2, target_length)).astype("int32")
    target_mask = np.ones_like(target)
    target_mask[0, target_length - 2 :] = 0
    return {
        "encoder_token_ids": source,
        "encoder_padding_mask": source_mask,
        "decoder_token_ids": target,
        "decoder_padding_mask": target_mask,
    }


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_forward_train_save_export(attention, shared_key_dim, tmp_path):
    model = _model(attention, shared_key_dim, dropout=0.1)
    inputs = _inputs()
    logits = model(inputs)["logits"]
    assert tuple(logits.shape) == (2, 7, 1000)
    assert logits.dtype == "float32"
    targets = np.random.default_rng(5).integers(0, 1000, (2, 7))
    check_model(model, inputs, "logits", targets, tmp_path)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalize_first": True, "tie_output_embeddings": False},
        {"share_embeddings": True, "cross_attention": "concatenate"},
    ],
)
@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_cached_decoding_equals_recomputing_the_prefix(
    attention, shared_key_dim, options
):
    model = _model(attention, shared_key_dim, **options)
    source, source_mask = _source()
    length = 8
    cache = model.build_cache(source, source_mask, max_length=length)
    tokens = np.ones((2, 1), "int32")
    for index in range(length - 1):
        step_logits, cache = model.call_with_cache(
            tokens[:, index : index + 1], cache, index
        )
        full_logits = model(
            {
                "encoder_token_ids": source,
                "encoder_padding_mask": source_mask,
                "decoder_token_ids": tokens,
                "decoder_padding_mask": np.ones_like(tokens),
            }
        )["logits"]
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(step_logits)[:, 0],
            keras.ops.convert_to_numpy(full_logits)[:, -1],
            atol=1e-4,
        )
        next_token = np.argmax(keras.ops.convert_to_numpy(full_logits)[:, -1], -1)
        tokens = np.concatenate([tokens, next_token[:, None].astype("int32")], 1)
    # generate() (keras-hub's greedy sampler over the cache) gives the same.
    generated = model.generate(
        source, source_mask, max_length=length, end_token_id=None
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(generated), tokens)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_beam_search(attention, shared_key_dim):
    model = _model(attention, shared_key_dim)
    source, source_mask = _source()
    greedy = model.generate(source, source_mask, max_length=6, end_token_id=None)
    one_beam = model.generate(
        source, source_mask, max_length=6, sampler="beam", num_beams=1,
        end_token_id=None,
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(one_beam), keras.ops.convert_to_numpy(greedy)
    )
    beams = model.generate(
        source, source_mask, max_length=6, sampler="beam", num_beams=3
    )
    beams = keras.ops.convert_to_numpy(beams)
    assert beams.shape == (2, 6)
    assert np.all(beams[:, 0] == 1)


def test_generation_pads_after_the_end_token():
    model = _model()
    source, source_mask = _source()
    tokens = keras.ops.convert_to_numpy(
        model.generate(source, source_mask, max_length=8, end_token_id=None)
    )
    end_token = int(tokens[0, 1])  # pretend the first generated token ends
    ended = keras.ops.convert_to_numpy(
        model.generate(source, source_mask, max_length=8, end_token_id=end_token)
    )
    expected = tokens.copy()
    for row in expected:
        ends = np.flatnonzero(row[1:] == end_token)
        if ends.size:
            row[ends[0] + 2 :] = 0
    np.testing.assert_array_equal(ended, expected)
    assert np.all(ended[0, 2:] == 0)


def test_cache_bytes_per_token():
    concatenate = _model().cache_bytes_per_token()
    collaborative = _model("collaborative", 16).cache_bytes_per_token()
    # 2 layers, float32: keys and values per head = 2 * 64 numbers per layer.
    assert concatenate == {"self": 2 * 4 * 2 * 64, "cross": 2 * 4 * 2 * 64}
    # shared key 16 + content 4 heads + values 64.
    assert collaborative == {"self": 2 * 4 * (16 + 4 + 64), "cross": 2 * 4 * 84}
    # The caches really hold that much: bytes / (batch * positions).
    source, source_mask = _source()
    for attention, shared_key_dim, expected in (
        ("concatenate", None, concatenate),
        ("collaborative", 16, collaborative),
    ):
        cache = _model(attention, shared_key_dim).build_cache(
            source, source_mask, max_length=5
        )
        for kind, length in (("self", 5), ("cross", 9)):
            leaves = keras.tree.flatten(cache[kind])
            size = sum(keras.ops.convert_to_numpy(x).nbytes for x in leaves)
            assert size == expected[kind] * 2 * length


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_padding_changes_nothing_in_unpadded_outputs(attention, shared_key_dim):
    model = _model(attention, shared_key_dim)
    inputs = _inputs()
    logits = numpy_outputs(model(inputs))["logits"]
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["encoder_token_ids"][1, 6:] = 7  # padded source positions
    changed["decoder_token_ids"][0, 5:] = 9  # padded target positions
    changed_logits = numpy_outputs(model(changed))["logits"]
    np.testing.assert_allclose(changed_logits[1], logits[1], atol=1e-5)
    np.testing.assert_allclose(changed_logits[0, :5], logits[0, :5], atol=1e-5)


def test_collaborative_copy_generates_the_same():
    model = _model()
    collaborative, report = reparametrize(model, 64, verbose=False)
    assert collaborative.attention == "collaborative" and len(report) == 6
    source, source_mask = _source()
    inputs = _inputs()
    np.testing.assert_allclose(
        numpy_outputs(collaborative(inputs))["logits"],
        numpy_outputs(model(inputs))["logits"],
        atol=1e-4,
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(
            collaborative.generate(source, source_mask, max_length=6)
        ),
        keras.ops.convert_to_numpy(model.generate(source, source_mask, max_length=6)),
    )
    # Calibration records the cached decoder attention too; below one
    # dimension per head; an explicit concatenated cross-attention stays.
    model = _model(cross_attention="concatenate")
    compressed, report = reparametrize(
        model, 2, calibration_data=inputs, max_iterations=2, verbose=False
    )
    assert len(report) == 4
    assert all(entry["logit_relative_error"] is not None for entry in report)
    assert compressed(inputs)["logits"].shape == (2, 7, 1000)


def test_bad_inputs_and_arguments():
    model = _model()
    inputs = _inputs()
    bad = dict(inputs, decoder_token_ids=inputs["decoder_token_ids"] * 1.0)
    with pytest.raises(ValueError, match="Received: decoder_token_ids.dtype=float"):
        model(bad)
    long = _inputs(target_length=65)
    with pytest.raises(ValueError, match="max_sequence_length=64.*Received: "):
        model(long)
    with pytest.raises(ValueError, match="Received: max_length=65"):
        model.generate(*_source(), max_length=65)
    with pytest.raises(ValueError, match="Received: sampler='top_k'"):
        model.generate(*_source(), max_length=5, sampler="top_k")
    with pytest.raises(ValueError, match="Received: preset='transformer_huge'"):
        TransformerNMT.from_preset("transformer_huge")
    with pytest.raises(ValueError, match="Received: source_vocabulary_size=5"):
        TransformerNMT.from_preset(
            "transformer_tiny", source_vocabulary_size=5, share_embeddings=True
        )
