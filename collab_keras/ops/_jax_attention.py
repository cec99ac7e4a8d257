"""JAX kernel of collaborative attention: cuDNN fused attention on GPUs.

`jax.nn.dot_product_attention` needs queries, keys and values of one head
size, and keys and values of one head count, so the shared key is broadcast
to every head and all three are zero-padded to a common width (a multiple of
8). cuDNN takes head sizes up to 256; wider inputs, other dtypes and other
devices go to the XLA implementation.
"""

import jax
import jax.numpy as jnp

from collab_keras.ops.collaborative_dot_product_attention import pad_last
from collab_keras.ops.collaborative_dot_product_attention import round_up

CUDNN_MAX_WIDTH = 256
_HALF = (jnp.bfloat16, jnp.float16)


def padded_width(key_width, value_width):
    """Common head size of the padded operands."""
    return round_up(max(key_width, value_width), 8)


def cudnn_applies(key_width, value_width, dtype):
    """Whether the cuDNN kernel can run these sizes on this device."""
    return (
        jax.devices()[0].platform == "gpu"
        and jnp.dtype(dtype) in _HALF
        and padded_width(key_width, value_width) <= CUDNN_MAX_WIDTH
    )


def attention(query, key, value, mixing, mask, scale):
    """query (B, T, K), key (B, S, K), value (B, S, N, V), mixing (N, K),
    mask (B, 1, T, S) bool or None -> (B, T, N, V).

    cuDNN where it applies (`cudnn_applies`), XLA otherwise.
    """
    batch, length, width_k = key.shape
    num_heads, value_dim = value.shape[-2], value.shape[-1]
    width = padded_width(width_k, value_dim)
    mixed = jnp.einsum("btk,nk->btnk", query, mixing)
    key = jnp.broadcast_to(key[:, :, None, :], (batch, length, num_heads, width_k))
    mixed = pad_last(mixed, width)
    key = pad_last(key, width)
    value = pad_last(value, width)  # (B, S, N, width)
    use_cudnn = cudnn_applies(width_k, value_dim, query.dtype)
    output = jax.nn.dot_product_attention(
        mixed,
        key,
        value,
        mask=mask,
        scale=scale,
        implementation="cudnn" if use_cudnn else None,
    )
    return output[..., :value_dim]
