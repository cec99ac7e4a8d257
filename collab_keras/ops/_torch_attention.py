"""PyTorch kernel of collaborative attention: `scaled_dot_product_attention`.

The shared key is ONE key head that every query head reads
(`enable_gqa=True`), so it is neither copied nor broadcast; the values keep
their own head count and size (padded to a multiple of 8). PyTorch picks the
kernel (cuDNN attention on Hopper GPUs when it takes the sizes, else the
memory-efficient or the math kernel).
"""

import torch
import torch.nn.functional as F

from collab_keras.ops.collaborative_dot_product_attention import round_up

# cuDNN attention takes head sizes up to 256; on an H200 (PyTorch 2.11) its
# forward+backward at head size 192 took longer than at 256 (1.61 vs 1.22 ms,
# batch 32, length 512, 12 heads: docs/performance.md), so key widths between
# 128 and 256 are zero-padded to 256.
CUDNN_MAX_WIDTH = 256


def key_width(width):
    """Head size given to the kernel for a shared key of `width`."""
    width = round_up(width, 8)
    return CUDNN_MAX_WIDTH if 128 < width < CUDNN_MAX_WIDTH else width


def attention(query, key, value, mixing, mask, scale):
    """query (B, T, K), key (B, S, K), value (B, S, N, V), mixing (N, K),
    mask (B, 1, T, S) bool or None -> (B, T, N, V).

    PyTorch chooses the kernel.
    """
    value_dim = value.shape[-1]
    width = round_up(value_dim, 8)
    mixed = torch.einsum("btk,nk->bntk", query, mixing)
    key = key.unsqueeze(1)  # (B, 1, S, K)
    padded = key_width(key.shape[-1]) if query.is_cuda else key.shape[-1]
    if padded != key.shape[-1]:
        mixed = F.pad(mixed, (0, padded - key.shape[-1]))
        key = F.pad(key, (0, padded - key.shape[-1]))
    value = value.permute(0, 2, 1, 3)  # (B, N, S, V)
    if width != value_dim:
        value = F.pad(value, (0, width - value_dim))
    # One key head read by every query head: faster than a stride-0 expanded
    # or a copied key (docs/performance.md, attention core table).
    output = F.scaled_dot_product_attention(
        mixed, key, value, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return output.permute(0, 2, 1, 3)[..., :value_dim]  # (B, T, N, V)
