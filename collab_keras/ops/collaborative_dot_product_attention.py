"""The fused attention core of collaborative attention.

One function, `collaborative_dot_product_attention`, computes for every head
`h` the attention `softmax(scale * ((q * m_h) . k + c_h) + mask) v_h` from the
shared query `q`, the shared key `k`, the per-head values `v_h` and the
content-bias term `c_h`, on the best fused kernel the backend has:

- torch: `torch.nn.functional.scaled_dot_product_attention` with
  `enable_gqa=True`: the shared key is ONE key head that all query heads read,
  values keep their own head count and size (`_torch_attention.py`);
- JAX: `jax.nn.dot_product_attention(implementation="cudnn")` on a GPU, with
  the shared key broadcast to every head and the values zero-padded to the
  key width, which cuDNN needs (`_jax_attention.py`);
- otherwise (TensorFlow, CPUs): `keras.ops.dot_product_attention` on the same
  broadcast and padded operands.

The content bias is moved from the scores into the values: since `c_h(j)`
does not depend on the query position,

    sum_j softmax_j(s_j + c_j) v_j = (sum_j p_j w_j v_j) / (sum_j p_j w_j)

with `p = softmax(s)` and `w_j = exp(c_j - max c)`. The kernel attends over
the values `[w v, w]` (one more value column); the output is the first `V`
columns divided by the last one. This costs one value column instead of
`num_heads` extra key dimensions, and no bias tensor.
The limit of the trick: a key whose scaled content term lies more than about
80 below the largest one of its (batch, head) among the keys that some query
may attend to (masked keys such as padding do not count) gets a weight that underflows
to 0 (its true weight is below `exp(-80)` times that of the key with the
largest content term, unless its dot-product score is larger by 80 or more);
with float16 values the weights underflow at about 17 instead of 80.
"""

import functools

from keras import backend
from keras import ops


def collaborative_dot_product_attention(
    query,
    key,
    value,
    mixing,
    content=None,
    mask=None,
    scale=1.0,
    flash_attention=None,
):
    """Collaborative attention from the shared query and key, fused.

    Args:
        query: Shared query `x Wq`, shape `(B, T, K)`.
        key: Shared key `y Wk`, shape `(B, S, K)`.
        value: Per-head values, shape `(B, S, N, V)`.
        mixing: Mixing matrix, shape `(N, K)`, cast to the query's dtype.
        content: Optional content-bias term `y C` (unscaled), shape
            `(B, S, N)`.
        mask: Optional boolean mask broadcastable to `(B, N, T, S)`, given
            as `(B, T, S)` or `(B, 1, T, S)`; `True` where a query may
            attend to a key.
        scale: Score scale, `1 / sqrt(key_dim)`.
        flash_attention: Ignored by the JAX and torch kernels (they take the
            best kernel that runs the inputs); passed on to
            `keras.ops.dot_product_attention` elsewhere, `True` as `None`.

    Returns:
        Per-head outputs of shape `(B, T, N, V)`. Query rows whose keys are
        all masked return 0, as on the explicit path.
    """
    value_dim = value.shape[-1]
    mixing = ops.cast(mixing, query.dtype)
    attends = None
    if mask is not None:
        mask = ops.cast(mask, "bool")
        while len(mask.shape) < 4:  # (B, 1, T, S)
            mask = ops.expand_dims(mask, -3)
    if content is not None:
        value = _content_into_values(value, content, scale, mask)  # (B, S, N, V+1)
    if mask is not None:
        # Rows with no key to attend to attend to all keys (so that no
        # kernel sees an empty softmax) and are zeroed at the end.
        attends = ops.any(mask, axis=-1, keepdims=True)  # (B, 1, T, 1)
        mask = ops.logical_or(mask, ops.logical_not(attends))
    name = backend.backend()
    if name == "jax":
        from collab_keras.ops._jax_attention import attention
    elif name == "torch":
        from collab_keras.ops._torch_attention import attention
    else:
        attention = functools.partial(
            portable_attention, flash_attention=flash_attention
        )
    output = attention(query, key, value, mixing, mask, scale)  # (B, T, N, V[+1])
    if content is not None:
        output = _divide_out_content(output, value_dim)
    if attends is not None:
        attends = ops.transpose(attends, (0, 2, 1, 3))  # (B, T, 1, 1)
        output = ops.where(attends, output, ops.zeros_like(output))
    return output


