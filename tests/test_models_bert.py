"""BERT: backbone, tokenizer, preprocessors, tasks, presets, conversion."""

import numpy as np
import pytest

import keras
import keras_hub

from collab_keras.models import BertBackbone
from collab_keras.models import BertMaskedLM
from collab_keras.models import BertMaskedLMPreprocessor
from collab_keras.models import BertTextClassifier
from collab_keras.models import BertTextClassifierPreprocessor
from collab_keras.models import BertTokenizer
from collab_keras.models import from_keras_hub
from collab_keras.reparametrization import reparametrize
from tests.test_models_harness import ATTENTIONS
from tests.test_models_harness import assert_same
from tests.test_models_harness import check_backbone
from tests.test_models_harness import numpy_outputs

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a the movie film great bad good awful plot was is".split()
)
SENTENCES = ["a great movie", "the plot was awful", "a good film", "bad"]
LABELS = np.array([1, 0, 1, 0])
TINY = dict(
    vocabulary_size=len(VOCABULARY),
    num_layers=1,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=8,
    dropout=0.0,
)


def _inputs(batch=2, length=6, vocabulary_size=len(VOCABULARY), seed=0):
    rng = np.random.default_rng(seed)
    padding_mask = np.ones((batch, length), "int32")
    padding_mask[batch - 1 :, length // 2 :] = 0  # pad the last sequence
    return {
        "token_ids": rng.integers(0, vocabulary_size, (batch, length)).astype(
            "int32"
        ),
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": padding_mask,
    }


def _classifier(attention="concatenate", shared_key_dim=None):
    backbone = BertBackbone(
        **TINY, attention=attention, shared_key_dim=shared_key_dim
    )
    preprocessor = BertTextClassifierPreprocessor(
        BertTokenizer(vocabulary=VOCABULARY), sequence_length=8
    )
    return BertTextClassifier(backbone, 2, preprocessor)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_backbone_forward_train_save_export(attention, shared_key_dim, tmp_path):
    backbone = BertBackbone(
        **{**TINY, "hidden_dim": 32},
        attention=attention,
        shared_key_dim=shared_key_dim,
    )
    outputs = backbone(_inputs())
    assert tuple(outputs["sequence_output"].shape) == (2, 6, 32)
    assert tuple(outputs["pooled_output"].shape) == (2, 32)
    check_backbone(backbone, _inputs(), tmp_path)


def test_architectures_and_switch_in_config():
    assert sorted(BertBackbone.architectures) == [
        "bert_base_cased",
        "bert_base_uncased",
        "bert_mini",
        "bert_small",
        "bert_tiny",
    ]
    backbone = BertBackbone.from_architecture(
        "bert_tiny", attention="collaborative", shared_key_dim=np.int64(32)
    )
    config = backbone.get_config()
    assert config["num_layers"] == 2 and config["hidden_dim"] == 128
    assert config["attention"] == "collaborative"
    assert type(config["shared_key_dim"]) is int
    assert isinstance(backbone, keras_hub.models.Backbone)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: BertBackbone.from_architecture("bert_huge"), ValueError,
         "Received: name='bert_huge'"),
        (lambda: BertBackbone.from_architecture("bert_tiny", num_layer=6),
         ValueError, "Received: num_layer=6"),
        (lambda: BertBackbone(**TINY, foo=1), ValueError, "Received: foo=1"),
        (lambda: BertBackbone(**{**TINY, "num_layers": 0}), ValueError,
         "Received: num_layers=0"),
        (lambda: BertBackbone(**{**TINY, "num_layers": -1}), ValueError,
         "Received: num_layers=-1"),
        (lambda: BertBackbone(**{**TINY, "dropout": 2}), ValueError,
         "Received: dropout=2"),
        (lambda: BertBackbone(**TINY, attention="mqa"), ValueError,
         "Received: attention='mqa'"),
        (lambda: BertBackbone(**TINY, shared_key_dim=7), ValueError,
         "Received: shared_key_dim=7, num_heads=2"),
        (lambda: BertTextClassifier(BertBackbone(**TINY), 2, foo=1),
         ValueError, "Received: foo=1"),
        (lambda: BertTextClassifier.from_preset("bert_tiny"), ValueError,
         "bert_tiny"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_inputs_in_eager_calls():
    backbone = BertBackbone(**TINY)
    inputs = _inputs()
    bad = [
        ({"token_ids": -inputs["token_ids"] - 1}, ValueError,
         r"\[0, vocabulary_size=16\)"),
        ({"token_ids": inputs["token_ids"] + 16}, ValueError,
         r"\[0, vocabulary_size=16\)"),
        ({"segment_ids": inputs["segment_ids"] + 2}, ValueError,
         r"\[0, num_segments=2\).*Received: segment_ids"),
        ({"token_ids": inputs["token_ids"].astype("float32")}, TypeError,
         "Received: token_ids.dtype=float32"),
        ({"token_ids": inputs["token_ids"][..., None]}, ValueError,
         r"Received: token_ids.shape=\(2, 6, 1\)"),
        ({"padding_mask": inputs["padding_mask"][:, :4]}, ValueError,
         r"padding_mask.shape=\(2, 4\)"),
    ]
    for change, error, match in bad:
        with pytest.raises(error, match=match):
            backbone({**inputs, **change})
    with pytest.raises(ValueError, match="max_sequence_length=8.*Received"):
        backbone(_inputs(length=9))


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
@pytest.mark.parametrize("batch, length", [(0, 5), (2, 0)])
def test_empty_batch_and_length(batch, length, attention, shared_key_dim):
    import tensorflow as tf

    backbone = BertBackbone(
        **TINY, attention=attention, shared_key_dim=shared_key_dim
    )
    inputs = _inputs(batch=batch, length=length)
    with tf.GradientTape() as tape:
        outputs = backbone(inputs, training=True)
        loss = sum(tf.reduce_sum(v) for v in outputs.values())
    assert tuple(outputs["sequence_output"].shape) == (batch, length, 16)
    assert tuple(outputs["pooled_output"].shape) == (batch, 16)
    gradients = tape.gradient(loss, backbone.trainable_weights)
    assert all(
        g is None or np.all(np.isfinite(keras.ops.convert_to_numpy(g)))
        for g in gradients
    )


def test_padding_changes_nothing_in_unpadded_outputs():
    backbone = BertBackbone(**TINY)
    inputs = _inputs(length=6)
    outputs = numpy_outputs(backbone(inputs))
    changed = {**inputs, "token_ids": inputs["token_ids"].copy()}
    changed["token_ids"][1, 3:] = 5
    np.testing.assert_allclose(
        numpy_outputs(backbone(changed))["sequence_output"][1, :3],
        outputs["sequence_output"][1, :3],
        atol=1e-5,
    )
    short = numpy_outputs(backbone({k: v[1:, :3] for k, v in inputs.items()}))
    np.testing.assert_allclose(
        short["pooled_output"][0], outputs["pooled_output"][1], atol=1e-5
    )


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_classifier_fit_predict_raw_strings(attention, shared_key_dim):
    classifier = _classifier(attention, shared_key_dim)
    classifier.compile()  # keras-hub's defaults
    history = classifier.fit(SENTENCES, LABELS, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert classifier.predict(SENTENCES, verbose=0).shape == (4, 2)


def test_classifier_jit_compile():
    classifier = _classifier("collaborative", 8)
    classifier.compile(jit_compile=True)
    before = classifier.predict(SENTENCES, verbose=0)
    classifier.fit(SENTENCES, LABELS, batch_size=4, epochs=2, verbose=0)
    assert not np.allclose(classifier.predict(SENTENCES, verbose=0), before)


def test_masked_lm_fit_raw_strings():
    backbone = BertBackbone(**TINY, attention="collaborative", shared_key_dim=8)
    preprocessor = BertMaskedLMPreprocessor(
        BertTokenizer(vocabulary=VOCABULARY),
        sequence_length=8,
        mask_selection_length=2,
    )
    masked_lm = BertMaskedLM(backbone, preprocessor)
    assert masked_lm.masked_lm_head.token_embedding is backbone.token_embedding
    masked_lm.compile()
    history = masked_lm.fit(SENTENCES, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    x, _, _ = keras.utils.unpack_x_y_sample_weight(preprocessor(SENTENCES))
    assert tuple(masked_lm(x).shape) == (4, 2, len(VOCABULARY))


def test_reparametrized_classifier_round_trips(tmp_path):
    classifier = _classifier()
    expected = classifier.predict(SENTENCES, verbose=0)
    # Full width: exact.
    collaborative, report = reparametrize(classifier, 16, verbose=False)
    assert type(collaborative) is BertTextClassifier
    assert collaborative.backbone.attention == "collaborative"
    assert len(report) == 1
    assert collaborative.preprocessor.tokenizer.get_vocabulary() == VOCABULARY
    outputs = collaborative.predict(SENTENCES, verbose=0)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)

    path = str(tmp_path / "classifier.keras")
    collaborative.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        restored.predict(SENTENCES, verbose=0), outputs, atol=1e-6
    )

    preset = str(tmp_path / "preset")
    collaborative.save_to_preset(preset)
    restored = BertTextClassifier.from_preset(preset)
    assert restored.backbone.attention == "collaborative"
    np.testing.assert_allclose(
        restored.predict(SENTENCES, verbose=0), outputs, atol=1e-6
    )
    backbone = BertBackbone.from_preset(preset)
    assert backbone.shared_key_dim == 16
    tokenizer = BertTokenizer.from_preset(preset)
    assert tokenizer.get_vocabulary() == VOCABULARY


def _keras_hub_classifier():
    backbone = keras_hub.models.BertBackbone(**TINY)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=VOCABULARY),
        sequence_length=8,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, 2, preprocessor, dropout=0.0
    )


