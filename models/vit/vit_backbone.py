"""Vision Transformer (ViT / DeiT) backbone with an attention switch."""

import keras
import keras_hub
from keras_hub.src.utils.keras_utils import standardize_data_format

from collab_keras.argument_checks import check_bool
from collab_keras.argument_checks import check_integer
from collab_keras.argument_checks import check_rate

from ..input_checks import check_inputs
from ..keras_hub_weights import copy_vit_weights
from ..presets import VIT_ARCHITECTURES
from ..transformer_encoder_block import TransformerEncoderBlock
from ..zoo_model import ZooBackbone
from .patch_embedding import PatchEmbedding


@keras.saving.register_keras_serializable(package="collab_keras")
class ViTBackbone(ZooBackbone):
    """Vision Transformer (Dosovitskiy et al., 2021; DeiT, Touvron et al.,
    2021) with concatenated or collaborative heads.

    Patch embedding with a class token and learned positions, a stack of
    pre-norm `TransformerEncoderBlock`s (exact GELU) and a final layer norm:
    the architecture, arguments and output of `keras_hub.models.ViTBackbone`
    (its `use_mha_bias`, `use_mlp_bias`, `use_class_token`,
    `use_patch_bias` and `data_format` included), so its checkpoints load
    with `from_preset`; `attention="collaborative"` builds every
    self-attention as `CollaborativeAttention`.

    Args:
        image_shape: `(height, width, channels)`, channels last.
        patch_size: int or `(height, width)` of the patches; must divide the
            image size.
        num_layers: Number of encoder blocks.
        num_heads: Attention heads per block.
        hidden_dim: Model width.
        mlp_dim: Feed-forward width.
        dropout_rate: Dropout after embeddings, attention and MLP.
        attention_dropout: Dropout on the attention weights.
        layer_norm_epsilon: Epsilon of the layer normalizations.
        use_mha_bias: Whether the attention layers have biases.
        use_mlp_bias: Whether the MLP (feed-forward) layers have biases.
        use_class_token: Whether a class token is prepended to the patches.
        use_patch_bias: Whether the patch projection has a bias.
        data_format: `"channels_last"` or `"channels_first"` images
            (`None`: `keras.config.image_data_format()`); `image_shape` is
            given in that format.
        attention: `"concatenate"`, `"collaborative"` or a registered layer
            factory.
        shared_key_dim: Total query/key width (`None`: `hidden_dim`): the
            shared width of collaborative heads, or with `"concatenate"` the
            summed width of the heads (`shared_key_dim // num_heads` each,
            values unchanged; a multiple of `num_heads`).
        attention_kwargs: Extra keyword arguments for the attention layers.
        dtype: Dtype policy of the model.
        **kwargs: `keras.Model` keyword arguments (`name`, `trainable`);
            unknown names raise.

    Inputs:
        images: `(batch, height, width, channels)` (channels first:
            `(batch, channels, height, width)`), float (already scaled, see
            `ViTImageConverter`); a batch of 0 gives an empty output.

    Outputs:
        `(batch, num_patches + 1, hidden_dim)`, the class token first
        (`num_patches` without a class token).

    Example:

    ```python
    backbone = ViTBackbone.from_architecture(
        "vit_tiny", attention="collaborative", shared_key_dim=32
    )
    backbone(np.zeros((2, 32, 32, 3), "float32")).shape  # (2, 65, 64)
    ```
    """

    architectures = VIT_ARCHITECTURES
    keras_hub_backbone_cls = keras_hub.models.ViTBackbone
    calibration_preprocessor = "ViTImageClassifierPreprocessor"

    def __init__(
        self,
        image_shape,
        patch_size,
        num_layers,
        num_heads,
        hidden_dim,
        mlp_dim,
        dropout_rate=0.0,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-6,
        use_mha_bias=True,
        use_mlp_bias=True,
        use_class_token=True,
        use_patch_bias=True,
        data_format=None,
        attention="concatenate",
        shared_key_dim=None,
        attention_kwargs=None,
        dtype=None,
        **kwargs,
    ):
        data_format = standardize_data_format(data_format)
        if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3:
            raise ValueError(
                "Argument `image_shape` must be (height, width, channels) "
                "((channels, height, width) with channels-first data). "
                f"Received: image_shape={image_shape!r}"
            )
        image_shape = tuple(
            check_integer("image_shape", size) for size in image_shape
        )
        # (height, width, channels) whatever the data format.
        channels_last_shape = (
            image_shape
            if data_format == "channels_last"
            else image_shape[1:] + image_shape[:1]
        )
        use_mha_bias = check_bool("use_mha_bias", use_mha_bias)
        use_mlp_bias = check_bool("use_mlp_bias", use_mlp_bias)
        if not isinstance(patch_size, (tuple, list)):
            patch_size = (patch_size, patch_size)
        patch_size = tuple(check_integer("patch_size", p) for p in patch_size)
        if (
            len(patch_size) != 2
            or channels_last_shape[0] % patch_size[0]
            or channels_last_shape[1] % patch_size[1]
        ):
            raise ValueError(
                "Argument `patch_size` must divide the image height and "
                f"width. Received: patch_size={patch_size}, "
                f"image_shape={image_shape}"
            )
        num_layers = check_integer("num_layers", num_layers)
        num_heads = check_integer("num_heads", num_heads)
        hidden_dim = check_integer("hidden_dim", hidden_dim)
        mlp_dim = check_integer("mlp_dim", mlp_dim)
        dropout_rate = check_rate("dropout_rate", dropout_rate)
        attention_dropout = check_rate("attention_dropout", attention_dropout)
        attention, shared_key_dim, attention_kwargs = self._init_switch(
            attention, shared_key_dim, attention_kwargs
        )

        # === Layers ===
        self.patch_embedding = PatchEmbedding(
            channels_last_shape[:2],
            patch_size,
            hidden_dim,
            use_class_token=use_class_token,
            use_patch_bias=use_patch_bias,
            dtype=dtype,
            name="patch_embedding",
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout_rate, dtype=dtype, name="embeddings_dropout"
        )
        self.transformer_layers = [
            TransformerEncoderBlock(
                num_heads=num_heads,
                intermediate_dim=mlp_dim,
                attention=attention,
                shared_key_dim=shared_key_dim,
                dropout=dropout_rate,
                attention_dropout=attention_dropout,
                activation="gelu",
                layer_norm_epsilon=layer_norm_epsilon,
                normalize_first=True,
                attention_kwargs=(
                    attention_kwargs
                    if use_mha_bias
                    else {**(attention_kwargs or {}), "use_bias": False}
                ),
                use_feedforward_bias=use_mlp_bias,
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="layer_norm"
        )

        # === Functional model ===
        images = keras.Input(shape=image_shape, name="images")
        x = images
        if data_format == "channels_first":
            x = keras.ops.transpose(x, (0, 2, 3, 1))  # (batch, H, W, C)
        x = self.patch_embedding(x)  # (batch, patches + 1, hidden)
        x = self.embeddings_dropout(x)
        for block in self.transformer_layers:
            x = block(x)
        x = self.layer_norm(x)
        super().__init__(inputs=images, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_mha_bias = use_mha_bias
        self.use_mlp_bias = use_mlp_bias
        self.use_class_token = self.patch_embedding.use_class_token
        self.use_patch_bias = self.patch_embedding.use_patch_bias
        self.data_format = data_format
        self.attention = attention
        self.shared_key_dim = shared_key_dim
        self.attention_kwargs = attention_kwargs

    def call(self, inputs, training=None, mask=None):
        self._check_inputs(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _check_inputs(self, inputs):
        # Keras' input spec checks the image size.
        check_inputs(inputs, {"images": ("float", 4, None)})

    @classmethod
    def from_keras_hub(cls, backbone, **kwargs):
        """A concatenated `ViTBackbone` with the weights of a
        `keras_hub.models.ViTBackbone` (outputs equal to float rounding).

        Args:
            backbone: A `keras_hub.models.ViTBackbone` (any of its bias,
                class token and data format settings).
            **kwargs: Constructor arguments overriding its config (`dtype`).
        """
        config = {**backbone.get_config(), **kwargs}
        return copy_vit_weights(backbone, cls.from_config(config))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_shape": self.image_shape,
                "patch_size": self.patch_size,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "mlp_dim": self.mlp_dim,
                "dropout_rate": self.dropout_rate,
                "attention_dropout": self.attention_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "use_mha_bias": self.use_mha_bias,
                "use_mlp_bias": self.use_mlp_bias,
                "use_class_token": self.use_class_token,
                "use_patch_bias": self.use_patch_bias,
                "data_format": self.data_format,
                **self._switch_config(),
            }
        )
        return config