def portable_attention(query, key, value, mixing, mask, scale, flash_attention):
    """`keras.ops.dot_product_attention` on broadcast, padded operands.

    Returns `(B, T, N, value.shape[-1])`.
    """
    num_heads, value_dim = value.shape[-2], value.shape[-1]
    mixed = ops.einsum("btK,NK->btNK", query, mixing)  # (B, T, N, K)
    width = max(mixed.shape[-1], value_dim)
    key = ops.expand_dims(key, 2)  # (B, S, 1, K)
    key = ops.broadcast_to(
        key, (ops.shape(key)[0], ops.shape(key)[1], num_heads, key.shape[-1])
    )
    mixed, key = pad_last(mixed, width), pad_last(key, width)
    value = pad_last(value, width)  # (B, S, N, width)
    output = ops.dot_product_attention(
        mixed,
        key,
        value,
        mask=mask,
        scale=scale,
        # `True` would ask Keras for its flash kernel, which few backends
        # have: the fused path here is this function, whatever kernel runs.
        flash_attention=None if flash_attention else flash_attention,
    )
    return output[..., :value_dim]


def _content_into_values(value, content, scale, mask=None):
    """`[w v, w]` with `w = exp(scale * (c - max_S c))`: (B, S, N, V+1).

    The maximum runs over the keys that some query may attend to, so that
    masked keys (padding) cannot push the weights of the others to 0.
    """
    content = ops.cast(content, "float32") * scale  # (B, S, N)
    if mask is not None:
        # Keys no query attends to get weight 1 (it is never used).
        attended = ops.any(mask, axis=2)  # (B, 1, S)
        attended = ops.transpose(attended, (0, 2, 1))  # (B, S, 1)
        content = ops.where(attended, content, -1e30)
    shift = ops.stop_gradient(ops.max(content, axis=1, keepdims=True))
    if mask is not None:
        content = ops.where(attended, content, shift)
    weight = ops.exp(content - shift)  # (B, S, N), in (0, 1]
    weight = ops.expand_dims(ops.cast(weight, value.dtype), -1)
    return ops.concatenate([value * weight, weight], axis=-1)


def _divide_out_content(output, value_dim):
    """`(sum p w v) / (sum p w)` from the kernel's `[w v, w]` output."""
    numerator = ops.cast(output[..., :value_dim], "float32")
    denominator = ops.cast(output[..., value_dim : value_dim + 1], "float32")
    positive = denominator > 0
    safe = ops.where(positive, denominator, ops.ones_like(denominator))
    result = ops.where(positive, numerator / safe, ops.zeros_like(numerator))
    return ops.cast(result, output.dtype)


def pad_last(x, width):
    """Zero-pads the last axis of `x` to `width`."""
    extra = width - x.shape[-1]
    if extra == 0:
        return x
    return ops.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[0, extra]])


def round_up(n, multiple):
    """`n` rounded up to a multiple of `multiple`."""
    return -(-n // multiple) * multiple


# Query lengths below this go to the explicit path when the choice is
# automatic: a decoding step reads the one shared key per position with a
# plain matrix product, where the fused kernels would see it once per head.
MIN_FUSED_QUERY_LENGTH = 16


def fused_attention_preferred(query, key_width, value_width, use_bias):
    """Whether the fused core is the faster choice for these inputs.

    The choice follows the measurements in docs/performance.md:
    - JAX: the cuDNN kernel on GPUs, when its head size limit allows
      (`_jax_attention.cudnn_applies`); on CPUs the explicit path is faster.
    - torch: SDPA (cuDNN) on CUDA devices for shared key widths up to 256
      (wider ones fall to PyTorch's math kernel, slower than the explicit
      path); on CPUs the explicit path.
    - TensorFlow: `keras.ops.dot_product_attention` on the broadcast key
      (XLA-compiled, faster than the explicit einsums on CPUs).
    Decoding steps (query length below `MIN_FUSED_QUERY_LENGTH`) always take
    the explicit path.

    Args:
        query: The projected shared query `(B, T, K)` (its device, dtype and
            length decide).
        key_width: `shared_key_dim`.
        value_width: `value_dim`.
        use_bias: Whether a content-bias column is added to the values.
    """
    length = query.shape[1]
    if length is not None and length < MIN_FUSED_QUERY_LENGTH:
        return False
    name = backend.backend()
    if name == "jax":
        from collab_keras.ops import _jax_attention

        return _jax_attention.cudnn_applies(
            key_width, value_width + int(use_bias), query.dtype
        )
    if name == "torch":
        from collab_keras.ops import _torch_attention

        return (
            bool(getattr(query, "is_cuda", False))
            and _torch_attention.key_width(key_width)
            <= _torch_attention.CUDNN_MAX_WIDTH
            and value_width + int(use_bias) <= _torch_attention.CUDNN_MAX_WIDTH
        )
    return name == "tensorflow"
