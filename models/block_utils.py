"""Helpers shared by the transformer blocks: activations and masks."""

import keras
from keras import ops

# keras-hub's registered tanh-approximated GELU (the BERT activation); its
# public API has no equivalent (`keras.activations.gelu` takes
# `approximate=` only as an argument).
from keras_hub.src.utils.keras_utils import gelu_approximate

from collab_keras.argument_checks import check_bool
from collab_keras.argument_checks import check_integer
from collab_keras.argument_checks import check_rate
from collab_keras.layers import CollaborativeAttention

from .attention_factory import check_attention
from .attention_factory import check_attention_kwargs
from .attention_factory import clone_initializer
from .attention_factory import serialize_attention


def get_activation(name):
    """The feed-forward activation called `name`: any Keras activation name
    (`"relu"`, `"gelu"`, ...) or `"gelu_approximate"`."""
    if name == "gelu_approximate":
        return gelu_approximate
    try:
        if not isinstance(name, str):
            raise ValueError(name)
        return keras.activations.get(name)
    except ValueError:
        raise ValueError(
            "Argument `activation` must be the name of a Keras activation "
            "or 'gelu_approximate'. "
            f"Received: activation={name!r}"
        ) from None


def padding_attention_mask(padding_mask, attention_mask=None):
    """Merges a key padding mask `(B, S)` with an attention mask `(B, T, S)`.

    Returns a boolean mask broadcastable to `(B, T, S)`, or `None`.
    """
    mask = None
    if padding_mask is not None:
        if len(padding_mask.shape) != 2:
            raise ValueError(
                "`padding_mask` must have shape (batch, length). "
                f"Received: padding_mask.shape={tuple(padding_mask.shape)}"
            )
        mask = ops.expand_dims(ops.cast(padding_mask, "bool"), 1)  # (B, 1, S)
    if attention_mask is not None:
        if len(attention_mask.shape) != 3:
            raise ValueError(
                "`attention_mask` must have shape (batch, query length, key "
                "length). Received: "
                f"attention_mask.shape={tuple(attention_mask.shape)}"
            )
        attention_mask = ops.cast(attention_mask, "bool")  # (B, T, S)
        if mask is None:
            mask = attention_mask
        else:
            mask = ops.logical_and(mask, attention_mask)
    return mask


def mask_for_attention(attention_layer, mask, query_length):
    """`mask` in the form that `attention_layer`'s fused path takes.

    `keras.layers.MultiHeadAttention` hands its mask to the fused kernel as
    an additive bias, and cuDNN takes only a bias that spans the query axis:
    a key padding mask `(B, 1, S)` turns flash attention off ("Bias must
    have same seq length as QKV") and the layer runs the unfused einsums.
    For that layer a `(B, 1, S)` mask is broadcast to `(B, T, S)`; other
    layers (`CollaborativeAttention`, whose kernels read a key padding mask
    as it is) get `mask` unchanged. The mask means the same either way.
    """
    if (
        mask is None
        or not isinstance(attention_layer, keras.layers.MultiHeadAttention)
        or mask.shape[1] != 1
    ):
        return mask
    batch, _, key_length = ops.shape(mask)
    return ops.broadcast_to(mask, (batch, query_length, key_length))  # (B, T, S)


def causal_attention_arguments(attention_layer, padding_mask, length):
    """The masks of a causal self-attention over `length` positions, as
    keyword arguments in the form that `attention_layer`'s fused path takes.

    `CollaborativeAttention` (and its cached variant) gets
    `use_causal_mask=True` next to the key padding mask `(B, 1, S)`: its
    fused kernels mask causally inside and read the padding per key, no
    `(T, S)` mask is built. Other layers (`keras.layers.MultiHeadAttention`
    and keras-hub's `CachedMultiHeadAttention`, whose call takes no
    `use_causal_mask`) get the causal and padding masks merged, `(B|1, T,
    T)`: a mask spanning the query axis, the bias cuDNN takes. The masks
    mean the same either way.

    Args:
        attention_layer: The self-attention layer.
        padding_mask: `(B, T)` mask of real positions, or `None`.
        length: The sequence length `T`.

    Returns:
        A dict of `attention_mask` (and `use_causal_mask`).
    """
    padding = padding_attention_mask(padding_mask)  # (B, 1, S) or None
    if isinstance(attention_layer, CollaborativeAttention):
        return {"attention_mask": padding, "use_causal_mask": True}
    mask = causal_mask(length, length)  # (1, T, T)
    if padding is not None:
        mask = ops.logical_and(mask, padding)  # (B, T, T)
    return {"attention_mask": mask}


