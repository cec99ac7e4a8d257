"""Image converter of the zoo's ViTBackbone."""

import keras
import keras_hub

from ..zoo_model import ZooPreprocessing
from .vit_backbone import ViTBackbone


@keras.saving.register_keras_serializable(package="collab_keras")
class ViTImageConverter(ZooPreprocessing, keras_hub.layers.ViTImageConverter):
    """keras-hub's `ViTImageConverter` for the zoo's `ViTBackbone`.

    Resizes images to `image_size` and rescales them (`x * scale + offset`,
    per channel when given as lists); uint8 images (what `tfds` yields) and
    float images are accepted, in eager calls, in `tf.data` and in `fit`.

    Args:
        image_size: `(height, width)` of the output.
        scale: Multiplier (a float or one per channel), e.g. `1 / 255`.
        offset: Added after scaling (a float or one per channel).
        **kwargs: The other arguments of keras-hub's `ImageConverter`
            (`interpolation`, `crop_to_aspect_ratio`, ...).

    Example:

    ```python
    converter = ViTImageConverter(image_size=(32, 32), scale=1 / 127.5,
                                  offset=-1.0)
    converter(np.zeros((2, 64, 64, 3), "uint8")).shape  # (2, 32, 32, 3)
    ```
    """

    backbone_cls = ViTBackbone
