"""Decoding attention for JAX on GPUs: a Pallas (Triton) flash-decoding kernel.

For a decoding step (a few query positions `T` over a cache of `S`
positions) it computes, for every head `h` and query row `t`, exactly,

    softmax_j(scale * ((q_t * m_h) . k_j + c_h(j)) + mask) @ v_h

from the shared query `q` (B, T, K), the mixing `m` (N, K) and the caches of
`CachedCollaborativeAttention` as they lie: the shared key (B, S, K), the
values (B, S, N, V) and the content term (B, S, N). One kernel reads each
cache once: a program takes one sequence and one split of the keys
(flash-decoding: Dao et al., 2023), holds the mixed query of all heads and
rows as one `(N T, K)` tile, and per key block loads the key tile once for
every head (one `(N T, K) x (K, block)` product), adds the content term,
masks, and takes each head's values with its own product (the rows of other
heads are not used, so no head's NaN or Inf reaches another). Each program
writes its partial maximum, sum and output (float32); a small combine
(XLA) merges the splits. The splits are chosen so that the programs fill
the card in one wave (`splits_for`); the key block is the largest whose
tiles fit in shared memory two pipeline stages deep (`default_config`).

Masks are read as they are: any boolean mask broadcastable to
`(B, N, T, S)` (the layer's decoding mask, `(B|1, T, S)` or per head), as an
int8 tile per key block. Rows with no key to attend to give 0 (as on the
explicit path: the masked weights are 0, so NaN or Inf in the values of
masked keys still propagate, `0 * inf`). Float32 accumulation, base-2
exponentials, scores in float32 (never rounded to the input dtype).

Sizes that are not powers of two (a key width of 192, 12 heads, a cache of
2047 positions) are read with masked loads: no operand is padded or copied.
On CPUs the kernel runs in Pallas' interpreter (`interpret=True`, the
tests); `chosen` says when the layer runs the compiled kernel.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from collab_keras.ops import _attention_utils
from collab_keras.ops._attention_utils import tile_width

_LOG2E = math.log2(math.e)
_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
MAX_ROWS = 64  # query positions x heads
MAX_KEY_WIDTH = 512
MAX_VALUE_WIDTH = 256


class Config(NamedTuple):
    """Key block, splits of the keys, warps and pipeline stages."""

    block_k: int = 32  # a power of two, at least 16
    splits: int = 0  # 0: one wave of programs over the card (`splits_for`)
    warps: int = 4
    stages: int = 2


# Shared memory the pipelined cache tiles may take (of an H200's 227 KiB per
# block): `stages` key blocks of key, content and every head's values.
SHARED_MEMORY_BUDGET = 160 * 1024


def _tile_bytes(block_k, width, heads, value_width, itemsize=2):
    """Bytes of one key block's cache tiles as the kernel loads them."""
    heads_p = max(16, _power_of_two(heads))
    return block_k * itemsize * (
        tile_width(width) + heads * tile_width(value_width) + heads_p
    )


def default_config(width, heads, value_width, itemsize=2):
    """The largest key block (64, 32 or 16) whose tiles fit the shared
    memory budget two pipeline stages deep (one, if none does)."""
    for stages in (2, 1):
        for block_k in (64, 32, 16):
            tiles = _tile_bytes(block_k, width, heads, value_width, itemsize)
            if stages * tiles <= SHARED_MEMORY_BUDGET:
                return Config(block_k=block_k, stages=stages)
    return None


# An H200: 132 multiprocessors (`_attention_utils.PROGRAMS_TO_FILL` is two
# programs on each), 228 KiB of shared memory on each.
MULTIPROCESSORS = _attention_utils.PROGRAMS_TO_FILL // 2
SHARED_MEMORY_PER_MULTIPROCESSOR = 228 * 1024


