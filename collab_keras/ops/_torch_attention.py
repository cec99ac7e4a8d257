"""PyTorch kernels of collaborative attention.

On CUDA GPUs, float16 and bfloat16 inputs go to the Triton kernel
(`_triton_attention.py`: the shared key read once per block for every head,
values at their own width, mixing, content term and masks inside) when it
takes them (`_triton_attention.applies`). Everything else (float32, CPUs, no
Triton) runs `scaled_dot_product_attention`, as follows.

The shared key is ONE key head that every query head reads
(`enable_gqa=True`), so it is neither copied nor broadcast; the values keep
their own head count and size (padded to a multiple of 8). The content term
enters the scores exactly as `N` more key columns: head `h` attends with the
query `[q * m_h, e_h / scale]` (`e_h` the h-th unit vector) and the one key
`[k, scale * c_1 .. scale * c_N]`, whose dot product is `(q * m_h) . k + c_h`. PyTorch picks
the kernel (cuDNN attention on Hopper GPUs when it takes the sizes, else the
memory-efficient or the math kernel).
"""

import importlib.util

import torch
import torch.nn.functional as F

from collab_keras.ops._attention_utils import combine_causal
from collab_keras.ops._attention_utils import round_up

# cuDNN attention takes head sizes up to 256; on an H200 (PyTorch 2.11) its
# forward+backward at head size 192 took longer than at 256 (1.61 vs 1.22 ms,
# batch 32, length 512, 12 heads: docs/performance.md), so key widths between
# 128 and 256 are zero-padded to 256.
CUDNN_MAX_WIDTH = 256


# The Triton kernel is the automatic choice up to this shared key width, the
# widest measured (faster forward and forward+backward than the explicit and
# SDPA paths at every length on an H200: benchmarks/results/
# 2026-11-29-h200-torch-kernel); wider keys keep the explicit path.
TRITON_MAX_KEY_WIDTH = 384


def key_width(width):
    """Head size given to the kernel for a shared key of `width`."""
    width = round_up(width, 8)
    return CUDNN_MAX_WIDTH if 128 < width < CUDNN_MAX_WIDTH else width


def fused_preferred(query, shared_width, value_width, num_heads, use_bias):
    """Whether the fused core beats the explicit path on torch (measured on
    an H200, `benchmarks/attention_kernel_torch.py`).

    On CUDA: the Triton kernel for float16/bfloat16 while the shared key is
    at most `TRITON_MAX_KEY_WIDTH` wide; otherwise SDPA (cuDNN) while the
    key with its `N` content columns fits 256 wide (wider ones fall to
    PyTorch's math kernel). On CPUs the explicit path.
    """
    if not getattr(query, "is_cuda", False):
        return False
    half = query.dtype in (torch.float16, torch.bfloat16)
    if half and shared_width <= TRITON_MAX_KEY_WIDTH and value_width <= 256:
        if importlib.util.find_spec("triton") is not None:
            return True
    content_columns = num_heads if use_bias else 0
    return (
        key_width(shared_width + content_columns) <= CUDNN_MAX_WIDTH
        and value_width <= CUDNN_MAX_WIDTH
    )


def triton_kernel(query, key, value, mask=None):
    """The Triton kernel module if it runs these inputs, else `None`."""
    if not query.is_cuda:
        return None
    try:
        from collab_keras.ops import _triton_attention
    except ImportError:  # no Triton installed
        return None
    if not _triton_attention.applies(query, key, value, mask):
        return None
    return _triton_attention


def attention(query, key, value, mixing, content, mask, scale, is_causal):
    """query (B, T, K), key (B, S, K), value (B, S, N, V), mixing (N, K),
    content (B, S, N) unscaled or None, mask (B, 1|N, T, S) bool or None,
    is_causal -> (B, T, N, V). Rows with no key give 0.

    The Triton kernel where it applies (`triton_kernel`), else
    `scaled_dot_product_attention` (PyTorch chooses its kernel).
    """
    kernel = triton_kernel(query, key, value, mask)
    if kernel is not None:
        return kernel.attention(
            query, key, value, mixing, content, mask, scale, is_causal
        )
    return sdpa_attention(
        query, key, value, mixing, content, mask, scale, is_causal
    )


def sdpa_attention(query, key, value, mixing, content, mask, scale, is_causal):
    """The kernel contract on `scaled_dot_product_attention`."""
    num_heads, value_dim = value.shape[-2], value.shape[-1]
    width = round_up(value_dim, 8)
    mixed = torch.einsum("btk,nk->bntk", query, mixing)  # (B, N, T, K)
    key = key.unsqueeze(1)  # (B, 1, S, K)
    if content is not None:
        # [q m_h, e_h / scale] . [k, scale c] = (q m_h) . k + c_h, with the
        # content columns at the size of the logits (no early overflow).
        units = torch.eye(num_heads, dtype=mixed.dtype, device=mixed.device)
        units = units / scale
        units = units[None, :, None, :].expand(
            mixed.shape[0], num_heads, mixed.shape[2], num_heads
        )
        mixed = torch.cat([mixed, units], dim=-1)  # (B, N, T, K+N)
        content = (content * scale).to(key.dtype).unsqueeze(1)  # (B, 1, S, N)
        key = torch.cat([key, content], dim=-1)  # (B, 1, S, K+N)
    padded = key_width(key.shape[-1]) if query.is_cuda else key.shape[-1]
    if padded != key.shape[-1]:
        mixed = F.pad(mixed, (0, padded - key.shape[-1]))
        key = F.pad(key, (0, padded - key.shape[-1]))
    value = value.permute(0, 2, 1, 3)  # (B, N, S, V)
    if width != value_dim:
        value = F.pad(value, (0, width - value_dim))
    attends = None
    if mask is not None:
        if is_causal:  # SDPA takes a mask or `is_causal`, not both
            # (B, 1|N, T, S), also from a key padding mask (B, 1, 1, S)
            mask = combine_causal(mask, mixed.shape[2], key.shape[2])
            is_causal = False
        attends = mask.any(dim=-1, keepdim=True)  # (B, 1|N, T, 1)
        mask = mask | ~attends
    # One key head read by every query head: faster than a stride-0 expanded
    # or a copied key (docs/performance.md, attention core table).
    output = F.scaled_dot_product_attention(
        mixed,
        key,
        value,
        attn_mask=mask,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=True,
    )[..., :value_dim]  # (B, N, T, V)
    if attends is not None:
        output = torch.where(attends, output, torch.zeros_like(output))
    return output.permute(0, 2, 1, 3)  # (B, T, N, V)
