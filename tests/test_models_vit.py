"""VisionTransformer: builder, errors, keras-hub ViTBackbone parity."""

import keras_hub
import numpy as np
import pytest

from collab_keras.models import VIT_PRESETS
from collab_keras.models import VisionTransformer
from collab_keras.models import load_vit_backbone_weights
from collab_keras.reparametrization import reparametrize
from tests.test_models_harness import ATTENTIONS
from tests.test_models_harness import check_model
from tests.test_models_harness import numpy_outputs


def _images(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_forward_train_save_export(attention, shared_key_dim, tmp_path):
    model = VisionTransformer.from_preset(
        "vit_tiny", attention=attention, shared_key_dim=shared_key_dim
    )
    outputs = model(_images())
    assert tuple(outputs["sequence_output"].shape) == (2, 65, 64)
    assert tuple(outputs["pooled_output"].shape) == (2, 64)
    assert tuple(outputs["logits"].shape) == (2, 10)
    check_model(model, _images(), "logits", np.array([1, 7]), tmp_path)


def test_parity_with_keras_hub_vit_backbone():
    config = dict(VIT_PRESETS["vit_tiny"])
    config.pop("num_classes")  # the keras-hub backbone has no head
    backbone = keras_hub.models.ViTBackbone(**config)
    model = VisionTransformer(**config)
    load_vit_backbone_weights(model, backbone)
    images = _images()
    expected = np.asarray(backbone(images))
    outputs = numpy_outputs(model(images))
    np.testing.assert_allclose(
        outputs["sequence_output"], expected, atol=1e-5, rtol=0
    )
    # And exactly the same model with collaborative heads.
    collaborative, _ = reparametrize(model, 64, verbose=False)
    np.testing.assert_allclose(
        numpy_outputs(collaborative(images))["sequence_output"],
        expected,
        atol=1e-4,
    )


def test_bad_inputs_and_arguments():
    model = VisionTransformer.from_preset("vit_tiny")
    with pytest.raises(ValueError, match="Received: images.dtype=int32"):
        model(np.zeros((2, 32, 32, 3), "int32"))
    with pytest.raises(ValueError, match=r"Received: images.shape=\(2, 32, 32\)"):
        model(np.zeros((2, 32, 32), "float32"))
    # Keras' input spec rejects it first, naming the input and both shapes.
    with pytest.raises(ValueError, match=r"images.*\(2, 48, 48, 3\)"):
        model(np.zeros((2, 48, 48, 3), "float32"))
    with pytest.raises(ValueError, match="Received: image_shape=.*patch_size"):
        VisionTransformer.from_preset("vit_tiny", patch_size=5)
    with pytest.raises(ValueError, match="Received: preset='vit_h14'"):
        VisionTransformer.from_preset("vit_h14")
    with pytest.raises(ValueError, match="shared_key_dim=16"):
        VisionTransformer.from_preset("vit_tiny", shared_key_dim=16)