def test_keras_hub_classifier_converts_and_round_trips(tmp_path):
    source = _keras_hub_classifier()
    expected = source.predict(SENTENCES, verbose=0)
    converted = from_keras_hub(source)
    assert type(converted) is BertTextClassifier
    np.testing.assert_allclose(
        converted.predict(SENTENCES, verbose=0), expected, atol=1e-5
    )
    collaborative, _ = reparametrize(converted, 16, verbose=False)
    path = str(tmp_path / "classifier.keras")
    collaborative.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        restored.predict(SENTENCES, verbose=0), expected, atol=1e-5
    )


def test_from_preset_of_a_keras_hub_preset(tmp_path):
    source = _keras_hub_classifier()
    preset = str(tmp_path / "keras_hub_preset")
    source.save_to_preset(preset)
    x, _, _ = keras.utils.unpack_x_y_sample_weight(
        source.preprocessor(SENTENCES)
    )
    expected = numpy_outputs(source.backbone(x))

    backbone = BertBackbone.from_preset(
        preset, attention="collaborative", shared_key_dim=16
    )
    assert type(backbone) is BertBackbone
    assert backbone.attention == "collaborative"
    assert_same(numpy_outputs(backbone(x)), expected, atol=1e-4)

    # The task: keras-hub's saved head, preprocessor and vocabulary.
    classifier = BertTextClassifier.from_preset(preset)
    assert type(classifier.preprocessor) is BertTextClassifierPreprocessor
    np.testing.assert_allclose(
        classifier.predict(SENTENCES, verbose=0),
        source.predict(SENTENCES, verbose=0),
        atol=1e-5,
    )
    # With `num_classes` a new head, as in keras-hub; calibration on raw
    # strings.
    classifier = BertTextClassifier.from_preset(
        preset,
        num_classes=3,
        attention="collaborative",
        shared_key_dim=8,
        calibration_data=SENTENCES,
    )
    assert classifier.backbone.shared_key_dim == 8
    assert classifier.predict(SENTENCES, verbose=0).shape == (4, 3)
    with pytest.raises(ValueError, match="Received: foo=1"):
        BertTextClassifier.from_preset(preset, foo=1)


