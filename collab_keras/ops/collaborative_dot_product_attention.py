"""The fused attention core of collaborative attention: the one dispatch.

`collaborative_dot_product_attention` computes for every head `h`

    softmax(scale * ((q * m_h) . k + c_h) + mask) v_h

from the shared query `q`, the shared key `k`, the per-head values `v_h` and
the content term `c_h` (`y . content_bias[:, h]`), exactly (to floating-point
rounding, whatever the size of `c_h`), on the backend's kernel:

- torch: on CUDA in float16/bfloat16, the Triton kernel (`_triton_attention.py`:
  the shared key read once per key block for every head, mixing, content
  term and masks inside); otherwise
  `torch.nn.functional.scaled_dot_product_attention` with one shared key head
  (`enable_gqa=True`) and `c` as `N` more key columns (`_torch_attention.py`);
- JAX: `jax.nn.dot_product_attention` (cuDNN on GPUs), the key broadcast to
  every head and `c_h` as one more key column (`_jax_attention.py`); on GPUs
  the Pallas kernel (`_pallas_attention.py`) where it is the faster one or
  cuDNN does not take the widths (`_pallas_attention.chosen`);
- otherwise (TensorFlow): `keras.ops.dot_product_attention` on the broadcast
  key, `c_h` as its additive bias (`_portable_attention.py`).

Every kernel takes the same arguments,

    attention(query (B, T, K), key (B, S, K), value (B, S, N, V),
              mixing (N, K), content (B, S, N) unscaled or None,
              mask bool (B, 1|N, T, S) or None, scale, is_causal)
        -> (B, T, N, V)

gives 0 for a query row with no key to attend to and propagates NaN and Inf
as the explicit softmax does. This module only normalizes the arguments,
answers empty inputs and picks the kernel: the content term and the causal
flag reach the kernel as given.
"""

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
    is_causal=False,
    flash_attention=None,
):
    """Collaborative attention from the shared query and key, fused.

    Args:
        query: Shared query `x Wq`, shape `(B, T, K)`.
        key: Shared key `y Wk`, shape `(B, S, K)`.
        value: Per-head values, shape `(B, S, N, V)`.
        mixing: Mixing matrix, shape `(N, K)`, cast to the query's dtype.
        content: Optional content term `y C` (unscaled), shape `(B, S, N)`.
        mask: Optional boolean mask broadcastable to `(B, N, T, S)`, given
            as `(B, T, S)`, `(B, 1, T, S)` or per head `(B, N, T, S)`;
            `True` where a query may attend to a key.
        scale: Score scale, `1 / sqrt(key_dim)`; it multiplies the content
            term too.
        is_causal: Whether query `i` attends only to keys `j <= i` (on top
            of `mask`). Without a mask the kernel's causal mode runs and no
            `(T, S)` mask is built.
        flash_attention: Ignored by the JAX and torch kernels (they take the
            best kernel that runs the inputs); passed on to
            `keras.ops.dot_product_attention` elsewhere, `True` as `None`.

    Returns:
        Per-head outputs of shape `(B, T, N, V)`. Query rows whose keys are
        all masked return 0, as on the explicit path.
    """
    mixing = ops.cast(mixing, query.dtype)
    if mask is not None:
        mask = ops.cast(mask, "bool")
        while len(mask.shape) < 4:  # (B, 1, T, S)
            mask = ops.expand_dims(mask, -3)
    if _is_empty(query, key):
        return _empty_attention(query, key, value)
    name = backend.backend()
    if name == "jax":
        from collab_keras.ops import _pallas_attention

        if _pallas_attention.chosen(query, key, value, content, mask):
            attention = _pallas_attention.attention
        else:
            from collab_keras.ops._jax_attention import attention
    elif name == "torch":
        from collab_keras.ops._torch_attention import attention
    else:
        from collab_keras.ops import _portable_attention

        def attention(*args):
            return _portable_attention.attention(
                *args, flash_attention=flash_attention
            )

    return attention(query, key, value, mixing, content, mask, scale, is_causal)


def _is_empty(query, key):
    """Whether the batch, the queries or the keys are statically empty."""
    return 0 in (query.shape[0], query.shape[1], key.shape[1])


def _empty_attention(query, key, value):
    """The zeros `(B, T, N, V)` of attention with no query, key or batch.

    Computed from the (empty) operands so that gradients exist (zeros).
    """
    scores = ops.einsum("btk,bsk->bts", query, key)  # (B, T, S), empty
    return ops.einsum("bts,bsnv->btnv", scores * 0, value)


# Query lengths below this go to the explicit path when the choice is
# automatic: a decoding step reads the one shared key per position with a
# plain matrix product, where the fused kernels would see it once per head.
MIN_FUSED_QUERY_LENGTH = 16


def fused_attention_preferred(query, key_width, value_width, num_heads, use_bias,
                              masked_lengths=None):
    """Whether the fused core is the faster choice for these inputs.

    The choice follows the measurements in docs/performance.md:
    - JAX on GPUs (bfloat16/float16), by the forward+backward time of the
      attention core and of whole training steps on an H200 and an H100:
      the Pallas kernel where `_pallas_attention.PREFERRED_LENGTHS` says
      (keys up to 128 wide below length 512, up to 256 below 8192, up to
      384 below 4096), else cuDNN where its head size limit allows
      (counting the content column) and, with a mask, the lengths are even
      from length 256 on (`_jax_attention.cudnn_preferred`), else the
      explicit path; on CPUs the explicit path.
    - torch: on CUDA devices the Triton kernel (float16/bfloat16, keys up
      to 384 wide), else SDPA (cuDNN) while the key with its `N` content
      columns fits 256 wide (`_torch_attention.fused_preferred`); on CPUs
      the explicit path.
    - TensorFlow: `keras.ops.dot_product_attention` on the broadcast key
      (XLA-compiled, faster than the explicit einsums on CPUs).
    Decoding steps (query length below `MIN_FUSED_QUERY_LENGTH`) always take
    the explicit path.

    Args:
        query: The projected shared query `(B, T, K)` (its device, dtype and
            length decide).
        key_width: `shared_key_dim`.
        value_width: `value_dim`.
        num_heads: `num_heads`.
        use_bias: Whether there is a content term.
        masked_lengths: The query and key lengths `(T, S)` where a mask is
            given, else None.
    """
    length = query.shape[1]
    if length is not None and length < MIN_FUSED_QUERY_LENGTH:
        return False
    name = backend.backend()
    if name == "jax":
        from collab_keras.ops import _jax_attention
        from collab_keras.ops import _pallas_attention

        return _pallas_attention.preferred(
            length, key_width, query.dtype
        ) or _jax_attention.cudnn_preferred(
            length, key_width, value_width, query.dtype, use_bias,
            masked_lengths,
        )
    if name == "torch":
        from collab_keras.ops import _torch_attention

        return _torch_attention.fused_preferred(
            query, key_width, value_width, num_heads, use_bias
        )
    return name == "tensorflow"
