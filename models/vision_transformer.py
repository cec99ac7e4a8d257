"""Vision Transformer (ViT / DeiT) with an attention switch."""

import keras

from .attention_factory import check_attention
from .attention_factory import serialize_attention
from .input_checks import check_inputs
from .patch_embedding import PatchEmbedding
from .presets import VIT_PRESETS
from .transformer_encoder_block import TransformerEncoderBlock
from .zoo_model import ZooModel


@keras.saving.register_keras_serializable(package="collab_keras")
class VisionTransformer(ZooModel):
    """Vision Transformer (Dosovitskiy et al., 2021; DeiT, Touvron et al.,
    2021) with concatenated or collaborative heads.

    Patch embedding with a class token and learned positions, a stack of
    pre-norm `TransformerEncoderBlock`s (exact GELU, epsilon 1e-6), a final
    layer norm and an optional linear head on the class token: the layout of
    `keras_hub.models.ViTBackbone`, whose weights load with
    `keras_hub_weights.load_vit_backbone_weights`.

    Args:
        image_shape: `(height, width, channels)`, channels last.
        patch_size: int or `(height, width)` of the patches; must divide the
            image size.
        num_layers: Number of encoder blocks.
        num_heads: Attention heads per block.
        hidden_dim: Model width.
        mlp_dim: Feed-forward width.
        num_classes: If set, a linear classification head and an output
            `logits` `(batch, num_classes)`.
        dropout: Dropout after embeddings, attention and MLP.
        attention_dropout: Dropout on the attention weights.
        layer_norm_epsilon: Epsilon of the layer normalizations.
        attention: `"concatenate"`, `"collaborative"` or a layer factory.
        shared_key_dim: Shared query/key width of collaborative attention
            (`None`: `hidden_dim`). Must be `None` for `"concatenate"`.
        attention_kwargs: Extra keyword arguments for the attention layers.
        dtype: Dtype policy of the model.
        **kwargs: `keras.Model` keyword arguments (`name`, `trainable`).

    Inputs:
        images: float `(batch, height, width, channels)`.

    Outputs (a dict):
        sequence_output: `(batch, num_patches + 1, hidden_dim)`.
        pooled_output: the class token, `(batch, hidden_dim)`.
        logits: float32 `(batch, num_classes)` when `num_classes` is set.

    Example:

    ```python
    model = VisionTransformer.from_preset("vit_tiny",
                                          attention="collaborative",
                                          shared_key_dim=32)
    model(np.zeros((2, 32, 32, 3), "float32"))["logits"].shape  # (2, 10)
    ```
    """

    presets = VIT_PRESETS

    def __init__(
        self,
        image_shape,
        patch_size,
        num_layers,
        num_heads,
        hidden_dim,
        mlp_dim,
        num_classes=None,
        dropout=0.0,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-6,
        attention="concatenate",
        shared_key_dim=None,
        attention_kwargs=None,
        dtype=None,
        **kwargs,
    ):
        attention = check_attention(attention, shared_key_dim)
        image_shape = tuple(image_shape)
        if isinstance(patch_size, int):
            patch_size = (patch_size, patch_size)
        patch_size = tuple(patch_size)
        if (
            len(image_shape) != 3
            or image_shape[0] % patch_size[0]
            or image_shape[1] % patch_size[1]
        ):
            raise ValueError(
                "Argument `image_shape` must be (height, width, channels) "
                "with height and width multiples of `patch_size`. Received: "
                f"image_shape={image_shape}, patch_size={patch_size}"
            )

        # === Layers ===
        self.patch_embedding = PatchEmbedding(
            image_shape[:2], patch_size, hidden_dim, dtype=dtype,
            name="patch_embedding",
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
        )
        self.transformer_layers = [
            TransformerEncoderBlock(
                num_heads=num_heads,
                intermediate_dim=mlp_dim,
                attention=attention,
                shared_key_dim=shared_key_dim,
                dropout=dropout,
                attention_dropout=attention_dropout,
                activation="gelu",
                layer_norm_epsilon=layer_norm_epsilon,
                normalize_first=True,
                attention_kwargs=attention_kwargs,
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
        x = self.patch_embedding(images)  # (batch, patches + 1, hidden)
        x = self.embeddings_dropout(x)
        for block in self.transformer_layers:
            x = block(x)
        x = self.layer_norm(x)
        pooled = x[:, 0, :]  # the class token, (batch, hidden)
        outputs = {"sequence_output": x, "pooled_output": pooled}
        if num_classes is not None:
            self.classifier = keras.layers.Dense(
                num_classes, dtype="float32", name="classifier"
            )
            outputs["logits"] = self.classifier(pooled)
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.num_classes = num_classes
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention = attention
        self.shared_key_dim = shared_key_dim
        self.attention_kwargs = attention_kwargs

    def call(self, inputs, training=None, mask=None):
        # Keras' input spec has already checked the image size.
        check_inputs(inputs, {"images": ("float", 4, None)})
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {
            **self._base_config(),
            "image_shape": self.image_shape,
            "patch_size": self.patch_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "mlp_dim": self.mlp_dim,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "attention": serialize_attention(self.attention),
            "shared_key_dim": self.shared_key_dim,
            "attention_kwargs": self.attention_kwargs,
        }
