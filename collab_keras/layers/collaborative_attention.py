"""Collaborative multi-head attention (Cordonnier, Loukas, Jaggi, 2020)."""

import math
import numbers
import string

import keras
from keras import backend
from keras import config
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers
from keras.layers import Dropout
from keras.layers import EinsumDense
from keras.layers import Layer
from keras.saving import register_keras_serializable
from keras.src.backend import set_keras_mask

from collab_keras.argument_checks import check_bool
from collab_keras.argument_checks import check_integer
from collab_keras.argument_checks import check_rate
from collab_keras.argument_checks import check_shared_key_dim
from collab_keras.initializers.concatenate_mixing import ConcatenateMixing
from collab_keras.ops.collaborative_dot_product_attention import (
    collaborative_dot_product_attention,
)
from collab_keras.ops.collaborative_dot_product_attention import (
    fused_attention_preferred,
)

# Einsum letters. Lower case letters name the batch and position axes of the
# inputs (`a` is the batch); upper case letters name the other axes:
#   F: input features         K: shared key/query width (`shared_key_dim`)
#   N: attention heads        V: per-head value width (`value_dim`)
#   O, P, ...: output features (one letter per axis of `output_shape`)
_FEATURES, _SHARED, _HEADS, _VALUES = "F", "K", "N", "V"
_OUTPUT_LETTERS = "OPQRSTUWXYZ"


