"""ViT: backbone, image converter, classifier, presets, conversion."""

import keras
import keras_hub
import numpy as np
import pytest

from collab_keras.models import ViTBackbone
from collab_keras.models import ViTImageClassifier
from collab_keras.models import ViTImageClassifierPreprocessor
from collab_keras.models import ViTImageConverter
from collab_keras.models import from_keras_hub
from collab_keras.reparametrization import reparametrize
from tests.test_models_harness import ATTENTIONS
from tests.test_models_harness import check_backbone

TINY = dict(
    image_shape=(8, 8, 3),
    patch_size=4,
    num_layers=1,
    num_heads=2,
    hidden_dim=16,
    mlp_dim=32,
)


def _images(batch=2, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, (batch, 8, 8, 3)).astype("uint8")
    return rng.normal(size=(batch, 8, 8, 3)).astype(dtype)


def _classifier(attention="concatenate", shared_key_dim=None):
    backbone = ViTBackbone(
        **TINY, attention=attention, shared_key_dim=shared_key_dim
    )
    converter = ViTImageConverter(image_size=(8, 8), scale=1 / 127.5, offset=-1)
    return ViTImageClassifier(
        backbone, 3, ViTImageClassifierPreprocessor(converter)
    )


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_backbone_forward_train_save_export(attention, shared_key_dim, tmp_path):
    backbone = ViTBackbone(
        **{**TINY, "hidden_dim": 32},
        attention=attention,
        shared_key_dim=shared_key_dim,
    )
    assert tuple(backbone(_images()).shape) == (2, 5, 32)
    check_backbone(backbone, _images(), tmp_path)


def test_architectures():
    assert sorted(ViTBackbone.architectures) == [
        "deit_small",
        "deit_tiny",
        "vit_b16",
        "vit_tiny",
    ]
    backbone = ViTBackbone.from_architecture(
        "vit_tiny", num_layers=np.int64(1), attention="collaborative"
    )
    assert backbone.get_config()["num_layers"] == 1
    assert tuple(backbone(np.zeros((1, 32, 32, 3), "float32")).shape) == (
        1,
        65,
        64,
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ViTBackbone.from_architecture("vit_h14"),
         "Received: name='vit_h14'"),
        (lambda: ViTBackbone(**{**TINY, "patch_size": 3}),
         r"Received: patch_size=\(3, 3\)"),
        (lambda: ViTBackbone(**{**TINY, "image_shape": (8, 8)}),
         r"Received: image_shape=\(8, 8\)"),
        (lambda: ViTBackbone(**{**TINY, "num_heads": 0}),
         "Received: num_heads=0"),
        (lambda: ViTBackbone(**TINY, dropout=0.1), "Received: dropout=0.1"),
        (lambda: ViTBackbone(**TINY, shared_key_dim=15),
         "Received: shared_key_dim=15, num_heads=2"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_inputs():
    backbone = ViTBackbone(**TINY)
    with pytest.raises(TypeError, match="Received: images.dtype=bool"):
        backbone(np.zeros((2, 8, 8, 3), "bool"))
    with pytest.raises(ValueError, match=r"Received: images.shape=\(2, 8, 8\)"):
        backbone(np.zeros((2, 8, 8), "float32"))
    # Keras' input spec rejects it, naming the input and both shapes.
    with pytest.raises(ValueError, match=r"images.*\(2, 12, 12, 3\)"):
        backbone(np.zeros((2, 12, 12, 3), "float32"))


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_empty_batch_forward_and_backward(attention, shared_key_dim):
    import tensorflow as tf

    backbone = ViTBackbone(
        **TINY, attention=attention, shared_key_dim=shared_key_dim
    )
    with tf.GradientTape() as tape:
        outputs = backbone(_images(batch=0), training=True)
        loss = tf.reduce_sum(outputs)
    assert tuple(outputs.shape) == (0, 5, 16)
    gradients = tape.gradient(loss, backbone.trainable_weights)
    for gradient in gradients:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(gradient), 0)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_nan_pixel_reaches_the_logits(attention, shared_key_dim):
    classifier = _classifier(attention, shared_key_dim)
    images = _images()
    images[0, 0, 0, 0] = np.nan
    logits = keras.ops.convert_to_numpy(classifier(images))
    assert np.all(np.isnan(logits[0])) and np.all(np.isfinite(logits[1]))


