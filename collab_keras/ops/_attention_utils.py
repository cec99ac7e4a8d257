"""Helpers shared by the attention kernels of every backend.

A leaf module: it imports only Keras, so that the dispatch
(`collaborative_dot_product_attention.py`) and every backend kernel
(`_portable_attention.py`, `_jax_attention.py`, `_torch_attention.py`,
`_pallas_attention.py`, `_triton_attention.py`) can import it without an
import cycle.
"""

import functools

from keras import ops


def pad_last(x, width):
    """Zero-pads the last axis of `x` to `width`."""
    extra = width - x.shape[-1]
    if extra == 0:
        return x
    return ops.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[0, extra]])


def round_up(n, multiple):
    """`n` rounded up to a multiple of `multiple`."""
    return -(-n // multiple) * multiple


def unmask_empty_rows(mask):
    """Lets query rows with no key to attend to attend to every key.

    No kernel then sees an all-masked softmax (which some turn into NaN and
    others into a uniform average); `zero_empty_rows` sets their outputs to
    0 afterwards, as the explicit path gives.

    Args:
        mask: Boolean mask `(B, 1|N, T, S)`.

    Returns:
        The mask with those rows unmasked, and `attends` `(B, 1|N, T, 1)`:
        whether each row has a key.
    """
    attends = ops.any(mask, axis=-1, keepdims=True)  # (B, 1|N, T, 1)
    return ops.logical_or(mask, ops.logical_not(attends)), attends


def zero_empty_rows(output, attends):
    """`output` `(B, T, N, V)` with the rows where `attends` is False at 0."""
    attends = ops.transpose(attends, (0, 2, 1, 3))  # (B, T, 1|N, 1)
    return ops.where(attends, output, ops.zeros_like(output))


def combine_causal(mask, query_length, key_length):
    """`mask` `(B, 1|N, T, S)` and the causal mask `(1, 1, T, S)`."""
    rows = ops.expand_dims(ops.arange(query_length), 1)
    columns = ops.expand_dims(ops.arange(key_length), 0)
    causal = ops.greater_equal(rows, columns)[None, None]  # (1, 1, T, S)
    return causal if mask is None else ops.logical_and(mask, causal)


def unsupported_inputs_error(kernel, reason, query, key, value, mask):
    """The `ValueError` of a GPU kernel (`kernel`: its name) called with
    inputs it does not take (`reason`), echoing their shapes and dtype."""
    return ValueError(
        f"The {kernel} collaborative attention kernel does not take these "
        f"inputs ({reason}). Received: query.shape={tuple(query.shape)}, "
        f"key.shape={tuple(key.shape)}, value.shape={tuple(value.shape)}, "
        f"mask.shape={None if mask is None else tuple(mask.shape)}, "
        f"dtype={query.dtype}"
    )


def tile_width(n):
    """The kernel tile for a width of `n`: the next power of two, at least
    16 (the smallest matrix-product tile of the GPU kernels)."""
    return max(16, 1 << (int(n) - 1).bit_length())


def key_tiles(width):
    """Widths of the tiles the GPU kernels cut a shared key `width` wide
    into (each a power of two, `tile_width`): one tile where padding to the
    next power of two wastes nothing a split would save, else the largest
    power of two in `width` (at most 256) and a tile for the rest. So the
    scores of keys 192 wide take 128 + 64 columns, 384 wide 256 + 128,
    not 256 and 512: Triton's tiles are powers of two, the FLOPs need not
    be."""
    width = int(width)
    whole = tile_width(width)
    first = min(256, 1 << (width.bit_length() - 1))
    if width <= first:
        return (whole,)
    split = (first, tile_width(width - first))
    return (whole,) if whole <= 256 and whole <= sum(split) else split


# Shared memory a block of the GPU kernels may use on an H100 / H200.
SHARED_MEMORY_BYTES = 227 * 1024


def fit_tiles(resident, streamed, stages, resident_width, streamed_width,
              itemsize, mask_itemsize=0, limit=SHARED_MEMORY_BYTES):
    """Tile rows of a GPU kernel that holds one `(resident, resident_width)`
    tile and `stages` buffers of `(streamed, streamed_width)` tiles in shared
    memory (a forward or query kernel: the query tile, then key and value
    tiles; a key kernel: the key and value tiles, then query and output
    gradient tiles), plus, with a general mask, `stages` `(resident,
    streamed)` mask tiles of `mask_itemsize` bytes, as `(resident,
    streamed)`: the given rows, the larger halved first (not below 16) until
    they fit in `limit` bytes with 1 KiB to spare. Tile sizes measured for
    values 64 wide and no mask would not fit wider values (e.g. 80, a
    128-wide tile), a mask tile or float32 (the H200 refused them)."""
    def size(resident, streamed):
        return ((resident * resident_width
                 + stages * streamed * streamed_width) * itemsize
                + stages * resident * streamed * mask_itemsize + 1024)

    while size(resident, streamed) > limit and max(resident, streamed) > 16:
        if streamed >= resident:
            streamed //= 2
        else:
            resident //= 2
    return resident, streamed


# The tile rows of a GPU kernel's `Config` (Triton's and Pallas').
_TILE_ROWS = ("block_q", "block_k", "block_q_bwd", "block_k_bwd",
              "block_q_ds", "block_k_ds")


def halved_tiles(config):
    """A GPU kernel's tile `config` with every tile's rows halved (not below
    16): the float32 tiles, twice the bytes and registers per row."""
    return config._replace(**{name: max(16, getattr(config, name) // 2)
                              for name in _TILE_ROWS})


def fitted_config(config, keys, values, itemsize, mask_itemsize=0):
    """A GPU kernel's tile `config` (the `Config` of the Triton or the Pallas
    kernel) with tiles that fit in shared memory (`fit_tiles`; `keys`,
    `values`: the widths of the key's and the values' tiles): the forward
    and query kernels hold a query tile and stream key and value tiles, the
    key kernels the reverse."""
    fit = functools.partial(fit_tiles, itemsize=itemsize,
                            mask_itemsize=mask_itemsize)
    both = keys + values
    bq, bk = fit(config.block_q, config.block_k, config.stages, keys, both)
    bk_ds, bq_ds = fit(config.block_k_ds, config.block_q_ds,
                       config.stages_ds, both, both)
    bk_bwd, bq_bwd = fit(config.block_k_bwd, config.block_q_bwd,
                         config.stages, both, both)
    bq_bwd, bk_bwd = fit(bq_bwd, bk_bwd, config.stages, keys, both)
    return config._replace(block_q=bq, block_k=bk, block_q_ds=bq_ds,
                           block_k_ds=bk_ds, block_q_bwd=bq_bwd,
                           block_k_bwd=bk_bwd)


# Programs that fill an H200: two per multiprocessor (132 of them).
PROGRAMS_TO_FILL = 264


def head_groups(num_heads, programs):
    """Groups of heads of the GPU kernels' backward passes: the fewest (a
    divisor of `num_heads`) that, with `programs` programs per group, give
    `PROGRAMS_TO_FILL`, so that short sequences and small batches fill the
    card."""
    for groups in range(1, num_heads + 1):
        if num_heads % groups == 0 and programs * groups >= PROGRAMS_TO_FILL:
            return groups
    return num_heads


# Bytes that the GPU kernels' backward with the score gradient `(B', S, N,
# T)` written may hold at once (a chunk of batch rows, `score_gradient_rows`):
# 1 GiB, a transient buffer next to a GPU's tens of GiB. What it caps is
# what each kernel counts per query: the score gradient's row (Triton), or
# that and the mixed query and its float32 gradient (Pallas).
SCORE_GRADIENT_BYTES = 1 << 30


def score_gradient_rows(batch, heads, length, bytes_per_query,
                        budget=SCORE_GRADIENT_BYTES):
    """Batch rows per chunk of the GPU kernels' backward with the score
    gradient written: the most rows (at most `batch`) whose buffers, of
    `bytes_per_query` per head and query (the score gradient's row and what
    else the kernel keeps per query), fit in `budget`; 0 when one row does
    not (the flash backward then runs)."""
    per_row = heads * length * bytes_per_query
    return min(batch, budget // max(per_row, 1))


def score_gradient_heads(heads, length, bytes_per_query,
                         budget=SCORE_GRADIENT_BYTES):
    """Heads per chunk of one batch row where the whole row does not fit
    in `budget` (`score_gradient_rows` gave 0): the most heads (at most
    `heads`) whose buffers, of `bytes_per_query` per head and query, fit;
    0 when one head does not (the flash backward then runs): the rows of
    `score_gradient_rows` with a head for a row."""
    return score_gradient_rows(heads, 1, length, bytes_per_query, budget)
