"""ViT patch embedding: patches, class token, learned positions."""

import keras
from keras import ops
from keras_hub.layers import PositionEmbedding

from collab_keras.argument_checks import check_bool


@keras.saving.register_keras_serializable(package="collab_keras")
class PatchEmbedding(keras.layers.Layer):
    """Splits images into patches, embeds them, prepends a class token and
    adds learned position embeddings.

    The weights are those of keras-hub's `ViTPatchingAndEmbedding`: a
    patch projection `patch_embedding` (keras-hub's `Conv2D` kernel with
    kernel = stride = `patch_size`, flattened to a `Dense` kernel of shape
    `(patch_height * patch_width * channels, hidden_dim)`), a `class_token`
    of shape `(1, 1, hidden_dim)` and a position table of `num_patches + 1`
    rows. Patches are cut by a reshape, so an empty batch works on every
    backend (TensorFlow's `Conv2D` returns its input for a batch of 0).

    Args:
        image_size: `(height, width)` of the input images.
        patch_size: `(patch_height, patch_width)`.
        hidden_dim: Embedding width.
        use_class_token: Whether to prepend the class token (the position
            table then has `num_patches + 1` rows, else `num_patches`).
        use_patch_bias: Whether the patch projection has a bias.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        images: Float tensor `(batch, height, width, channels)`.

    Returns:
        Tensor `(batch, num_patches + 1, hidden_dim)`, the class token first
        (`(batch, num_patches, hidden_dim)` without it).

    Example:

    ```python
    layer = PatchEmbedding((32, 32), (4, 4), hidden_dim=64)
    layer(keras.random.normal((2, 32, 32, 3))).shape  # (2, 65, 64)
    ```
    """

    def __init__(
        self,
        image_size,
        patch_size,
        hidden_dim,
        use_class_token=True,
        use_patch_bias=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_size = tuple(image_size)
        self.patch_size = tuple(patch_size)
        self.hidden_dim = hidden_dim
        self.use_class_token = check_bool("use_class_token", use_class_token)
        self.use_patch_bias = check_bool("use_patch_bias", use_patch_bias)
        self.num_patches = (self.image_size[0] // self.patch_size[0]) * (
            self.image_size[1] // self.patch_size[1]
        )
        self.num_positions = self.num_patches + int(self.use_class_token)

    def build(self, images_shape):
        if self.use_class_token:
            self.class_token = self.add_weight(
                shape=(1, 1, self.hidden_dim),
                initializer="random_normal",
                name="class_token",
            )
        self.patch_embedding = keras.layers.Dense(
            self.hidden_dim,
            use_bias=self.use_patch_bias,
            dtype=self.dtype_policy,
            name="patch_embedding",
        )
        patch_height, patch_width = self.patch_size
        self.patch_embedding.build(
            (None, None, patch_height * patch_width * images_shape[-1])
        )
        self.position_embedding = PositionEmbedding(
            sequence_length=self.num_positions,
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="position_embedding",
        )
        self.position_embedding.build(
            (None, self.num_positions, self.hidden_dim)
        )

    def call(self, images):
        batch, channels = ops.shape(images)[0], images.shape[-1]
        (height, width), (patch_height, patch_width) = (
            self.image_size,
            self.patch_size,
        )
        x = ops.reshape(
            images,
            (batch, height // patch_height, patch_height,
             width // patch_width, patch_width, channels),
        )
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, rows, cols, ph, pw, C)
        x = ops.reshape(
            x, (batch, self.num_patches, patch_height * patch_width * channels)
        )
        x = self.patch_embedding(x)  # (batch, patches, hidden)
        if self.use_class_token:
            class_token = ops.cast(self.class_token, x.dtype)
            class_token = ops.tile(class_token, (batch, 1, 1))  # (B, 1, hidden)
            x = ops.concatenate([class_token, x], axis=1)  # (B, patches + 1, hidden)
        return x + self.position_embedding(x)

    def compute_output_shape(self, images_shape):
        return (images_shape[0], self.num_positions, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "use_class_token": self.use_class_token,
                "use_patch_bias": self.use_patch_bias,
            }
        )
        return config
