"""Image classifier on the zoo's ViTBackbone."""

import keras
import keras_hub

from ..zoo_model import ZooTask
from .vit_backbone import ViTBackbone
from .vit_image_classifier_preprocessor import ViTImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="collab_keras")
class ViTImageClassifier(ZooTask, keras_hub.models.ViTImageClassifier):
    """keras-hub's `ViTImageClassifier` on the zoo's `ViTBackbone`.

    A dense layer on the class token (`pooling="token"`) or the mean of the
    sequence (`"gap"`), as keras-hub's: `compile()` defaults, `fit` and
    `predict` on uint8 or float images through the preprocessor,
    `save_to_preset`, `enable_lora` and `quantize` come from keras-hub. The
    config carries the backbone's attention switch (see
    `BertTextClassifier`).

    Args:
        backbone: A `ViTBackbone`.
        num_classes: Number of classes.
        preprocessor: A `ViTImageClassifierPreprocessor` or `None`.
        pooling: `"token"` or `"gap"`.
        intermediate_dim: Optional width of a tanh layer before the logits.
        activation: Activation of the outputs (`None`: logits).
        dropout: Dropout before the dense layer.
        head_dtype: Dtype policy of the head.

    Example:

    ```python
    backbone = ViTBackbone.from_architecture("vit_tiny")
    preprocessor = ViTImageClassifierPreprocessor(
        ViTImageConverter(image_size=(32, 32), scale=1 / 255)
    )
    classifier = ViTImageClassifier(backbone, 10, preprocessor)
    classifier.fit(images_uint8, labels)
    ```
    """

    backbone_cls = ViTBackbone
    preprocessor_cls = ViTImageClassifierPreprocessor
