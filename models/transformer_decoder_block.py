"""Transformer decoder block: causal self-attention, cross-attention, FFN."""

import keras
from keras import ops

from .attention_factory import check_attention
from .attention_factory import make_attention
from .attention_factory import serialize_attention
from .block_utils import BlockBase
from .block_utils import causal_attention_arguments
from .block_utils import causal_mask
from .block_utils import mask_for_attention
from .block_utils import padding_attention_mask


@keras.saving.register_keras_serializable(package="collab_keras")
class TransformerDecoderBlock(BlockBase):
    """Decoder block with a decoding cache, post- or pre-norm.

    Causal self-attention over the target, cross-attention to the encoder
    output, then a feed-forward network, each with a residual connection.
    Sublayers are named as in `keras_hub.layers.TransformerDecoder`. Both
    attentions are built cached (`keras_hub.layers.CachedMultiHeadAttention`,
    `CachedConcatenatedAttention` for concatenated heads at a reduced
    `shared_key_dim`, or `CachedCollaborativeAttention`), so one block serves
    training (whole sequences) and incremental decoding (one position per
    step).

    Caches. `initial_self_attention_cache` gives the zero self-attention
    cache; `compute_cross_attention_cache` projects an encoder output once.
    Concatenated heads cache keys and values per head, `(B, 2, S, N, H)`:
    `2 * hidden_dim` numbers per position; at a reduced key size a dict of
    keys `(B, S, N, shared_key_dim / N)` and values `(B, S, N, H)`:
    `shared_key_dim + hidden_dim` numbers. Collaborative heads cache the
    shared key, the content term and the values (a dict): `shared_key_dim +
    num_heads + hidden_dim` numbers per position.

    Args:
        Those of `TransformerEncoderBlock`, and:
        cross_attention: Attention of the cross-attention layer: `None` (the
            default) uses `attention`; `"concatenate"` keeps ordinary heads
            there while the self-attention is collaborative.

    Call arguments:
        decoder_sequence: Tensor of shape `(B, T, hidden_dim)`.
        encoder_sequence: Tensor of shape `(B, S, hidden_dim)`; ignored when
            `cross_attention_cache` is given.
        decoder_padding_mask: Optional `(B, T)` mask of real target tokens
            (ignored with a self-attention cache).
        encoder_padding_mask: Optional `(B, S)` mask of real source tokens.
        self_attention_cache: Optional self-attention cache holding
            `max_length` positions.
        self_attention_cache_update_index: Position of the first query in
            the cache (the new positions are written there).
        cross_attention_cache: Optional cross-attention cache.
        training: Whether dropout is active.

    Returns:
        `(B, T, hidden_dim)`; with caches, the tuple `(outputs,
        self_attention_cache, cross_attention_cache)`.

    Example:

    ```python
    block = TransformerDecoderBlock(num_heads=4, intermediate_dim=128,
                                    attention="collaborative",
                                    shared_key_dim=32)
    y = block(keras.random.normal((2, 7, 64)), keras.random.normal((2, 9, 64)))
    ```
    """

    def __init__(
        self, num_heads, intermediate_dim, cross_attention=None, **kwargs
    ):
        super().__init__(num_heads, intermediate_dim, **kwargs)
        if cross_attention is not None:
            try:
                cross_attention = check_attention(cross_attention)
            except ValueError:
                raise ValueError(
                    "Argument `cross_attention` must be None (follow "
                    "`attention`), 'concatenate', 'collaborative' or a layer "
                    f"factory. Received: cross_attention={cross_attention!r}"
                ) from None
        self.cross_attention = cross_attention

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        if encoder_sequence_shape is None:
            encoder_sequence_shape = decoder_sequence_shape
        cross_attention = self.cross_attention or self.attention
        for prefix, attention, value_shape in (
            ("self", self.attention, decoder_sequence_shape),
            ("cross", cross_attention, encoder_sequence_shape),
        ):
            # `shared_key_dim` and `attention_kwargs` belong to `attention`.
            shared_key_dim = self.shared_key_dim
            attention_kwargs = self.attention_kwargs
            if attention != self.attention:
                shared_key_dim = attention_kwargs = None
            layer = make_attention(
                attention,
                num_heads=self.num_heads,
                key_dim=self._head_size(decoder_sequence_shape[-1]),
                shared_key_dim=shared_key_dim,
                dropout=self._attention_dropout_rate(),
                cached=True,
                kernel_initializer=self.kernel_initializer,
                bias_initializer=self.bias_initializer,
                attention_kwargs=attention_kwargs,
                dtype=self.dtype_policy,
                name=f"{prefix}_attention",
            )
            layer.build(decoder_sequence_shape, value_shape)
            setattr(self, f"_{prefix}_attention", layer)
            norm = self._layer_norm(
                f"{prefix}_attention_layer_norm", decoder_sequence_shape
            )
            setattr(self, f"_{prefix}_attention_layer_norm", norm)
            dropout = self._dropout(f"{prefix}_attention_dropout")
            setattr(self, f"_{prefix}_attention_dropout", dropout)
        self._build_feedforward(decoder_sequence_shape)

    @property
    def self_attention_layer(self):
        return self._self_attention

    @property
    def cross_attention_layer(self):
        return self._cross_attention

    def initial_self_attention_cache(self, batch_size, max_length):
        """Zero self-attention cache for `max_length` target positions."""
        layer = self._self_attention
        if hasattr(layer, "initial_cache"):  # a dict cache
            return layer.initial_cache(batch_size, max_length)
        shape = (batch_size, 2, max_length, layer.num_heads, layer.key_dim)
        return ops.zeros(shape, dtype=self.compute_dtype)  # (B, 2, S, N, H)

    def compute_cross_attention_cache(self, encoder_sequence):
        """Cross-attention keys and values of an encoder output, once."""
        layer = self._cross_attention
        if hasattr(layer, "compute_cache"):  # a dict cache
            return layer.compute_cache(encoder_sequence)
        key = layer._key_dense(encoder_sequence)  # (B, S, N, H)
        value = layer._value_dense(encoder_sequence)  # (B, S, N, H)
        return ops.stack((key, value), axis=1)  # (B, 2, S, N, H)

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        training=None,
    ):
        use_cache = self_attention_cache is not None
        if use_cache != (cross_attention_cache is not None):
            raise ValueError(
                "Pass both `self_attention_cache` and `cross_attention_cache` "
                "or neither. Received: "
                f"self_attention_cache is None: {self_attention_cache is None}"
                ", cross_attention_cache is None: "
                f"{cross_attention_cache is None}"
            )
        if not use_cache and encoder_sequence is None:
            raise ValueError(
                "`encoder_sequence` is required without caches. Received: "
                "encoder_sequence=None"
            )
        query_length = ops.shape(decoder_sequence)[1]

        # Causal self-attention.
        if use_cache:
            if isinstance(self_attention_cache, dict):  # {"key": (B, S, ...), ...}
                key_length = ops.shape(self_attention_cache["key"])[1]
            else:  # (B, 2, S, N, H)
                key_length = ops.shape(self_attention_cache)[2]
            index = self_attention_cache_update_index
            index = 0 if index is None else index
            arguments = {
                "attention_mask": causal_mask(query_length, key_length, index),
                "cache": self_attention_cache,
                "cache_update_index": self_attention_cache_update_index,
            }
        else:
            arguments = causal_attention_arguments(
                self._self_attention, decoder_padding_mask, query_length
            )
        x = decoder_sequence  # (batch, target length, hidden)
        residual = x
        if self.normalize_first:
            x = self._self_attention_layer_norm(x)
        x = self._self_attention(x, x, training=training, **arguments)
        if use_cache:
            x, self_attention_cache = x
        x = self._self_attention_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self._self_attention_layer_norm(x)

        # Cross-attention to the encoder output.
        cross_mask = mask_for_attention(
            self._cross_attention,
            padding_attention_mask(encoder_padding_mask),  # (B, 1, S)
            query_length,
        )
        residual = x
        if self.normalize_first:
            x = self._cross_attention_layer_norm(x)
        if use_cache:
            x, cross_attention_cache = self._cross_attention(
                x,
                x,
                attention_mask=cross_mask,
                cache=cross_attention_cache,
                training=training,
            )
        else:
            x = self._cross_attention(
                x,
                encoder_sequence,
                attention_mask=cross_mask,
                training=training,
            )
        x = self._cross_attention_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self._cross_attention_layer_norm(x)

        x = self._feedforward(x, training=training)
        if use_cache:
            return x, self_attention_cache, cross_attention_cache
        return x

    def compute_output_shape(self, decoder_sequence_shape, *args, **kwargs):
        return decoder_sequence_shape

    def get_config(self):
        config = super().get_config()
        config["cross_attention"] = serialize_attention(self.cross_attention)
        return config