@register_keras_serializable(package="collab_keras")
class CollaborativeAttention(Layer):
    """Collaborative multi-head attention layer.

    Implements "Multi-Head Attention: Collaborate Instead of Concatenate"
    [Cordonnier, Loukas and Jaggi, 2020](https://arxiv.org/abs/2006.16362).
    All heads share one query projection `Wq` and one key projection `Wk` of
    width `shared_key_dim`; head `h` reweights the shared dimensions with its
    own mixing vector `m_h` (a row of the `mixing` matrix):

    ```
    score_h(i, j) = ((x_i Wq) * m_h) . (y_j Wk) + y_j . content_bias[:, h]
    attention_h = softmax(score_h / sqrt(key_dim) + mask)
    output = concat_h(attention_h (y Wv_h + bv_h)) Wo + bo
    ```

    The content bias is the only part of a query/key bias that survives the
    softmax, so the query and key projections have no bias. Values and the
    output projection are those of `keras.layers.MultiHeadAttention`.

    With `shared_key_dim == num_heads * key_dim` and
    `mixing_initializer="concatenate"` the layer computes exactly what
    `keras.layers.MultiHeadAttention` computes; a smaller `shared_key_dim`
    shrinks the query and key projections. The scores are always scaled by
    `1 / sqrt(key_dim)`, the scale of the multi-head layer that the
    collaborative one replaces, whatever `shared_key_dim` is.

    The layer is a drop-in for `keras.layers.MultiHeadAttention` (Keras
    3.15): the same constructor and call arguments, the same masking rules
    (masks combine with logical and; a query row whose keys are all masked
    gets all-zero attention weights, so its output is the output bias:
    finite, on every path), the same sublayer names (`query`, `key`,
    `value`, `gate`, `attention_output`), so that
    `keras.distribution.LayoutMap` rules, LoRA and int8 quantization of the
    projections work unchanged. NaN and Inf in the inputs reach the outputs
    they touch, as in `MultiHeadAttention`. Where it must differ: the
    `query` and `key` kernels are `(dim, shared_key_dim)` instead of
    `(dim, num_heads, key_dim)` and have no bias, two more weights (`mixing`
    and `content_bias`) exist, and the attention core hook is
    `_compute_collaborative_attention` (see docs/layer.md).

    Args:
        num_heads: Number of attention heads.
        key_dim: Per-head query/key size of the multi-head layer this one
            stands for. Sets the score scale `1 / sqrt(key_dim)`, the default
            `shared_key_dim` and the default `value_dim`.
        shared_key_dim: Width of the shared query and key projections
            (D̃_k in the paper). Defaults to `num_heads * key_dim`.
        value_dim: Size of each attention head for value. Defaults to
            `key_dim`.
        dropout: Dropout probability on the attention weights.
        use_bias: Whether the value and output projections have biases and
            the scores have a content bias.
        output_shape: The expected shape of an output tensor, besides the
            batch and sequence dims. If not specified, projects back to the
            query feature dim.
        attention_axes: Axes over which the attention is applied. `None`
            means attention over all axes but batch, heads and features.
        sliding_window: Optional positive integer: each query position
            attends only to key positions within `sliding_window - 1` of
            itself (a symmetric band; with `use_causal_mask=True` the causal
            sliding window). `None` (the default) is full attention.
        mixing_initializer: Initializer of the `(num_heads, shared_key_dim)`
            mixing matrix: `"concatenate"` (the default: block one-hot, each
            head owns a contiguous block of about `shared_key_dim / num_heads`
            shared dimensions; needs `shared_key_dim >= num_heads`) or any
            Keras initializer, e.g. `"random_normal"`.
        flash_attention: `None`, `True` or `False`. `None` takes the fused
            attention core (`collab_keras.ops.collaborative_dot_product_attention`)
            where it applies (no dropout, no attention scores returned, one
            attention axis) and is the faster choice; `True` requires it,
            `False` always computes the scores explicitly. Both are exact.
            `keras.config.enable_flash_attention()` and
            `disable_flash_attention()` set the default.
        kernel_initializer: Initializer for the projection kernels.
        bias_initializer: Initializer for the biases and the content bias.
        kernel_regularizer: Regularizer for the projection kernels.
        bias_regularizer: Regularizer for the biases and the content bias.
        activity_regularizer: Regularizer for the projections' outputs.
        kernel_constraint: Constraint for the projection kernels.
        bias_constraint: Constraint for the biases and the content bias.
        use_gate: Whether to gate the per-head outputs with
            `sigmoid(x Wg + bg)` before the output projection (a `gate`
            projection of the query, as in `MultiHeadAttention`; Gated
            Attention, [Qiu et al., 2025](https://arxiv.org/abs/2505.06708)).
        seed: Optional integer to seed the dropout layer.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        query: Query tensor of shape `(B, T, dim)`.
        value: Value tensor of shape `(B, S, dim)`.
        key: Optional key tensor of shape `(B, S, dim)`. Defaults to `value`.
        query_mask, value_mask, key_mask: Optional boolean masks of shape
            `(B, T)` and `(B, S)`; Keras masks of the inputs are used when
            these are not given.
        attention_mask: Optional boolean mask of shape `(B, T, S)`,
            `(B, 1, T, S)` or per head `(B, num_heads, T, S)`: `True` where
            a query position may attend to a key position. Broadcasts over
            missing batch and head dimensions.
        return_attention_scores: Whether to also return the attention
            weights (not available on the fused path).
        training: Whether dropout is active.
        use_causal_mask: Whether to add a causal mask (decoder
            self-attention). The fused path runs the backend's causal
            kernel without building a `(T, S)` mask, next to any key
            padding mask.

    Returns:
        attention_output: Tensor of shape `(B, T, E)`, where `E` is the
            query's last dimension unless `output_shape` is given.
        attention_scores: (Optional) attention weights of shape
            `(B, num_heads, T, S)`.

    Example:

    ```python
    x = keras.random.normal((2, 16, 256))
    layer = CollaborativeAttention(num_heads=8, key_dim=32, shared_key_dim=64)
    y = layer(x, x)  # (2, 16, 256)
    ```
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        shared_key_dim=None,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        attention_axes=None,
        sliding_window=None,
        mixing_initializer="concatenate",
        flash_attention=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_gate=False,
        seed=None,
        **kwargs,
    ):
        if "_compute_attention" in dir(type(self)):
            raise TypeError(
                f"`{type(self).__name__}` defines `_compute_attention`, the "
                "hook of `keras.layers.MultiHeadAttention`, which receives "
                "per-head queries and keys `(B, T, num_heads, key_dim)`. "
                "CollaborativeAttention never calls it: its heads share one "
                "query `(B, T, shared_key_dim)`, one key and a content term. "
                "Override `_compute_collaborative_attention(query, key, value, "
                "content, attention_mask, training, return_attention_scores, "
                "use_causal_mask)` instead. Received: "
                f"{type(self).__name__}._compute_attention"
            )
        super().__init__(**kwargs)
        self.supports_masking = True
        self.num_heads = check_integer("num_heads", num_heads)
        self.key_dim = check_integer("key_dim", key_dim)
        if shared_key_dim is None:
            shared_key_dim = self.num_heads * self.key_dim
        self.shared_key_dim = check_shared_key_dim(shared_key_dim, self.num_heads, self.key_dim)
        self.value_dim = check_integer(
            "value_dim", self.key_dim if value_dim is None else value_dim
        )
        self.dropout = check_rate("dropout", dropout)
        self.use_bias = check_bool("use_bias", use_bias)
        self.use_gate = check_bool("use_gate", use_gate)
        self.sliding_window = check_integer(
            "sliding_window", sliding_window, allow_none=True
        )
        self.seed = check_integer("seed", seed, minimum=None, allow_none=True)
        if isinstance(output_shape, numbers.Integral):
            output_shape = (output_shape,)
        if output_shape is not None:
            if not isinstance(output_shape, (list, tuple)) or not all(
                isinstance(d, numbers.Integral) and d > 0 for d in output_shape
            ):
                raise ValueError(
                    "Argument `output_shape` must be a positive integer or a "
                    f"tuple of them. Received: output_shape={output_shape!r}"
                )
            output_shape = tuple(int(d) for d in output_shape)
        self._output_shape = output_shape
        if isinstance(attention_axes, numbers.Integral):
            attention_axes = (attention_axes,)
        if attention_axes is not None:
            if not isinstance(attention_axes, (list, tuple)) or not all(
                isinstance(a, numbers.Integral) for a in attention_axes
            ):
                raise ValueError(
                    "Argument `attention_axes` must be an int or a tuple of "
                    f"ints. Received: attention_axes={attention_axes!r}"
                )
            attention_axes = tuple(int(a) for a in attention_axes)
        self.attention_axes = attention_axes
        self._mixing_initializer = _mixing_initializer(mixing_initializer)
        if isinstance(self._mixing_initializer, ConcatenateMixing) and (
            self.shared_key_dim < self.num_heads
        ):
            raise ValueError(
                "With mixing_initializer='concatenate' every head owns at "
                "least one shared dimension, so `shared_key_dim` must be at "
                f"least num_heads={self.num_heads}; pass a larger "
                "shared_key_dim or another mixing_initializer. Received: "
                f"shared_key_dim={shared_key_dim!r}"
            )
        flash_attention = check_bool(
            "flash_attention", flash_attention, allow_none=True
        )
        if flash_attention is None:
            flash_attention = config.is_flash_attention_enabled()
        if flash_attention and self.dropout > 0:
            raise ValueError(
                "The fused attention path does not support dropout on the "
                "attention weights. Received: flash_attention=True, "
                f"dropout={dropout}"
            )
        self.flash_attention = flash_attention
        self._kernel_initializer = initializers.get(kernel_initializer)
        self._bias_initializer = initializers.get(bias_initializer)
        self._kernel_regularizer = regularizers.get(kernel_regularizer)
        self._bias_regularizer = regularizers.get(bias_regularizer)
        self._activity_regularizer = regularizers.get(activity_regularizer)
        self._kernel_constraint = constraints.get(kernel_constraint)
        self._bias_constraint = constraints.get(bias_constraint)
        self._scale = 1.0 / math.sqrt(self.key_dim)

    def build(self, query_shape, value_shape, key_shape=None):
        """Creates the projections and the attention equations.

        Args:
            query_shape: Shape of the `query` tensor.
            value_shape: Shape of the `value` tensor.
            key_shape: Optional shape of the `key` tensor.
        """
        key_shape = value_shape if key_shape is None else key_shape
        _check_shapes(query_shape, value_shape, key_shape)
        self._input_widths = {
            "query": query_shape[-1],
            "value": value_shape[-1],
            "key": key_shape[-1],
        }
        rank = len(query_shape)
        self._build_equations(rank)
        positions = string.ascii_lowercase[: rank - 1]
        free = [None] * (rank - 2)  # sizes of the non-batch position axes

        # Shared query and key projections: (B, T, F) -> (B, T, K).
        self._query_dense = EinsumDense(
            f"{positions}F,FK->{positions}K",
            output_shape=free + [self.shared_key_dim],
            name="query",
            **self._sublayer_kwargs(),
        )
        self._query_dense.build(query_shape)
        self._key_dense = EinsumDense(
            f"{positions}F,FK->{positions}K",
            output_shape=free + [self.shared_key_dim],
            name="key",
            **self._sublayer_kwargs(),
        )
        self._key_dense.build(key_shape)
        self._gate_dense = None
        if self.use_gate:
            # Per-head output gates sigmoid(x Wg + bg): (B, T, F) -> (B, T, N, V).
            self._gate_dense = EinsumDense(
                f"{positions}F,FNV->{positions}NV",
                output_shape=free + [self.num_heads, self.value_dim],
                bias_axes="NV" if self.use_bias else None,
                activation="sigmoid",
                name="gate",
                **self._sublayer_kwargs(),
            )
            self._gate_dense.build(query_shape)
        # Per-head values: (B, S, F) -> (B, S, N, V).
        self._value_dense = EinsumDense(
            f"{positions}F,FNV->{positions}NV",
            output_shape=free + [self.num_heads, self.value_dim],
            bias_axes="NV" if self.use_bias else None,
            name="value",
            **self._sublayer_kwargs(),
        )
        self._value_dense.build(value_shape)
        # Output projection: (B, T, N, V) -> (B, T, *output_shape).
        output_shape = self._output_shape or (query_shape[-1],)
        out = _OUTPUT_LETTERS[: len(output_shape)]
        self._output_dense = EinsumDense(
            f"{positions}NV,NV{out}->{positions}{out}",
            output_shape=free + list(output_shape),
            bias_axes=out if self.use_bias else None,
            name="attention_output",
            **self._sublayer_kwargs(),
        )
        self._output_dense.build(
            tuple(query_shape[:-1]) + (self.num_heads, self.value_dim)
        )
        self.mixing = self.add_weight(
            name="mixing",
            shape=(self.num_heads, self.shared_key_dim),
            initializer=self._mixing_initializer,
        )
        self.content_bias = None
        if self.use_bias:
            self.content_bias = self.add_weight(
                name="content_bias",
                shape=(key_shape[-1], self.num_heads),
                initializer=_clone(self._bias_initializer),
                regularizer=self._bias_regularizer,
                constraint=self._bias_constraint,
            )
        self._dropout_layer = Dropout(
            rate=self.dropout, seed=self.seed, dtype=self.dtype_policy
        )

    def _build_equations(self, rank):
        """Builds the einsum equations for inputs of rank `rank`.

        With inputs `(B, T, F)` (rank 3, attention over axis 1) they are:
            mix:     "abK,NK->abNK"     (B, T, K), (N, K) -> (B, T, N, K)
            score:   "acK,abNK->aNbc"   keys, mixed queries -> (B, N, T, S)
            content: "acN->aNc"         (B, S, N) -> (B, N, S)
            combine: "aNbc,acNV->abNV"  weights, values -> (B, T, N, V)
        In general the position axes not in `attention_axes` act as batch
        axes and the score layout is (batch axes, N, query attention axes,
        key attention axes), as in `keras.layers.MultiHeadAttention`.
        """
        axes = self.attention_axes or tuple(range(1, rank - 1))
        axes = tuple(a + rank if a < 0 else a for a in axes)
        if not all(1 <= a <= rank - 2 for a in axes) or len(set(axes)) != len(
            axes
        ):
            raise ValueError(
                "Argument `attention_axes` must name distinct axes between "
                f"the batch and the feature axis of inputs of rank {rank}. "
                f"Received: attention_axes={self.attention_axes}"
            )
        self._attention_axes = axes
        query = string.ascii_lowercase[: rank - 1]
        key_letters = iter(string.ascii_lowercase[rank - 1 :])
        key = "".join(
            next(key_letters) if i in axes else c for i, c in enumerate(query)
        )
        batch = "".join(c for i, c in enumerate(query) if i not in axes)
        query_attended = "".join(query[a] for a in axes)
        key_attended = "".join(key[a] for a in axes)
        scores = f"{batch}N{query_attended}{key_attended}"
        self._mix_equation = f"{query}K,NK->{query}NK"
        self._score_equation = f"{key}K,{query}NK->{scores}"
        self._content_equation = f"{key}N->{batch}N{key_attended}"
        self._combine_equation = f"{scores},{key}NV->{query}NV"
        self._scores_rank = len(scores)

    def _sublayer_kwargs(self):
        """Keyword arguments shared by the projections (fresh initializers)."""
        return dict(
            kernel_initializer=_clone(self._kernel_initializer),
            bias_initializer=_clone(self._bias_initializer),
            kernel_regularizer=self._kernel_regularizer,
            bias_regularizer=self._bias_regularizer,
            activity_regularizer=self._activity_regularizer,
            kernel_constraint=self._kernel_constraint,
            bias_constraint=self._bias_constraint,
            dtype=self.dtype_policy,
        )

    @property
    def query_dense(self):
        return self._query_dense

    @property
    def key_dense(self):
        return self._key_dense

    @property
    def value_dense(self):
        return self._value_dense

    @property
    def output_dense(self):
        return self._output_dense

    @property
    def gate_dense(self):
        return self._gate_dense

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        if key is None:
            key = value
        self._check_inputs(query, value, key)
        check_bool("return_attention_scores", return_attention_scores)
        check_bool("use_causal_mask", use_causal_mask)
        # Keras fills `query_mask`, `value_mask` and `key_mask` from the
        # inputs' Keras masks and gives the output the query's mask; the masks
        # are applied here, so take them off the inputs of the projections.
        for tensor in (query, value, key):
            set_keras_mask(tensor, None)
        # The causal mask reaches the attention core as a flag, next to the
        # other masks unmerged: the fused kernels then mask causally inside
        # (no (T, S) mask is built) and read a key padding mask (B, 1, S) as
        # it is; the explicit path merges the two (the same mask).
        is_causal = use_causal_mask and self.sliding_window is None
        attention_mask = self._compute_attention_mask(
            query,
            value,
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask and not is_causal,
        )
        gate = None
        if self._gate_dense is not None:
            gate = self._gate_dense(query)  # (B, T, N, V)
        content = self._content_scores(key)  # (B, S, N)
        query = self._query_dense(query)  # (B, T, K)
        key = self._key_dense(key)  # (B, S, K)
        value = self._value_dense(value)  # (B, S, N, V)
        attention_output, attention_scores = (
            self._compute_collaborative_attention(
                query,
                key,
                value,
                content,
                attention_mask,
                training=training,
                return_attention_scores=return_attention_scores,
                use_causal_mask=is_causal,
            )
        )
        if gate is not None:
            attention_output = attention_output * gate  # (B, T, N, V)
        attention_output = self._output_dense(attention_output)  # (B, T, E)
        if return_attention_scores:
            return attention_output, attention_scores
        return attention_output

    def _check_inputs(self, query, value=None, key=None):
        """Raises on non-float inputs, batch mismatches and inputs whose
        feature size differs from the one the layer was built for (`None`
        inputs are not checked)."""
        inputs = [
            (name, tensor)
            for name, tensor in (("query", query), ("value", value), ("key", key))
            if tensor is not None
        ]
        for name, tensor in inputs:
            dtype = backend.standardize_dtype(tensor.dtype)
            if "float" not in dtype:
                raise TypeError(
                    f"`{name}` must be a floating-point tensor. "
                    f"Received: {name}.dtype={dtype}"
                )
        if len({t.shape[0] for _, t in inputs if t.shape[0] is not None}) > 1:
            received = ", ".join(
                f"{name}.shape={tuple(tensor.shape)}" for name, tensor in inputs
            )
            raise ValueError(
                "`query`, `value` and `key` must have the same batch size. "
                f"Received: {received}"
            )
        for name, tensor in inputs:
            width = self._input_widths[name]
            if tensor.shape[-1] is not None and tensor.shape[-1] != width:
                raise ValueError(
                    f"The layer was built for `{name}` with {width} features "
                    f"in its last axis. Received: {name}.shape="
                    f"{tuple(tensor.shape)}"
                )

    def _content_scores(self, key):
        """The content-bias term `y_j . content_bias[:, h]`: (B, S, N)."""
        if self.content_bias is None:
            return None
        return ops.matmul(key, ops.cast(self.content_bias, key.dtype))

    def _compute_collaborative_attention(
        self,
        query,
        key,
        value,
        content=None,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """Attention from the projected shared query, key and values.

        The override hook of the layer (what `_compute_attention` is to
        `keras.layers.MultiHeadAttention`, with the shared query and key and
        the content term).

        Args:
            query: Shared query `x Wq` of shape `(B, T, K)`.
            key: Shared key `y Wk` of shape `(B, S, K)`.
            value: Per-head values of shape `(B, S, N, V)`.
            content: Content-bias term of shape `(B, S, N)`, or `None`.
            attention_mask: Boolean mask broadcastable to `(B, N, T, S)`
                (`(B, T, S)`, `(B, 1, T, S)` or `(B, N, T, S)`), or `None`.
            training: Whether dropout is active.
            return_attention_scores: Whether to return the attention weights.
            use_causal_mask: Whether to add a causal mask here (`call` passes
                it unmerged from `attention_mask`, so that the fused path
                runs the backend's causal kernel).

        Returns:
            The per-head attention outputs `(B, T, N, V)` and the attention
            weights `(B, N, T, S)` (`None` on the fused path).
        """
        if self._use_fused_path(
            return_attention_scores, query, key, attention_mask
        ):
            output = collaborative_dot_product_attention(
                query,
                key,
                value,
                self.mixing,
                content=content,
                mask=attention_mask,
                scale=self._scale,
                is_causal=use_causal_mask,
                flash_attention=self.flash_attention,
            )
            return output, None
        if use_causal_mask:
            causal = self._compute_causal_mask(query, key)  # (1, T, S)
            attention_mask = (
                causal
                if attention_mask is None
                else self._and_masks(ops.cast(attention_mask, "bool"), causal)
            )
        query = ops.multiply(query, ops.cast(self._scale, query.dtype))
        mixing = ops.cast(self.mixing, query.dtype)
        mixed = ops.einsum(self._mix_equation, query, mixing)  # (B, T, N, K)
        scores = ops.einsum(self._score_equation, key, mixed)  # (B, N, T, S)
        if content is not None:
            content = ops.multiply(
                content, ops.cast(self._scale, content.dtype)
            )
            content = ops.einsum(self._content_equation, content)  # (B, N, S)
            for _ in self._attention_axes:  # (B, N, 1, S)
                content = ops.expand_dims(
                    content, -1 - len(self._attention_axes)
                )
            scores = scores + content
        weights = self._masked_softmax(scores, attention_mask)  # (B, N, T, S)
        dropped = self._dropout_layer(weights, training=training)
        output = ops.einsum(self._combine_equation, dropped, value)
        return output, weights  # (B, T, N, V), (B, N, T, S)

    def _use_fused_path(self, return_attention_scores, query=None, key=None,
                        attention_mask=None):
        """Whether to compute the attention core with the fused kernel.

        `flash_attention=True` requires it, `False` forbids it; with `None`
        it is taken where it applies (no dropout, no scores returned, one
        attention axis) and is the faster choice for the backend, device,
        dtype and query length of `query`, the key length of `key` and
        whether there is an `attention_mask` (see
        `collab_keras.ops.fused_attention_preferred`).
        """
        if return_attention_scores and self.flash_attention:
            raise ValueError(
                "The fused attention path cannot return attention scores. "
                "Received: return_attention_scores=True with "
                "flash_attention=True; pass flash_attention=False."
            )
        fusable = (
            self.dropout == 0
            and not return_attention_scores
            and len(self._attention_axes) == 1
            and self._scores_rank == 4
        )
        if self.flash_attention and not fusable:
            raise ValueError(
                "The fused attention path needs inputs of rank 3 and one "
                "attention axis. Received: flash_attention=True, "
                f"attention_axes={self.attention_axes}"
            )
        if not fusable or self.flash_attention is False:
            return False
        if self.flash_attention:
            return True
        if query is None:
            return False
        masked_lengths = None
        if attention_mask is not None:
            masked_lengths = (query.shape[1], key.shape[1])
        return fused_attention_preferred(
            query,
            self.shared_key_dim,
            self.value_dim,
            self.num_heads,
            self.use_bias,
            masked_lengths=masked_lengths,
        )

    def _masked_softmax(self, scores, attention_mask=None):
        """Softmax over the key axes in float32; masked weights are 0.

        A query row whose keys are all masked gets all-zero weights, as in
        `keras.layers.Softmax`, so its output is finite (the output bias).
        """
        input_dtype = scores.dtype
        if 0 in scores.shape:
            return scores * 0  # nothing to normalize (and no empty maximum)
        scores = ops.cast(scores, "float32")
        if attention_mask is not None:
            axis = -2 * len(self._attention_axes) - 1  # the heads axis
            while len(attention_mask.shape) < len(scores.shape):
                attention_mask = ops.expand_dims(attention_mask, axis)
            scores = ops.where(attention_mask, scores, -1e9)
        axes = tuple(range(-len(self._attention_axes), 0))
        scores = scores - ops.max(scores, axis=axes, keepdims=True)
        weights = ops.exp(scores)
        weights = weights / ops.sum(weights, axis=axes, keepdims=True)
        if attention_mask is not None:
            weights = ops.where(attention_mask, weights, 0.0)
        return ops.cast(weights, input_dtype)

    def _compute_attention_mask(
        self,
        query,
        value,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
    ):
        """Merges the masks into one boolean mask.

        The query mask becomes (B, T, 1), the value and key masks (B, 1, S),
        the causal and sliding-window masks (1, T, S); all are combined with
        `attention_mask` ((B, T, S), or (B, 1|N, T, S) with a heads axis,
        which the result then has too) by logical and.
        """
        masks = []
        if query_mask is not None:
            masks.append(ops.expand_dims(ops.cast(query_mask, "bool"), -1))
        for mask in (value_mask, key_mask):
            if mask is not None:
                masks.append(ops.expand_dims(ops.cast(mask, "bool"), -2))
        if use_causal_mask:
            masks.append(self._compute_causal_mask(query, value))
        if self.sliding_window is not None:
            masks.append(self._compute_sliding_window_mask(query, value))
        if attention_mask is not None:
            self._check_mask_shape(attention_mask, query, value)
            masks.append(ops.cast(attention_mask, "bool"))
        if not masks:
            return None
        merged = masks[0]
        for mask in masks[1:]:
            merged = self._and_masks(merged, mask)
        return merged

    def _and_masks(self, first, second):
        """Logical and of two masks, a missing heads axis broadcast."""
        axis = -2 * len(self._attention_axes) - 1  # the heads axis
        while len(first.shape) < len(second.shape):
            first = ops.expand_dims(first, axis)
        while len(second.shape) < len(first.shape):
            second = ops.expand_dims(second, axis)
        return ops.logical_and(first, second)

    def _compute_causal_mask(self, query, value=None):
        """Lower-triangular boolean mask of shape `(1, T, S)`."""
        rows, columns = _positions(query, value)
        return ops.expand_dims(ops.greater_equal(rows, columns), 0)

    def _compute_sliding_window_mask(self, query, value=None):
        """Symmetric band `|i - j| < sliding_window`, shape `(1, T, S)`."""
        rows, columns = _positions(query, value)
        return ops.expand_dims(
            ops.less(ops.abs(rows - columns), self.sliding_window), 0
        )

    def _check_mask_shape(self, attention_mask, query, value):
        """Raises if `attention_mask` cannot broadcast to the scores' shape.

        The scores have the shape (batch axes, heads, query attention axes,
        key attention axes): (B, N, T, S) for rank-3 inputs; a mask may
        leave out the heads axis.
        """
        rank = len(query.shape)
        axes = self._attention_axes
        batch = tuple(query.shape[i] for i in range(rank - 1) if i not in axes)
        attended = tuple(query.shape[a] for a in axes) + tuple(
            value.shape[a] for a in axes
        )
        mask_shape = tuple(attention_mask.shape)
        targets = [batch + attended]
        if len(mask_shape) == len(batch) + 1 + len(attended):
            targets = [batch + (self.num_heads,) + attended]
        ok = any(
            len(mask_shape) <= len(target)
            and all(
                m is None or t is None or m in (1, t)
                for m, t in zip(reversed(mask_shape), reversed(target))
            )
            for target in targets
        )
        if not ok:
            raise ValueError(
                "`attention_mask` must broadcast to (batch, query positions, "
                f"key positions) = {batch + attended} or, per head, to "
                f"{batch + (self.num_heads,) + attended}. Received: "
                f"attention_mask.shape={mask_shape}"
            )

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        _check_shapes(query_shape, value_shape, key_shape)
        query_shape = tuple(query_shape)
        if self._output_shape:
            return query_shape[:-1] + self._output_shape
        return query_shape

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        key_shape = None if key is None else key.shape
        output_shape = self.compute_output_shape(
            query.shape, value.shape, key_shape
        )
        output = keras.KerasTensor(output_shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        rank = len(query.shape)
        axes = self.attention_axes or tuple(range(1, rank - 1))
        axes = tuple(a + rank if a < 0 else a for a in axes)
        batch = [query.shape[i] for i in range(rank - 1) if i not in axes]
        scores_shape = (
            batch
            + [self.num_heads]
            + [query.shape[a] for a in axes]
            + [value.shape[a] for a in axes]
        )
        scores = keras.KerasTensor(scores_shape, dtype=self.compute_dtype)
        return output, scores

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "shared_key_dim": self.shared_key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_shape": self._output_shape,
                "attention_axes": self.attention_axes,
                "sliding_window": self.sliding_window,
                "mixing_initializer": initializers.serialize(
                    self._mixing_initializer
                ),
                "flash_attention": self.flash_attention,
                "kernel_initializer": initializers.serialize(
                    self._kernel_initializer
                ),
                "bias_initializer": initializers.serialize(
                    self._bias_initializer
                ),
                "kernel_regularizer": regularizers.serialize(
                    self._kernel_regularizer
                ),
                "bias_regularizer": regularizers.serialize(
                    self._bias_regularizer
                ),
                "activity_regularizer": regularizers.serialize(
                    self._activity_regularizer
                ),
                "kernel_constraint": constraints.serialize(
                    self._kernel_constraint
                ),
                "bias_constraint": constraints.serialize(self._bias_constraint),
                "use_gate": self.use_gate,
                "seed": self.seed,
            }
        )
        return config


def _mixing_initializer(identifier):
    if identifier is None:
        raise ValueError(
            "Argument `mixing_initializer` must be 'concatenate' or a Keras "
            "initializer; None would leave the mixing undefined. "
            "Received: mixing_initializer=None"
        )
    if isinstance(identifier, str) and identifier == "concatenate":
        return ConcatenateMixing()
    try:
        return initializers.get(identifier)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "Argument `mixing_initializer` must be 'concatenate' or a Keras "
            f"initializer. Received: mixing_initializer={identifier!r}"
        ) from error


def _clone(initializer):
    """A fresh copy, so that sublayers do not draw the same values."""
    return initializer.__class__.from_config(initializer.get_config())


def _check_shapes(query_shape, value_shape, key_shape):
    for name, shape in (
        ("query", query_shape),
        ("value", value_shape),
        ("key", key_shape),
    ):
        if len(shape) < 3:
            raise ValueError(
                f"`{name}` must have rank 3 or more (batch, positions..., "
                f"features). Received: {name}.shape={tuple(shape)}"
            )
    if not len(query_shape) == len(value_shape) == len(key_shape):
        raise ValueError(
            "`query`, `value` and `key` must have the same rank. Received: "
            f"query.shape={tuple(query_shape)}, "
            f"value.shape={tuple(value_shape)}, key.shape={tuple(key_shape)}"
        )
    if tuple(value_shape[1:-1]) != tuple(key_shape[1:-1]):
        raise ValueError(
            "All dimensions of `value` and `key`, except the last one, must "
            f"be equal. Received: value.shape={tuple(value_shape)}, "
            f"key.shape={tuple(key_shape)}"
        )


def _positions(query, value=None):
    """Query positions `(T, 1)` and key positions `(1, S)`."""
    query_length = ops.shape(query)[1]
    value_length = query_length if value is None else ops.shape(value)[1]
    rows = ops.expand_dims(ops.arange(query_length, dtype="int32"), 1)
    columns = ops.expand_dims(ops.arange(value_length, dtype="int32"), 0)
    return rows, columns