def splits_for(batch, keys, block_k, tile_bytes):
    """Splits of the keys: as many programs as run at once on an H200 (one
    wave: the programs that fit a multiprocessor's shared memory with
    `tile_bytes` each, on every multiprocessor), at least one split, at
    most one per key block."""
    blocks = -(-keys // block_k)
    resident = max(1, SHARED_MEMORY_PER_MULTIPROCESSOR // max(tile_bytes, 1))
    return max(1, min(blocks, resident * MULTIPROCESSORS // max(batch, 1)))


def _supported(query, key, value, content, mask):
    """`None` when the kernel takes these shapes and dtypes, else why not."""
    if len(query.shape) != 3 or len(key.shape) != 3 or len(value.shape) != 4:
        return "ranks"
    dtype = jnp.dtype(query.dtype)
    if dtype not in [jnp.dtype(d) for d in _DTYPES]:
        return f"dtype {dtype}"
    operands = [key, value] + ([] if content is None else [content])
    if any(jnp.dtype(x.dtype) != dtype for x in operands):
        return "mixed dtypes"
    batch, rows, width = query.shape
    keys, heads, value_width = value.shape[1:]
    if rows * heads > MAX_ROWS or rows == 0:
        return "rows"
    if 0 in (batch, keys):
        return "empty"
    if width > MAX_KEY_WIDTH or value_width > MAX_VALUE_WIDTH:
        return "width"
    if default_config(width, heads, value_width, dtype.itemsize) is None:
        return "tiles beyond shared memory"
    if key.shape != (batch, keys, width) or (
        content is not None and content.shape != (batch, keys, heads)
    ):
        return "cache shapes"
    if mask is not None:
        shape = _mask_shape(mask.shape)
        if len(shape) != 4 or any(
            d not in (1, full)
            for d, full in zip(shape, (batch, heads, rows, keys))
        ):
            return "mask shape"
    return None


def _mask_shape(shape):
    """A mask's shape with the heads axis (and any missing leading axes)
    added as the layer's softmax adds them: `(T, S)` -> `(1, 1, T, S)`,
    `(B, T, S)` -> `(B, 1, T, S)`."""
    shape = tuple(shape)
    while len(shape) < 4:
        shape = shape[:-2] + (1,) + shape[-2:]
    return shape


def applies(query, key, value, content=None, mask=None):
    """Whether the compiled kernel runs these inputs on this device: a GPU,
    float16/bfloat16/float32 inputs of one dtype, `T * N <= 64` query rows,
    key width up to 512, value width up to 256, a mask (if any) that
    broadcasts to `(B, N, T, S)`."""
    from collab_keras.ops import _jax_attention

    return (
        _jax_attention.on_gpu()
        and _supported(query, key, value, content, mask) is None
    )


def chosen(query, key, value, content=None, mask=None):
    """Whether `CachedCollaborativeAttention`'s decoding core runs this
    kernel on JAX: where it `applies`, in bfloat16 or float16 (float32
    keeps the explicit core, whose products XLA runs at full precision)."""
    return (
        jnp.dtype(query.dtype) in _HALF
        and applies(query, key, value, content, mask)
    )


def attention(query, key, value, mixing, content=None, mask=None, scale=1.0,
              *, config=None, interpret=False):
    """Attention of a few query positions over a cache, one kernel.

    Args:
        query: Shared query, `(B, T, K)`, `T * N <= 64`.
        key: Key cache, `(B, S, K)`.
        value: Value cache, `(B, S, N, V)`.
        mixing: Mixing, `(N, K)`, cast to the query's dtype.
        content: Optional unscaled content cache `(B, S, N)`.
        mask: Optional boolean mask broadcastable to `(B, N, T, S)` (a
            rank-3 mask is `(B, T, S)`; `True` where a query may attend).
        scale: Score scale (it multiplies the content term too).
        config: Optional `Config`.
        interpret: Run the kernel in Pallas' interpreter (CPUs, tests).

    Returns:
        `(B, T, N, V)` in the query's dtype.
    """
    reason = _supported(query, key, value, content, mask)
    if reason is not None:
        raise ValueError(
            "The Pallas decoding kernel does not take these inputs "
            f"({reason}). Received: query.shape={query.shape}, "
            f"key.shape={key.shape}, value.shape={value.shape}, "
            f"content.shape={None if content is None else content.shape}, "
            f"mask.shape={None if mask is None else mask.shape}, "
            f"dtype={query.dtype}"
        )
    batch, rows, width = query.shape
    keys, heads, value_width = value.shape[1:]
    itemsize = jnp.dtype(query.dtype).itemsize
    config = config or default_config(width, heads, value_width, itemsize)
    block_k = config.block_k
    if block_k < 16 or block_k & (block_k - 1):
        raise ValueError(
            "`config.block_k` must be a power of two, at least 16. "
            f"Received: config.block_k={block_k}"
        )
    tiles = config.stages * _tile_bytes(
        config.block_k, width, heads, value_width, itemsize)
    splits = config.splits or splits_for(batch, keys, config.block_k, tiles)
    blocks = -(-keys // config.block_k)
    per_split = -(-blocks // splits)
    splits = -(-blocks // per_split)  # no split left without a block
    rows_p = _power_of_two(rows)
    # Heads padded to a power of two, and so that the tile has 16 rows.
    heads_p = max(_power_of_two(heads), 16 // rows_p)
    mask_arr = None
    if mask is not None:
        mask = jnp.reshape(mask.astype(jnp.int8), _mask_shape(mask.shape))
        mask_arr = jnp.broadcast_to(  # keys and rows; batch and heads kept
            mask, mask.shape[:2] + (rows, keys)
        )
    static = _Static(
        rows=rows, heads=heads, width=width, value_width=value_width,
        keys=keys, rows_p=rows_p, heads_p=heads_p,
        width_p=tile_width(width), value_width_p=tile_width(value_width),
        per_split=per_split, scale=float(scale), config=config,
        mask_batch=mask_arr is not None and mask_arr.shape[0] > 1,
        mask_heads=mask_arr is not None and mask_arr.shape[1] > 1,
    )
    args = [query, mixing.astype(query.dtype), key, value]
    args += [x for x in (content, mask_arr) if x is not None]
    tile = heads_p * rows_p
    out, top, total = pl.pallas_call(
        functools.partial(
            _kernel, static=static, has_content=content is not None,
            has_mask=mask_arr is not None,
        ),
        grid=(batch, splits),
        out_shape=[
            jax.ShapeDtypeStruct(
                (batch, splits, tile, static.value_width_p), jnp.float32
            ),
            jax.ShapeDtypeStruct((batch, splits, tile), jnp.float32),
            jax.ShapeDtypeStruct((batch, splits, tile), jnp.float32),
        ],
        compiler_params=_params(config.warps, config.stages),
        interpret=bool(interpret),
        name="collaborative_decode_attention",
    )(*args)
    out = _combine(out, top, total)  # (B, Np * Tp, Vp)
    out = out.reshape(batch, heads_p, rows_p, -1)  # (B, Np, Tp, Vp)
    out = out[:, :heads, :rows, :value_width]
    return jnp.transpose(out, (0, 2, 1, 3)).astype(query.dtype)  # (B, T, N, V)


class _Static(NamedTuple):
    rows: int  # T
    heads: int  # N
    width: int  # K
    value_width: int  # V
    keys: int  # S
    rows_p: int  # the padded sizes of the tiles (powers of two)
    heads_p: int
    width_p: int
    value_width_p: int
    per_split: int  # key blocks per program
    scale: float
    config: Config
    mask_batch: bool  # whether the mask has a batch axis (else 1)
    mask_heads: bool  # whether the mask has a heads axis (else 1)


def _power_of_two(n):
    """The smallest power of two at least `n`."""
    return 1 << (int(n) - 1).bit_length()


def _params(warps, stages):
    from jax.experimental.pallas import triton as plgpu

    return plgpu.CompilerParams(num_warps=warps, num_stages=stages)


def _load(view, masks):
    """`view` loaded with the `masks` (None: that axis is in bounds) and'ed;
    0 where masked (never uninitialized memory, which could be NaN)."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return view[...]
    from jax.experimental.pallas import triton as plgpu

    keep = functools.reduce(jnp.logical_and, masks)
    return plgpu.load(view, mask=keep, other=0)


def _below(size, padded, limit):
    """`arange(padded) < limit`, or None when nothing is padded."""
    return None if padded == limit else jnp.arange(size) < limit


def _dot(a, b, trans_b=False):
    """`a @ b` (`b` transposed if asked) with float32 accumulation."""
    dims = (((1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _kernel(*refs, static, has_content, has_mask):
    q_ref, m_ref, k_ref, v_ref = refs[:4]
    rest = list(refs[4:])
    c_ref = rest.pop(0) if has_content else None
    mask_ref = rest.pop(0) if has_mask else None
    o_ref, top_ref, total_ref = rest
    st, bk = static, static.config.block_k
    tp, np_, kp, vp = st.rows_p, st.heads_p, st.width_p, st.value_width_p
    tile = np_ * tp  # rows of the tile: head-major, (h, t) -> h * Tp + t
    b, split = pl.program_id(0), pl.program_id(1)
    dtype = q_ref.dtype

    # The mixed query of every head and row, rounded once to the input
    # dtype as the explicit path's einsum rounds it.
    row_t, head_n = _below(tp, tp, st.rows), _below(np_, np_, st.heads)
    col_k = _below(kp, kp, st.width)
    q = _load(q_ref.at[b, pl.ds(0, tp), pl.ds(0, kp)],
              [None if row_t is None else row_t[:, None],
               None if col_k is None else col_k[None, :]])  # (Tp, Kp)
    m = _load(m_ref.at[pl.ds(0, np_), pl.ds(0, kp)],
              [None if head_n is None else head_n[:, None],
               None if col_k is None else col_k[None, :]])  # (Np, Kp)
    qm = m.astype(jnp.float32)[:, None, :] * q.astype(jnp.float32)[None, :, :]
    qm = qm.reshape(tile, kp).astype(dtype)  # (Np * Tp, Kp)
    head_of_row = lax.div(jnp.arange(tile, dtype=jnp.int32), tp)  # (tile,)
    blocks = -(-st.keys // bk)
    first = split * st.per_split
    upper = jnp.minimum(st.per_split, blocks - first)

    def body(jj, carry):
        acc, top, total = carry
        col0 = (first + jj) * bk
        cols = col0 + jnp.arange(bk, dtype=jnp.int32)
        in_range = None if st.keys % bk == 0 else cols < st.keys  # (bk,)
        key_rows = None if in_range is None else in_range[:, None]
        k = _load(k_ref.at[b, pl.ds(col0, bk), pl.ds(0, kp)],
                  [key_rows, None if col_k is None else col_k[None, :]])
        s = _dot(qm, k, trans_b=True)  # (tile, bk)
        if c_ref is not None:
            c = _load(c_ref.at[b, pl.ds(col0, bk), pl.ds(0, np_)],
                      [key_rows, None if head_n is None else head_n[None, :]])
            c = jnp.transpose(c.astype(jnp.float32))  # (Np, bk)
            c = jnp.broadcast_to(c[:, None, :], (np_, tp, bk))
            s = s + c.reshape(tile, bk)
        s = s * (st.scale * _LOG2E)
        valid = None
        if in_range is not None:
            valid = jnp.broadcast_to(in_range[None, :], (tile, bk))
        if mask_ref is not None:
            mh = np_ if st.mask_heads else 1
            keep = _load(
                mask_ref.at[b if st.mask_batch else jnp.int32(0), pl.ds(0, mh),
                            pl.ds(0, tp), pl.ds(col0, bk)],
                [None if head_n is None or mh == 1
                 else head_n[:, None, None],
                 None if row_t is None else row_t[None, :, None],
                 None if in_range is None else in_range[None, None, :]],
            ) != 0  # (Np or 1, Tp, bk)
            keep = jnp.broadcast_to(keep, (np_, tp, bk)).reshape(tile, bk)
            valid = keep if valid is None else valid & keep
        if valid is not None:
            s = jnp.where(valid, s, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(s, axis=1))
        safe = jnp.where(new_top == -jnp.inf, 0.0, new_top)
        alpha = jnp.exp2(top - safe)
        p = jnp.exp2(s - safe[:, None])  # (tile, bk)
        total = total * alpha + jnp.sum(p, axis=1)
        p = p.astype(dtype)
        out = jnp.zeros((tile, vp), jnp.float32)
        col_v = _below(vp, vp, st.value_width)
        for h in range(st.heads):  # each head's values, read once
            v = _load(v_ref.at[b, pl.ds(col0, bk), jnp.int32(h), pl.ds(0, vp)],
                      [key_rows, None if col_v is None else col_v[None, :]])
            # Every row times head h's values; only head h's rows are kept.
            out = jnp.where((head_of_row == h)[:, None], _dot(p, v), out)
        return acc * alpha[:, None] + out, new_top, total

    acc = jnp.zeros((tile, vp), jnp.float32)
    top = jnp.full((tile,), -jnp.inf, jnp.float32)
    total = jnp.zeros((tile,), jnp.float32)
    acc, top, total = lax.fori_loop(0, upper, body, (acc, top, total))
    o_ref[b, split, :, :] = acc
    top_ref[b, split, :] = top
    total_ref[b, split, :] = total


def _combine(out, top, total):
    """Merges the splits' partial outputs `(B, P, R, V)`, maxima and sums
    `(B, P, R)` (base 2) into `(B, R, V)`. Rows with no key give 0 (their
    partial outputs are the masked weights, 0, times the values)."""
    big = jnp.max(top, axis=1, keepdims=True)  # NaN propagates
    weight = jnp.exp2(top - jnp.where(big == -jnp.inf, 0.0, big))  # (B, P, R)
    total = jnp.sum(weight * total, axis=1)  # (B, R)
    out = jnp.sum(weight[..., None] * out, axis=1)  # (B, R, V)
    attends = total > 0
    return out / jnp.where(attends, total, 1.0)[..., None]


def reference(query, key, value, mixing, content=None, mask=None, scale=1.0):
    """The explicit computation in float32 (for tests): masked weights are
    0, rows with no key give 0 (times the values: NaN propagates)."""
    f32 = jnp.float32
    mixed = jnp.einsum("btk,nk->btnk", query, mixing.astype(query.dtype))
    scores = jnp.einsum("btnk,bsk->bnts", mixed.astype(f32), key.astype(f32))
    if content is not None:
        content = jnp.transpose(content.astype(f32), (0, 2, 1))  # (B, N, S)
        scores = scores + content[:, :, None]
    scores = scores * scale
    valid = jnp.ones(scores.shape, bool)
    if mask is not None:
        valid = valid & jnp.reshape(mask.astype(bool), _mask_shape(mask.shape))
    masked = jnp.where(valid, scores, -jnp.inf)
    top = jnp.max(masked, axis=-1, keepdims=True)
    top = jnp.where(top == -jnp.inf, 0.0, top)
    weights = jnp.where(valid, jnp.exp(masked - top), 0.0)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(total > 0, total, 1.0)
    out = jnp.einsum("bnts,bsnv->btnv", weights, value.astype(f32))
    return out.astype(query.dtype)
