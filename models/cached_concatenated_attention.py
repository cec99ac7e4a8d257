"""Concatenated heads with a decoding cache whose keys and values may differ in size."""

import keras
from keras import ops

from .concatenated_attention import ConcatenatedAttention


@keras.saving.register_keras_serializable(package="collab_keras")
class CachedConcatenatedAttention(ConcatenatedAttention):
    """`ConcatenatedAttention` with a decoding cache that holds
    keys and values separately, so that their sizes may differ.

    keras-hub's `CachedMultiHeadAttention` stacks keys with values in one
    `(B, 2, S, N, H)` tensor, so it needs `key_dim == value_dim`. The zoo's
    decoders build this layer for `attention="concatenate"` with a reduced
    `shared_key_dim` (the paper's concatenated baseline at a reduced key
    size: `key_dim = shared_key_dim // num_heads` query/key dimensions per
    head, values of the full head size). Its weights, and its output on
    every path, are those of `keras.layers.MultiHeadAttention`; only the
    cache differs: a dict

    - `"key"`: `(B, S, num_heads, key_dim)`,
    - `"value"`: `(B, S, num_heads, value_dim)`,

    that is `num_heads * (key_dim + value_dim)` numbers per position.

    The layer runs in the three modes of keras-hub's cached layer: no cache
    (ordinary attention over `value`/`key`); a static cache
    (`cache_update_index=None`: the cached keys and values are used and the
    `key`/`value` inputs are ignored, decoder cross-attention); an updated
    cache (the projections of the `value`/`key` inputs are first written
    into the cache at `cache_update_index`, decoder self-attention).

    It takes the constructor arguments of `keras.layers.MultiHeadAttention`
    (`num_heads`, `key_dim`, `value_dim`, ...).

    Call arguments:
        query: Query tensor of shape `(B, T, dim)`.
        value: Value tensor of shape `(B, S, dim)`; with an updated cache,
            the new positions written at `cache_update_index`.
        key: Optional key tensor of shape `(B, S, dim)`. Defaults to `value`.
        attention_mask: Optional boolean mask of shape `(B, T, S)`, `S` the
            cache length when a cache is given.
        cache: Optional dict with `"key"` and `"value"` (see above);
            `initial_cache` and `compute_cache` make one.
        cache_update_index: Optional int or int tensor: where to write the
            new positions into `cache`. `None` leaves the cache unchanged.
        return_attention_scores: Whether to also return the weights.
        training: Whether dropout is active.

    Returns:
        `attention_output` of shape `(B, T, dim)`, followed by the attention
        weights when `return_attention_scores`, followed by the updated cache
        when `cache` is given.

    Example:

    ```python
    layer = CachedConcatenatedAttention(num_heads=4, key_dim=4, value_dim=16)
    x = keras.random.normal((2, 5, 64))
    cache = layer.initial_cache(batch_size=2, max_length=5)
    for i in range(5):
        mask = keras.ops.arange(5)[None, None, :] <= i  # (1, 1, S)
        y, cache = layer(x[:, i:i + 1], x[:, i:i + 1], attention_mask=mask,
                         cache=cache, cache_update_index=i)
    ```
    """

    def call(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        return_attention_scores=False,
        training=None,
    ):
        if cache is None and cache_update_index is not None:
            raise ValueError(
                "`cache_update_index` should not be set if `cache` is `None`. "
                f"Received: cache_update_index={cache_update_index}"
            )
        query = self._query_dense(query)  # (B, T, N, key_dim)
        if cache is None:
            update = self.compute_cache(value, key)
            key, value = update["key"], update["value"]
        elif cache_update_index is None:  # static cache
            key, value = cache["key"], cache["value"]
        else:
            update = self.compute_cache(value, key)
            start = [0, cache_update_index, 0, 0]
            key = ops.slice_update(cache["key"], start, update["key"])
            value = ops.slice_update(cache["value"], start, update["value"])
            cache = {"key": key, "value": value}
        attention_output, attention_scores = self._compute_attention(
            query=query,  # (B, T, N, key_dim)
            key=key,  # (B, S, N, key_dim)
            value=value,  # (B, S, N, value_dim)
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
            training=training,
        )
        attention_output = self._output_dense(attention_output)  # (B, T, dim)
        outputs = (attention_output,)
        if return_attention_scores:
            outputs += (attention_scores,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_cache(self, value, key=None):
        """The cache entries of a key/value sequence `(B, S, dim)`: a dict of
        `"key"` `(B, S, N, key_dim)` and `"value"` `(B, S, N, value_dim)`."""
        key = value if key is None else key
        return {"key": self._key_dense(key), "value": self._value_dense(value)}

    def initial_cache(self, batch_size, max_length, dtype=None):
        """An all-zero cache for `max_length` positions."""
        dtype = dtype or self.compute_dtype
        shape = (batch_size, max_length, self.num_heads)
        return {
            "key": ops.zeros(shape + (self.key_dim,), dtype=dtype),
            "value": ops.zeros(shape + (self.value_dim,), dtype=dtype),
        }