def causal_mask(query_length, key_length, start_index=0):
    """`(1, T, S)` boolean mask: query `i` (at `start_index + i`) sees keys
    `j <= start_index + i`."""
    rows = ops.arange(query_length, dtype="int32") + ops.cast(
        start_index, "int32"
    )
    columns = ops.arange(key_length, dtype="int32")
    mask = ops.greater_equal(rows[:, None], columns[None, :])  # (T, S)
    return ops.expand_dims(mask, 0)


class BlockBase(keras.layers.Layer):
    """Arguments, sublayer helpers and config shared by the two blocks."""

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        attention="concatenate",
        shared_key_dim=None,
        key_dim=None,
        dropout=0.0,
        attention_dropout=None,
        activation="relu",
        layer_norm_epsilon=1e-5,
        normalize_first=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        attention_kwargs=None,
        use_feedforward_bias=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_integer("num_heads", num_heads)
        self.attention = check_attention(attention, shared_key_dim, num_heads)
        get_activation(activation)
        self.intermediate_dim = check_integer(
            "intermediate_dim", intermediate_dim
        )
        self.shared_key_dim = check_integer(
            "shared_key_dim", shared_key_dim, allow_none=True
        )
        self.key_dim = check_integer("key_dim", key_dim, allow_none=True)
        self.dropout = check_rate("dropout", dropout)
        self.attention_dropout = check_rate(
            "attention_dropout", attention_dropout, allow_none=True
        )
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.attention_kwargs = check_attention_kwargs(attention_kwargs)
        self.use_feedforward_bias = check_bool(
            "use_feedforward_bias", use_feedforward_bias
        )

    def _head_size(self, hidden_dim):
        key_dim = self.key_dim or hidden_dim // self.num_heads
        if key_dim == 0:
            raise ValueError(
                "`hidden_dim` must be at least `num_heads`. Received: "
                f"hidden_dim={hidden_dim}, num_heads={self.num_heads}"
            )
        return key_dim

    def _attention_dropout_rate(self):
        if self.attention_dropout is None:
            return self.dropout
        return self.attention_dropout

    def _layer_norm(self, name, shape):
        layer = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )
        layer.build(shape)
        return layer

    def _dropout(self, name):
        return keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name=name
        )

    def _dense(self, units, activation, name, shape, use_bias=True):
        layer = keras.layers.Dense(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )
        layer.build(shape)
        return layer

    def _build_feedforward(self, shape):
        """Feed-forward sublayers for inputs of shape `(B, T, hidden)`."""
        self._feedforward_layer_norm = self._layer_norm(
            "feedforward_layer_norm", shape
        )
        self._feedforward_intermediate_dense = self._dense(
            self.intermediate_dim,
            get_activation(self.activation),
            "feedforward_intermediate_dense",
            shape,
            use_bias=self.use_feedforward_bias,
        )
        self._feedforward_output_dense = self._dense(
            shape[-1],
            None,
            "feedforward_output_dense",
            tuple(shape[:-1]) + (self.intermediate_dim,),
            use_bias=self.use_feedforward_bias,
        )
        self._feedforward_dropout = self._dropout("feedforward_dropout")

    def _feedforward(self, x, training=None):
        """Residual feed-forward sub-block, pre- or post-norm."""
        residual = x
        if self.normalize_first:
            x = self._feedforward_layer_norm(x)
        x = self._feedforward_intermediate_dense(x)  # (B, T, intermediate)
        x = self._feedforward_output_dense(x)  # (B, T, hidden)
        x = self._feedforward_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self._feedforward_layer_norm(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "attention": serialize_attention(self.attention),
                "shared_key_dim": self.shared_key_dim,
                "key_dim": self.key_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "activation": self.activation,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "normalize_first": self.normalize_first,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "attention_kwargs": self.attention_kwargs,
                "use_feedforward_bias": self.use_feedforward_bias,
            }
        )
        return config