def test_minilm_preset_converts_exactly():
    from collab_keras.models.presets import resolve_preset

    folder = resolve_preset("all_minilm_l6_v2")
    reference = keras_hub.models.BertBackbone.from_preset(folder)
    backbone = BertBackbone.from_preset(
        "all_minilm_l6_v2", attention="collaborative"
    )
    assert backbone.attention == "collaborative"
    assert backbone.shared_key_dim == 384
    tokenizer = BertTokenizer.from_preset("all_minilm_l6_v2")
    preprocessor = BertTextClassifierPreprocessor(tokenizer, sequence_length=12)
    x, _, _ = keras.utils.unpack_x_y_sample_weight(
        preprocessor(["The new movie is awesome", "The new movie is so great"])
    )
    expected = numpy_outputs(reference(x))
    outputs = numpy_outputs(backbone(x))
    mask = keras.ops.convert_to_numpy(x["padding_mask"]).astype(bool)
    np.testing.assert_allclose(
        outputs["sequence_output"][mask],
        expected["sequence_output"][mask],
        atol=1e-4,
    )
    # The published all-MiniLM-L6-v2 similarity (mean pooling, L2 norm).
    pooled = (outputs["sequence_output"] * mask[..., None]).sum(1)
    pooled /= mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert round(float(pooled[0] @ pooled[1]), 3) == 0.894


