"""The zoo as a keras-hub citizen: keras-hub's own tasks and preprocessors on
the zoo's backbones, `.presets`, preset metadata, raw calibration data and
the conversion report of `from_preset`."""

import json
import os
import warnings

import keras
import keras_hub
import numpy as np
import pytest

from collab_keras.models import BertBackbone
from collab_keras.models import BertMaskedLM
from collab_keras.models import BertTextClassifier
from collab_keras.models import BertTokenizer
from collab_keras.models import TransformerNMTBackbone
from collab_keras.models import ViTBackbone
from collab_keras.models import ViTImageClassifier
from collab_keras.reparametrization import reparametrize
from tests.test_models_bert import LABELS
from tests.test_models_bert import SENTENCES
from tests.test_models_bert import TINY as BERT_TINY
from tests.test_models_bert import VOCABULARY
from tests.test_models_bert import _classifier as _bert_classifier
from tests.test_models_vit import TINY as VIT_TINY
from tests.test_models_vit import _images

SWITCHES = [("concatenate", None), ("collaborative", 8)]


def _tokenizer():
    return keras_hub.models.BertTokenizer(vocabulary=VOCABULARY)


@pytest.mark.parametrize("attention, shared_key_dim", SWITCHES)
def test_keras_hub_bert_text_classifier_on_a_zoo_backbone(
    attention, shared_key_dim
):
    backbone = BertBackbone(
        **BERT_TINY, attention=attention, shared_key_dim=shared_key_dim
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        _tokenizer(), sequence_length=8
    )
    classifier = keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor
    )
    history = classifier.fit(SENTENCES, LABELS, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert classifier.predict(SENTENCES[:1], verbose=0).shape == (1, 2)


def test_keras_hub_bert_masked_lm_on_a_zoo_backbone():
    backbone = BertBackbone(
        **BERT_TINY, attention="collaborative", shared_key_dim=8
    )
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        _tokenizer(), sequence_length=8, mask_selection_rate=0.5,
        mask_selection_length=3,
    )
    masked_lm = keras_hub.models.BertMaskedLM(backbone, preprocessor)
    history = masked_lm.fit(SENTENCES, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # keras-hub's head is tied to the zoo backbone's token embedding.
    assert masked_lm.masked_lm_head.token_embedding is backbone.token_embedding


@pytest.mark.parametrize("attention, shared_key_dim", SWITCHES)
def test_keras_hub_vit_image_classifier_on_a_zoo_backbone(
    attention, shared_key_dim
):
    backbone = ViTBackbone(
        **VIT_TINY, attention=attention, shared_key_dim=shared_key_dim
    )
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(
        keras_hub.layers.ViTImageConverter(
            image_size=(8, 8), scale=1 / 127.5, offset=-1
        )
    )
    classifier = keras_hub.models.ViTImageClassifier(
        backbone, num_classes=3, preprocessor=preprocessor
    )
    images = _images(batch=4, dtype="uint8")
    history = classifier.fit(images, np.array([0, 1, 2, 0]), batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert classifier.predict(images, verbose=0).shape == (4, 3)


def test_presets_list_the_zoo_presets():
    for cls in (BertBackbone, BertTextClassifier, BertMaskedLM, BertTokenizer):
        assert "all_minilm_l6_v2" in cls.presets, cls
        metadata = cls.presets["all_minilm_l6_v2"]["metadata"]
        assert metadata["params"] == 22713216 and metadata["path"] == "bert"
    assert "all_minilm_l6_v2" not in ViTBackbone.presets
    assert "all_minilm_l6_v2" not in TransformerNMTBackbone.presets


def test_preset_metadata_names_keras_hub_task_kinds(tmp_path):
    for model, kinds in (
        (BertBackbone(**BERT_TINY), ["MaskedLM", "TextClassifier"]),
        (ViTBackbone(**VIT_TINY), ["ImageClassifier"]),
    ):
        preset = str(tmp_path / type(model).__name__)
        model.save_to_preset(preset)
        with open(os.path.join(preset, "metadata.json")) as file:
            assert json.load(file)["tasks"] == kinds


def test_from_preset_carries_the_report_and_warns_nothing(tmp_path, capsys):
    preset = str(tmp_path / "preset")
    _bert_classifier().save_to_preset(preset)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        classifier = BertTextClassifier.from_preset(
            preset, num_classes=2, attention="collaborative", shared_key_dim=8
        )
    report = classifier.conversion_report
    # The default below the full width: calibrated on synthetic inputs.
    assert len(report) == 1 and report.calibration_source == "synthetic"
    assert report[0]["calibration_source"] == "synthetic"
    assert report[0]["calibration"] in ("data-aware", "tensor-only")
    assert report.seconds >= report[0]["seconds"] > 0
    assert (
        "Converted 1 attention layer to shared_key_dim=8" in (
            capsys.readouterr().out
        )
    )
    assert report.summary().endswith("(on synthetic inputs).")


def test_from_preset_default_calibration_is_deterministic_and_optional(
    tmp_path,
):
    preset = str(tmp_path / "preset")
    _bert_classifier().save_to_preset(preset)

    def load(**kwargs):
        return BertBackbone.from_preset(
            preset, attention="collaborative", **kwargs
        )

    first, second = load(shared_key_dim=8), load(shared_key_dim=8)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Explicitly no calibration: the weights alone.
    plain = load(shared_key_dim=8, calibration_data=None)
    assert plain.conversion_report.calibration_source is None
    assert plain.conversion_report[0]["calibration"] is None
    assert plain.conversion_report.summary().endswith(
        "from the weights alone (no calibration)."
    )
    # The full width is exact: no calibration needed, none used.
    exact = load()
    assert exact.conversion_report.calibration_source is None
    assert exact.conversion_report[0]["relative_error"] == 0.0
    # A plain `reparametrize` stays weights-only by default.
    _, report = reparametrize(BertBackbone(**BERT_TINY), 8, verbose=False)
    assert report.calibration_source is None
    # ViT has no synthetic inputs: the default is the weights alone.
    vit = str(tmp_path / "vit")
    ViTBackbone(**VIT_TINY).save_to_preset(vit)
    converted = ViTBackbone.from_preset(
        vit, attention="collaborative", shared_key_dim=8
    )
    assert converted.conversion_report.calibration_source is None


def _converted_on_load(cls, preset, calibration_data):
    return cls.from_preset(
        preset,
        attention="collaborative",
        shared_key_dim=8,
        calibration_data=calibration_data,
    )


def test_backbone_from_preset_calibrates_on_raw_text(tmp_path):
    preset = str(tmp_path / "preset")
    _bert_classifier().save_to_preset(preset)
    sentences = SENTENCES * 3
    for cls in (BertBackbone, BertTextClassifier):
        with pytest.warns(UserWarning, match="12 sequences"):
            model = _converted_on_load(cls, preset, sentences)
        entry = model.conversion_report[0]
        assert entry["calibration"] in ("data-aware", "tensor-only")
        assert set(entry["held_out_logit_error"]) == {"data-aware", "tensor-only"}
    with pytest.raises(ValueError, match="not one string.*Received"):
        BertBackbone.from_preset(
            preset, attention="collaborative", shared_key_dim=8,
            calibration_data="a great movie",
        )


def test_vit_backbone_from_preset_calibrates_on_uint8_images(tmp_path):
    preset = str(tmp_path / "preset")
    converter = keras_hub.layers.ViTImageConverter(
        image_size=(8, 8), scale=1 / 127.5, offset=-1
    )
    keras_hub.models.ViTImageClassifier(
        keras_hub.models.ViTBackbone(**VIT_TINY),
        3,
        keras_hub.models.ViTImageClassifierPreprocessor(converter),
    ).save_to_preset(preset)
    for data in (_images(batch=8, dtype="uint8"), _images(batch=8)):
        with pytest.warns(UserWarning, match="8 sequences"):
            backbone = _converted_on_load(ViTBackbone, preset, data)
        assert isinstance(backbone, ViTBackbone)
        assert backbone.conversion_report[0]["held_out_logit_error"] is not None
    classifier = ViTImageClassifier.from_preset(
        preset, attention="collaborative", shared_key_dim=8,
        calibration_data=_images(batch=8, dtype="uint8"),
    )
    assert classifier.conversion_report[0]["calibration"] is not None
    assert isinstance(keras.ops.convert_to_numpy(classifier.predict(
        _images(dtype="uint8"), verbose=0)), np.ndarray)


def test_synthetic_calibration_uses_random_token_sequences(tmp_path):
    backbone = BertBackbone(**BERT_TINY)
    inputs = backbone.synthetic_inputs(num_sequences=40, sequence_length=20)
    assert inputs["token_ids"].shape == (40, 8)  # max_sequence_length
    assert inputs["token_ids"].min() >= 1  # no [PAD]
    np.testing.assert_array_equal(
        inputs["token_ids"], backbone.synthetic_inputs(40, 20)["token_ids"]
    )
    converted, report = reparametrize(backbone, 8, calibration_data="synthetic")
    assert report[0]["held_out_logit_error"] is not None
    preset = str(tmp_path / "preset")
    _bert_classifier().save_to_preset(preset)
    classifier = BertTextClassifier.from_preset(
        preset, num_classes=2, attention="collaborative", shared_key_dim=8,
        calibration_data="synthetic",
    )
    assert classifier.conversion_report[0]["calibration"] is not None
    with pytest.raises(ValueError, match="synthetic_inputs.*Received: calibration_data='synthetic'"):
        reparametrize(ViTBackbone(**VIT_TINY), 8, calibration_data="synthetic")
