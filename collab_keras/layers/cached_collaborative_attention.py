"""Collaborative attention with a key/value cache for autoregressive decoding."""

import numbers

import numpy as np
from keras import backend
from keras import ops
from keras.saving import register_keras_serializable

from collab_keras.argument_checks import check_integer
from collab_keras.layers.collaborative_attention import CollaborativeAttention


@register_keras_serializable(package="collab_keras")
class CachedCollaborativeAttention(CollaborativeAttention):
    """Collaborative attention with a decoding cache.

    The collaborative counterpart of `keras_hub.layers.CachedMultiHeadAttention`.
    All heads share one key projection, so the cache holds the one shared key
    per position instead of a key per head. Per position the cache stores:

    - `"key"`: the shared key `y Wk`, `shared_key_dim` numbers;
    - `"content"`: the content-bias term `y . content_bias[:, h]`, one number
      per head (absent when `use_bias=False`);
    - `"value"`: the per-head values, `num_heads * value_dim` numbers.

    That is `K + N + N * V` numbers per position and layer, against
    `2 * N * key_dim` for concatenated heads.

    The layer runs in one of three modes, as the keras-hub layer does:

    - no cache: ordinary collaborative attention;
    - static cache (`cache_update_index=None`): the cached keys, content and
      values are used and the `key`/`value` inputs are ignored (decoder
      cross-attention, computed once per source sequence);
    - updated cache: the keys, content and values of the `value`/`key`
      inputs are written into the cache at `cache_update_index` first
      (decoder self-attention, one new position per step).

    Args:
        **kwargs: The arguments of `CollaborativeAttention`.

    Call arguments:
        query: Query tensor of shape `(B, T, dim)`.
        value: Value tensor of shape `(B, S*, dim)`: with an updated cache,
            the `S*` new positions that are written at `cache_update_index`.
        key: Optional key tensor of shape `(B, S*, dim)`. Defaults to `value`.
        attention_mask: Optional boolean mask of shape `(B, T, S)` (or
            `(B, 1|num_heads, T, S)`), `S` the cache length when a cache is
            given. With a cache, `query_mask`, `value_mask` and `key_mask`
            are not used (as in keras-hub's `CachedMultiHeadAttention`);
            `sliding_window` counts query `i` at cache position
            `cache_update_index + i`.
        cache: Optional dict with `"key"` `(B, S, shared_key_dim)`,
            `"value"` `(B, S, num_heads, value_dim)` and, when `use_bias`,
            `"content"` `(B, S, num_heads)`; see `initial_cache` and
            `compute_cache`.
        cache_update_index: Optional int or int tensor: where to write the
            new positions into `cache`. `None` leaves the cache unchanged.
        return_attention_scores: Whether to also return the weights.
        training: Whether dropout is active.
        use_causal_mask: Whether to add a causal mask (only without cache).

    Returns:
        `attention_output` of shape `(B, T, E)`, followed by the attention
        weights when `return_attention_scores`, followed by the updated cache
        when `cache` is given.

    Example:

    ```python
    layer = CachedCollaborativeAttention(num_heads=4, key_dim=16,
                                         shared_key_dim=32)
    x = keras.random.normal((2, 5, 64))
    cache = layer.initial_cache(batch_size=2, max_length=5)
    for i in range(5):
        mask = ops.arange(5)[None, None, :] <= i  # (1, 1, S)
        y, cache = layer(x[:, i:i + 1], x[:, i:i + 1], attention_mask=mask,
                         cache=cache, cache_update_index=i)
    ```
    """

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        if cache is None:
            if cache_update_index is not None:
                raise ValueError(
                    "`cache_update_index` should not be set if `cache` is "
                    f"`None`. Received: cache_update_index={cache_update_index}"
                )
            return super().call(
                query,
                value,
                key=key,
                query_mask=query_mask,
                value_mask=value_mask,
                key_mask=key_mask,
                attention_mask=attention_mask,
                return_attention_scores=return_attention_scores,
                training=training,
                use_causal_mask=use_causal_mask,
            )
        if use_causal_mask:
            raise ValueError(
                "With a cache, pass the causal mask as `attention_mask`. "
                "Received: use_causal_mask=True"
            )
        if key is None:
            key = value
        self._check_cache(cache, query)
        start = 0
        if cache_update_index is None:
            self._check_inputs(query)  # `value` and `key` are not used
        else:
            self._check_inputs(query, value, key)
            start = self._check_update_index(cache_update_index, cache, value)
            update = self.compute_cache(value, key)
            cache = {
                name: ops.slice_update(
                    cache[name],
                    [0, start] + [0] * (len(cache[name].shape) - 2),
                    ops.cast(update[name], cache[name].dtype),
                )
                for name in update
            }
        if attention_mask is not None:
            self._check_mask_shape(attention_mask, query, cache["key"])
            attention_mask = ops.cast(attention_mask, "bool")
        if self.sliding_window is not None:
            # Query i sits at position start + i of the cache.
            rows = ops.arange(ops.shape(query)[1], dtype="int32") + start
            columns = ops.arange(ops.shape(cache["key"])[1], dtype="int32")
            distance = ops.abs(rows[:, None] - columns[None, :])
            window = ops.less(distance, self.sliding_window)[None]  # (1, T, S)
            attention_mask = (
                window
                if attention_mask is None
                else self._and_masks(attention_mask, window)
            )
        gate = None
        if self._gate_dense is not None:
            gate = self._gate_dense(query)  # (B, T, N, V)
        query = self._query_dense(query)  # (B, T, K)
        if self._use_decode_core(query, return_attention_scores, training):
            attention_output = self._compute_decode_attention(
                query,
                cache["key"],  # (B, S, K)
                cache["value"],  # (B, S, N, V)
                cache.get("content"),  # (B, S, N)
                attention_mask,
            )
        else:
            attention_output, attention_scores = (
                self._compute_collaborative_attention(
                    query,
                    cache["key"],
                    cache["value"],
                    cache.get("content"),
                    attention_mask,
                    training=training,
                    return_attention_scores=return_attention_scores,
                )
            )
        if gate is not None:
            attention_output = attention_output * gate  # (B, T, N, V)
        attention_output = self._output_dense(attention_output)  # (B, T, E)
        if return_attention_scores:
            return attention_output, attention_scores, cache
        return attention_output, cache

    # Query rows (positions x heads) up to which a step over the cache takes
    # `_compute_decode_attention` (docs/performance.md, decoding).
    _DECODE_MAX_ROWS = 64

    def _use_decode_core(self, query, return_attention_scores, training):
        """Whether this step takes `_compute_decode_attention`: a few query
        positions, no scores returned, no fused kernel asked for, no
        dropout at work, one attention axis."""
        rows = query.shape[1]
        return (
            rows is not None
            and rows * self.num_heads <= self._DECODE_MAX_ROWS
            and not return_attention_scores
            and not self.flash_attention
            and (self.dropout == 0 or not training)
            and len(self._attention_axes) == 1
        )

    def _compute_decode_attention(self, query, key, value, content, mask):
        """Attention of a few query positions over the cache.

        The explicit path's arithmetic (same dtypes, same softmax), with
        both products laid out so that they read the cache where it lies:
        scores as one matrix product per sequence, `(T*N, K) x (S, K)^T`,
        and values as `(T*N, S) x (S, N*V)`, which gives every head the
        values of every head and keeps each head's own block. The per-head
        product `(B, N, T, S) x (B, S, N, V)` has the heads as a second
        batch axis inside the value cache: torch's einsum copies the whole
        value cache to `(B, N, S, V)` for it at every step, and XLA on GPUs
        runs it slower than these two plain products (docs/performance.md,
        decoding step). The `N` times larger second product costs `T * N`
        FLOPs per byte of cache, far below what a GPU does per byte read.

        Args:
            query: Projected shared query `(B, T, K)`.
            key: Cached shared key `(B, S, K)`.
            value: Cached values `(B, S, N, V)`.
            content: Cached content term `(B, S, N)`, or `None`.
            mask: Boolean mask broadcastable to `(B, N, T, S)`, or `None`.

        Returns:
            The per-head outputs `(B, T, N, V)`.
        """
        rows, heads, width = query.shape[1], self.num_heads, self.value_dim
        length = ops.shape(key)[1]
        query = ops.multiply(query, ops.cast(self._scale, query.dtype))
        mixing = ops.cast(self.mixing, query.dtype)
        mixed = ops.einsum("btk,nk->btnk", query, mixing)  # (B, T, N, K)
        mixed = ops.reshape(mixed, (-1, rows * heads, self.shared_key_dim))
        scores = ops.einsum("bxk,bsk->bxs", mixed, key)  # (B, T*N, S)
        scores = ops.reshape(scores, (-1, rows, heads, length))
        scores = ops.transpose(scores, (0, 2, 1, 3))  # (B, N, T, S)
        if content is not None:
            content = ops.multiply(
                content, ops.cast(self._scale, content.dtype)
            )
            content = ops.transpose(content, (0, 2, 1))  # (B, N, S)
            scores = scores + ops.expand_dims(content, 2)  # (B, N, T, S)
        weights = self._masked_softmax(scores, mask)  # (B, N, T, S)
        weights = ops.transpose(weights, (0, 2, 1, 3))  # (B, T, N, S)
        weights = ops.reshape(weights, (-1, rows * heads, length))
        values = ops.reshape(value, (-1, length, heads * width))  # (B, S, N*V)
        every = ops.einsum("bxs,bsm->bxm", weights, values)  # (B, T*N, N*V)
        every = ops.reshape(every, (-1, rows, heads * heads, width))
        # Each head's own block, taken (not masked by multiplying with 0,
        # which would carry another head's NaN or Inf into this one).
        own = [head * (heads + 1) for head in range(heads)]
        return ops.take(every, own, axis=2)  # (B, T, N, V)

    def compute_cache(self, value, key=None):
        """The cache entries of a key/value sequence.

        Args:
            value: Tensor of shape `(B, S, dim)`.
            key: Optional tensor of shape `(B, S, dim)`; defaults to `value`.

        Returns:
            A dict with `"key"` `(B, S, K)`, `"value"` `(B, S, N, V)` and,
            when `use_bias`, `"content"` `(B, S, N)`.
        """
        if key is None:
            key = value
        cache = {
            "key": self._key_dense(key),  # (B, S, K)
            "value": self._value_dense(value),  # (B, S, N, V)
        }
        if self.use_bias:
            cache["content"] = self._content_scores(key)  # (B, S, N)
        return cache

    def initial_cache(self, batch_size, max_length, dtype=None):
        """An all-zero cache for `max_length` positions.

        Args:
            batch_size: Number of sequences (a Python integer, or a scalar
                tensor inside a traced function).
            max_length: Number of positions the cache can hold.
            dtype: Cache dtype; defaults to the layer's compute dtype.

        Returns:
            A dict of zero tensors, shaped as `compute_cache` returns.
        """
        # A tensor size is traced (e.g. a served variable batch): unchecked.
        if not ops.is_tensor(batch_size):
            check_integer("batch_size", batch_size, minimum=0)
        if not ops.is_tensor(max_length):
            check_integer("max_length", max_length)
        dtype = dtype or self.compute_dtype
        cache = {
            "key": ops.zeros(
                (batch_size, max_length, self.shared_key_dim), dtype=dtype
            ),
            "value": ops.zeros(
                (batch_size, max_length, self.num_heads, self.value_dim),
                dtype=dtype,
            ),
        }
        if self.use_bias:
            cache["content"] = ops.zeros(
                (batch_size, max_length, self.num_heads), dtype=dtype
            )
        return cache

    def cache_size_per_position(self):
        """Numbers cached per position: `K + N + N * V` (`K + N * V` without
        bias)."""
        size = self.shared_key_dim + self.num_heads * self.value_dim
        return size + (self.num_heads if self.use_bias else 0)

    def _check_cache(self, cache, query):
        expected = {"key", "value"} | ({"content"} if self.use_bias else set())
        if not isinstance(cache, dict) or set(cache) != expected:
            keys = sorted(cache) if isinstance(cache, dict) else type(cache)
            raise ValueError(
                f"`cache` must be a dict with keys {sorted(expected)}. "
                f"Received: cache with keys {keys}"
            )
        batch, length = query.shape[0], cache["key"].shape[1]
        sizes = {
            "key": (self.shared_key_dim,),
            "value": (self.num_heads, self.value_dim),
            "content": (self.num_heads,),
        }
        for name in [n for n in ("key", "value", "content") if n in cache]:
            shape = tuple(cache[name].shape)
            ok = (
                shape[2:] == sizes[name]
                and shape[1] == length
                and (batch is None or shape[0] in (None, batch))
            )
            if not ok:
                want = ("B", "S") + sizes[name]
                raise ValueError(
                    f'`cache["{name}"]` must have the shape {want} with '
                    f"B={batch}, one length S for all entries. Received: "
                    f'cache["{name}"].shape={shape}'
                )

    def _check_update_index(self, cache_update_index, cache, value):
        """`cache_update_index` as an int (or int32 tensor), checked."""
        index = cache_update_index
        if isinstance(index, (bool, np.bool_)) or isinstance(
            index, (float, np.floating)
        ):
            raise ValueError(
                "`cache_update_index` must be an integer or an integer "
                f"tensor. Received: cache_update_index={index!r}"
            )
        if isinstance(index, numbers.Integral):
            index = int(index)  # a plain int keeps torch fast
            length, new = cache["key"].shape[1], value.shape[1]
            if length is not None and new is not None and not (
                0 <= index <= length - new
            ):
                raise ValueError(
                    f"`cache_update_index` must be in [0, {length - new}] "
                    f"to write {new} positions into a cache of length "
                    f"{length}. Received: cache_update_index={index}"
                )
            return index
        dtype = backend.standardize_dtype(getattr(index, "dtype", "float32"))
        if "int" not in dtype:
            raise ValueError(
                "`cache_update_index` must be an integer or an integer "
                f"tensor. Received: cache_update_index={index!r}"
            )
        return ops.cast(index, "int32")
