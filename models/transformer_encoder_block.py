"""Transformer encoder block with an injectable attention layer."""

import keras
from keras import ops

from .attention_factory import make_attention
from .block_utils import BlockBase
from .block_utils import mask_for_attention
from .block_utils import padding_attention_mask


@keras.saving.register_keras_serializable(package="collab_keras")
class TransformerEncoderBlock(BlockBase):
    """Self-attention and feed-forward block, post- or pre-norm.

    The block of the BERT, ViT and Transformer-NMT encoders. Its sublayers
    are named as in `keras_hub.layers.TransformerEncoder`
    (`self_attention_layer`, `self_attention_layer_norm`,
    `feedforward_intermediate_dense`, ...) so keras-hub weights map one to
    one; `attention` picks concatenated or collaborative heads.

    Args:
        num_heads: Number of attention heads.
        intermediate_dim: Hidden width of the feed-forward network.
        attention: `"concatenate"` (`keras.layers.MultiHeadAttention`),
            `"collaborative"` (`CollaborativeAttention`) or a layer factory;
            see `attention_factory`.
        shared_key_dim: Total query/key width; `None` means `hidden_dim` (no
            compression). The shared width of collaborative heads, or with
            `"concatenate"` the summed width of the heads (`shared_key_dim //
            num_heads` each, values keep `key_dim`; a multiple of
            `num_heads`).
        key_dim: Per-head key size; defaults to `hidden_dim // num_heads`.
        dropout: Dropout after the attention and the feed-forward network.
        attention_dropout: Dropout on the attention weights; defaults to
            `dropout`.
        activation: Feed-forward activation: `"relu"`, `"gelu"` or
            `"gelu_approximate"`.
        layer_norm_epsilon: Epsilon of the layer normalizations.
        normalize_first: `True` for pre-norm (ViT), `False` for post-norm
            (BERT, the original Transformer).
        kernel_initializer: Initializer of all kernels.
        bias_initializer: Initializer of all biases.
        attention_kwargs: Extra keyword arguments for the attention layer
            (`{"use_bias": False}`: no attention biases).
        use_feedforward_bias: Whether the feed-forward dense layers have
            biases.
        **kwargs: Base layer keyword arguments (`name`, `dtype`).

    Call arguments:
        inputs: Tensor of shape `(batch, length, hidden_dim)`.
        padding_mask: Optional `(batch, length)` mask, nonzero on real
            tokens. Padded keys get no attention; padded positions' outputs
            are meaningless. Falls back to the inputs' Keras mask.
        attention_mask: Optional `(batch, length, length)` boolean mask.
        training: Whether dropout is active.

    Returns:
        Tensor of shape `(batch, length, hidden_dim)`.

    Example:

    ```python
    block = TransformerEncoderBlock(num_heads=4, intermediate_dim=128,
                                    attention="collaborative",
                                    shared_key_dim=32)
    y = block(keras.random.normal((2, 10, 64)))  # (2, 10, 64)
    ```
    """

    def __init__(self, num_heads, intermediate_dim, **kwargs):
        super().__init__(num_heads, intermediate_dim, **kwargs)
        self.supports_masking = True

    def build(self, inputs_shape):
        self._self_attention_layer = make_attention(
            self.attention,
            num_heads=self.num_heads,
            key_dim=self._head_size(inputs_shape[-1]),
            shared_key_dim=self.shared_key_dim,
            dropout=self._attention_dropout_rate(),
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            attention_kwargs=self.attention_kwargs,
            dtype=self.dtype_policy,
            name="self_attention_layer",
        )
        self._self_attention_layer.build(inputs_shape, inputs_shape)
        self._self_attention_layer_norm = self._layer_norm(
            "self_attention_layer_norm", inputs_shape
        )
        self._self_attention_dropout = self._dropout("self_attention_dropout")
        self._build_feedforward(inputs_shape)

    @property
    def self_attention_layer(self):
        return self._self_attention_layer

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        training=None,
        mask=None,
    ):
        if padding_mask is None:
            padding_mask = mask
        mask = padding_attention_mask(padding_mask, attention_mask)  # (B, 1|T, S)

        # Self-attention.
        x = inputs  # (batch, length, hidden)
        residual = x
        if self.normalize_first:
            x = self._self_attention_layer_norm(x)
        mask = mask_for_attention(
            self._self_attention_layer, mask, ops.shape(x)[1]
        )
        x = self._self_attention_layer(
            x, x, attention_mask=mask, training=training
        )
        x = self._self_attention_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self._self_attention_layer_norm(x)

        return self._feedforward(x, training=training)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape
