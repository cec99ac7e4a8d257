"""JAX kernel of collaborative attention: `jax.nn.dot_product_attention`.

cuDNN on GPUs (where it takes the sizes), XLA elsewhere. That function needs
queries, keys and values of one head size and keys and values of one head
count, so the shared key is broadcast to every head and all three are
zero-padded to a common width (a multiple of 8). The content term enters the
scores exactly as one more key column: head `h` attends with the query
`[q * m_h, 1 / scale]` and the key `[k, scale * c_h]`, whose dot product is
`(q * m_h) . k + c_h` (cuDNN takes no per-key bias short of a full
`(B, N, T, S)` one). cuDNN takes head sizes up to 256, and a mask only
spanning the query axis and with even lengths (`cudnn_applies`; else XLA
runs it).
"""

import jax
import jax.numpy as jnp

from collab_keras.ops._attention_utils import combine_causal
from collab_keras.ops._attention_utils import round_up
from collab_keras.ops._attention_utils import unmask_empty_rows
from collab_keras.ops._attention_utils import zero_empty_rows

CUDNN_MAX_WIDTH = 256
# Query lengths from which the automatic choice takes cuDNN where it applies
# (`cudnn_preferred`). Measured on an H200, attention core forward+backward,
# bf16, 12 heads, values 64 wide, content term on
# (benchmarks/attention_kernel.py, docs/performance.md): at length 512 cuDNN
# takes 1.31 / 1.69 ms at Dk 128 / 192 against the explicit path's 2.61 /
# 2.84; at length 128, Dk 192, 0.55 ms against 0.51.
CUDNN_MIN_LENGTH = 256
_HALF = (jnp.bfloat16, jnp.float16)


def on_gpu():
    """Whether JAX's default device is a GPU."""
    try:
        return jax.devices()[0].platform == "gpu"
    except RuntimeError:
        return False


def padded_width(key_width, value_width, use_content=False):
    """Common head size of the padded operands."""
    return round_up(max(key_width + int(use_content), value_width), 8)


def cudnn_applies(key_width, value_width, dtype, use_content=False,
                  masked_lengths=None):
    """Whether the cuDNN kernel can run these sizes on this device.

    `masked_lengths`: the query and key lengths `(T, S)` where a mask is
    given (cuDNN takes it as a bias, and trains with a bias only at even
    lengths; a length of None counts as odd); None: no mask.
    """
    return (
        on_gpu()
        and jnp.dtype(dtype) in _HALF
        and padded_width(key_width, value_width, use_content)
        <= CUDNN_MAX_WIDTH
        and (masked_lengths is None
             or all(n is not None and n % 2 == 0 for n in masked_lengths))
    )


def cudnn_preferred(length, key_width, value_width, dtype, use_content=False,
                    masked_lengths=None):
    """Whether cuDNN is the automatic choice: it applies (`cudnn_applies`)
    and the query length is at least `CUDNN_MIN_LENGTH` (None counts as
    long)."""
    return cudnn_applies(
        key_width, value_width, dtype, use_content, masked_lengths
    ) and (length is None or length >= CUDNN_MIN_LENGTH)


def _pad(x, width):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def attention(query, key, value, mixing, content, mask, scale, is_causal):
    """query (B, T, K), key (B, S, K), value (B, S, N, V), mixing (N, K),
    content (B, S, N) unscaled or None, mask (B, 1|N, T, S) bool or None,
    is_causal -> (B, T, N, V). Rows with no key give 0.

    cuDNN where it applies (`cudnn_applies`), XLA otherwise.
    """
    batch, length, width_k = key.shape
    num_heads, value_dim = value.shape[-2], value.shape[-1]
    use_content = content is not None
    width = padded_width(width_k, value_dim, use_content)
    mixed = jnp.einsum("btk,nk->btnk", query, mixing)  # (B, T, N, K)
    key = jnp.broadcast_to(key[:, :, None, :], (batch, length, num_heads, width_k))
    if use_content:
        # [q m_h, 1 / scale] . [k, scale c_h] = (q m_h) . k + c_h, with the
        # content column at the size of the logits (no early overflow).
        column = jnp.full(mixed.shape[:-1] + (1,), 1 / scale, mixed.dtype)
        mixed = jnp.concatenate([mixed, column], axis=-1)  # (B, T, N, K+1)
        content = (content * scale).astype(key.dtype)[..., None]  # (B, S, N, 1)
        key = jnp.concatenate([key, content], axis=-1)  # (B, S, N, K+1)
    mixed, key, value = _pad(mixed, width), _pad(key, width), _pad(value, width)
    attends = None
    if mask is not None:
        if is_causal:
            mask = combine_causal(mask, query.shape[1], length)
            is_causal = False
        mask, attends = unmask_empty_rows(mask)
    lengths = None if mask is None else (query.shape[1], length)
    use_cudnn = cudnn_applies(width_k, value_dim, query.dtype, use_content,
                              lengths)
    if use_cudnn and mask is not None:
        # cuDNN takes a mask as a bias spanning the query axis (a key
        # padding mask's (B, 1, 1, S) raises "Bias must have same seq length
        # as QKV").
        mask = jnp.broadcast_to(mask, mask.shape[:2] + lengths)
    output = jax.nn.dot_product_attention(
        mixed,
        key,
        value,
        mask=mask,
        scale=scale,
        is_causal=is_causal,
        implementation="cudnn" if use_cudnn else None,
    )[..., :value_dim]  # (B, T, N, V)
    if attends is not None:
        output = zero_empty_rows(output, attends)
    return output