def test_image_converter_accepts_uint8():
    converter = ViTImageConverter(image_size=(4, 4), scale=1 / 255)
    images = _images(dtype="uint8")
    converted = keras.ops.convert_to_numpy(converter(images))
    assert converted.shape == (2, 4, 4, 3) and converted.dtype == "float32"
    assert 0 <= converted.min() and converted.max() <= 1


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_classifier_fit_predict_uint8_images(attention, shared_key_dim):
    classifier = _classifier(attention, shared_key_dim)
    classifier.compile()  # keras-hub's defaults
    images = _images(batch=4, dtype="uint8")
    history = classifier.fit(
        images, np.array([0, 1, 2, 0]), batch_size=2, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    assert classifier.predict(images, verbose=0).shape == (4, 3)


def test_classifier_jit_compile():
    classifier = _classifier("collaborative", 8)
    classifier.compile(jit_compile=True)
    images = _images(batch=4, dtype="uint8")
    before = classifier.predict(images, verbose=0)
    classifier.fit(images, np.array([0, 1, 2, 0]), epochs=2, verbose=0)
    assert not np.allclose(classifier.predict(images, verbose=0), before)


def test_keras_hub_vit_converts_reparametrizes_and_round_trips(tmp_path):
    source = keras_hub.models.ViTImageClassifier(
        keras_hub.models.ViTBackbone(**TINY),
        3,
        keras_hub.models.ViTImageClassifierPreprocessor(
            keras_hub.layers.ViTImageConverter(
                image_size=(8, 8), scale=1 / 127.5, offset=-1
            )
        ),
    )
    images = _images(dtype="uint8")
    expected = source.predict(images, verbose=0)
    converted = from_keras_hub(source)
    assert type(converted) is ViTImageClassifier
    assert type(converted.preprocessor.image_converter) is ViTImageConverter
    np.testing.assert_allclose(
        converted.predict(images, verbose=0), expected, atol=1e-5
    )
    collaborative, _ = reparametrize(converted, 16, verbose=False)
    assert collaborative.backbone.attention == "collaborative"
    outputs = collaborative.predict(images, verbose=0)
    np.testing.assert_allclose(outputs, expected, atol=1e-4)

    path = str(tmp_path / "classifier.keras")
    collaborative.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), outputs, atol=1e-6
    )
    preset = str(tmp_path / "preset")
    collaborative.save_to_preset(preset)
    restored = ViTImageClassifier.from_preset(preset)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), outputs, atol=1e-6
    )

    # A keras-hub preset folder, converted on load.
    keras_hub_preset = str(tmp_path / "keras_hub_preset")
    source.save_to_preset(keras_hub_preset)
    loaded = ViTImageClassifier.from_preset(
        keras_hub_preset, attention="collaborative", shared_key_dim=16
    )
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), expected, atol=1e-4
    )
    backbone = ViTBackbone.from_preset(keras_hub_preset)
    assert type(backbone) is ViTBackbone and backbone.attention == "concatenate"


@pytest.mark.parametrize(
    "options",
    [
        dict(use_mha_bias=False, use_mlp_bias=False),
        dict(use_class_token=False, use_patch_bias=False),
    ],
)
def test_keras_hub_vit_arguments_convert_exactly(options, tmp_path):
    source = keras_hub.models.ViTBackbone(**TINY, **options)
    images = _images()
    expected = keras.ops.convert_to_numpy(source(images))
    backbone = from_keras_hub(source)
    assert type(backbone) is ViTBackbone
    for key, value in options.items():
        assert getattr(backbone, key) is value
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone(images)), expected, atol=1e-5
    )
    # Full width is exact, and the settings survive a preset round trip.
    collaborative, _ = reparametrize(backbone, 16, verbose=False)
    assert collaborative.use_mha_bias is backbone.use_mha_bias
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(collaborative(images)), expected, atol=1e-4
    )
    source.save_to_preset(str(tmp_path / "preset"))
    loaded = ViTBackbone.from_preset(str(tmp_path / "preset"))
    assert loaded.get_config() == backbone.get_config()


def test_channels_first_images_give_the_channels_last_outputs():
    last = ViTBackbone(**TINY)
    first = ViTBackbone(
        **{**TINY, "image_shape": (3, 8, 8)}, data_format="channels_first"
    )
    first.set_weights(last.get_weights())
    images = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(images.transpose(0, 3, 1, 2))),
        keras.ops.convert_to_numpy(last(images)),
        atol=1e-6,
    )
    assert ViTBackbone.from_config(first.get_config()).data_format == (
        "channels_first"
    )