def test_ids_inside_compiled_graphs_behave_as_documented():
    # docs/models.md, "Input checks": values are checked in eager calls
    # only. Inside tf.function on CPU, ids >= vocabulary_size raise
    # TensorFlow's InvalidArgumentError and negative ids wrap around (numpy
    # semantics of keras.ops.take); under XLA both are clamped.
    import tensorflow as tf

    backbone = BertBackbone(**TINY)
    inputs = _inputs(batch=1, length=3)
    last = numpy_outputs(
        backbone({**inputs, "token_ids": np.array([[1, 2, 15]], "int32")})
    )["sequence_output"]

    def run(ids, jit_compile):
        function = tf.function(
            lambda x: backbone(x)["sequence_output"], jit_compile=jit_compile
        )
        return function({**inputs, "token_ids": tf.constant([ids])}).numpy()

    np.testing.assert_allclose(run([1, 2, -1], False), last, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not in"):
        run([1, 2, 16], False)
    np.testing.assert_allclose(run([1, 2, 100], True), last, atol=1e-6)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_quantize_and_lora(attention, shared_key_dim, tmp_path):
    inputs = _inputs()
    backbone = BertBackbone(
        **TINY, attention=attention, shared_key_dim=shared_key_dim
    )
    backbone.quantize("int8")
    expected = numpy_outputs(backbone(inputs))
    backbone.save(str(tmp_path / "quantized.keras"))
    restored = keras.saving.load_model(str(tmp_path / "quantized.keras"))
    assert_same(numpy_outputs(restored(inputs)), expected, atol=1e-6)
    backbone.save_to_preset(str(tmp_path / "preset"))
    restored = BertBackbone.from_preset(str(tmp_path / "preset"))
    assert_same(numpy_outputs(restored(inputs)), expected, atol=1e-6)

    backbone = BertBackbone(
        **TINY, attention=attention, shared_key_dim=shared_key_dim
    )
    total = backbone.count_params()
    backbone.enable_lora(2)
    assert 0 < sum(w.numpy().size for w in backbone.trainable_weights) < total
