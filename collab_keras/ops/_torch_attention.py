"""PyTorch kernel of collaborative attention: `scaled_dot_product_attention`.

The shared key is ONE key head that every query head reads
(`enable_gqa=True`), so it is neither copied nor broadcast; the values keep
their own head count and size (padded to a multiple of 8). PyTorch picks the
kernel (cuDNN attention on Hopper GPUs when it takes the sizes, else the
memory-efficient or the math kernel).
"""

import torch
import torch.nn.functional as F

# How the shared key reaches the kernel: "gqa" (one key head, enable_gqa),
# "expand" (a stride-0 view with one head per query head) or "copy".
KEY_LAYOUT = "gqa"


def attention(query, key, value, mixing, mask, scale, flash_attention=None):
    """query (B, T, K), key (B, S, K), value (B, S, N, V), mixing (N, K),
    mask (B, 1, T, S) bool or None -> (B, T, N, V).

    PyTorch chooses the kernel, whatever `flash_attention` says (the layer
    decides whether to come here at all).
    """
    num_heads, value_dim = value.shape[-2], value.shape[-1]
    width = -(-value_dim // 8) * 8
    mixed = torch.einsum("btk,nk->bntk", query, mixing.to(query.dtype))
    key = key.unsqueeze(1)  # (B, 1, S, K)
    value = value.permute(0, 2, 1, 3)  # (B, N, S, V)
    if width != value_dim:
        value = F.pad(value, (0, width - value_dim))
    gqa = KEY_LAYOUT == "gqa"
    if not gqa:
        key = key.expand(-1, num_heads, -1, -1)
        if KEY_LAYOUT == "copy":
            key = key.contiguous()
    output = F.scaled_dot_product_attention(
        mixed, key, value, attn_mask=mask, scale=scale, enable_gqa=gqa
    )
    return output.permute(0, 2, 1, 3)[..., :value_dim]  # (B, T, N, V)
