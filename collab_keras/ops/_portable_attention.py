"""Portable kernel of collaborative attention: `keras.ops.dot_product_attention`.

Used on TensorFlow (and any backend without its own kernel module). The
shared key is broadcast to every head and the operands are zero-padded to
one head size, which `keras.ops.dot_product_attention` needs; the query is
scaled before the product (as MultiHeadAttention does) and the content term
enters the scores exactly, as the additive `bias` of the kernel
(`scale * c_h(j)`, broadcast over query positions, added to the float32
logits).
"""

from keras import ops

from collab_keras.ops._attention_utils import combine_causal
from collab_keras.ops._attention_utils import pad_last
from collab_keras.ops._attention_utils import unmask_empty_rows
from collab_keras.ops._attention_utils import zero_empty_rows


def attention(
    query, key, value, mixing, content, mask, scale, is_causal,
    flash_attention=None,
):
    """query (B, T, K), key (B, S, K), value (B, S, N, V), mixing (N, K),
    content (B, S, N) unscaled or None, mask (B, 1|N, T, S) bool or None,
    is_causal -> (B, T, N, V). Rows with no key give 0.
    """
    num_heads, value_dim = value.shape[-2], value.shape[-1]
    # The scale goes on the query before the product, as in
    # MultiHeadAttention, so that half-precision logits overflow no sooner.
    query = query * ops.cast(scale, query.dtype)
    mixed = ops.einsum("btK,NK->btNK", query, mixing)  # (B, T, N, K)
    width = max(mixed.shape[-1], value_dim)
    key = ops.expand_dims(key, 2)  # (B, S, 1, K)
    key = ops.broadcast_to(
        key, (ops.shape(key)[0], ops.shape(key)[1], num_heads, key.shape[-1])
    )  # (B, S, N, K)
    mixed, key = pad_last(mixed, width), pad_last(key, width)
    value = pad_last(value, width)  # (B, S, N, width)
    bias = None
    if content is not None:
        bias = ops.cast(content, "float32") * scale  # (B, S, N)
        bias = ops.expand_dims(ops.transpose(bias, (0, 2, 1)), 2)  # (B, N, 1, S)
    attends = None
    if mask is not None:
        if is_causal:
            mask = combine_causal(mask, ops.shape(query)[1], ops.shape(key)[1])
            is_causal = False
        mask, attends = unmask_empty_rows(mask)
    output = ops.dot_product_attention(
        mixed,
        key,
        value,
        bias=bias,
        mask=mask,
        scale=1.0,
        is_causal=is_causal,
        # `True` would ask Keras for its flash kernel, which few backends
        # have: the fused path here is this function, whatever kernel runs.
        flash_attention=None if flash_attention else flash_attention,
    )[..., :value_dim]  # (B, T, N, V)
    if attends is not None:
        output = zero_empty_rows(output, attends)
    return output
