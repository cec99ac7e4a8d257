"""Image classifier preprocessor of the zoo's ViTBackbone."""

import keras
import keras_hub

from ..zoo_model import ZooPreprocessing
from .vit_backbone import ViTBackbone
from .vit_image_converter import ViTImageConverter


@keras.saving.register_keras_serializable(package="collab_keras")
class ViTImageClassifierPreprocessor(
    ZooPreprocessing, keras_hub.models.ViTImageClassifierPreprocessor
):
    """keras-hub's `ViTImageClassifierPreprocessor` for the zoo's
    `ViTBackbone`: runs the `ViTImageConverter` on `x` and passes labels
    through.

    Args:
        image_converter: A `ViTImageConverter`.

    Example:

    ```python
    preprocessor = ViTImageClassifierPreprocessor(
        ViTImageConverter(image_size=(32, 32), scale=1 / 255)
    )
    preprocessor(np.zeros((2, 32, 32, 3), "uint8")).shape  # (2, 32, 32, 3)
    ```
    """

    backbone_cls = ViTBackbone
    image_converter_cls = ViTImageConverter
