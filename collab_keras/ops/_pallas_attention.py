"""Fused collaborative attention for JAX on GPUs: a Pallas (Triton) kernel.

For every head `h` it computes, exactly,

    softmax_j(scale * ((q_i * m_h) . k_j + c_h(j)) + mask) @ v_h

from the shared query `q` (B, T, K), the shared key `k` (B, S, K), the
per-head values `v` (B, S, N, V), the mixing `m` (N, K) and the optional
content term `c` (B, S, N), in float32 accumulation, with a FlashAttention-2
online softmax (Dao, 2023) and backward pass. What differs from a stock
multi-head kernel:

- the mixing `m_h` is applied to the query tile inside the kernel: no
  `(B, T, N, K)` tensor is written, and the key is never broadcast;
- scores are `K` wide and values `V` wide (no padding of the values to the
  key width); Triton's tiles are powers of two, so the key width is cut
  into one or two tiles (`_attention_utils.key_tiles`: 192 as 128 + 64,
  384 as 256 + 128) whose products add up, and the value width is rounded
  up to one (the operands are zero-padded then, as are lengths that are not
  a multiple of the tiles; padded keys are masked inside);
- the content term is added to the scores inside the kernel;
- the causal mask and key-padding masks `(B, 1, 1, S)` are computed or read
  per key block inside the kernel; any other boolean mask is read as an
  int8 tile per block (the fallback); rows with no key to attend to give 0;
  NaN propagates;
- backward, two forms, both exact (the same products, float32
  accumulation, one rounding of the score gradient to the input dtype
  before the products that take it, as in the forward's `P V`):

  * written score gradient (`_backward_written`, the default where it
    fits): one kernel per key block (`_key_kernel`, `write_ds`) loops over
    all heads and query blocks with the key tile loaded once, recomputes
    the probabilities, accumulates the values' and content term's
    gradients and writes the score gradient `dS` `(B, S, N, T)` (the
    tile's query axis contiguous in memory, as it is computed; `(S, N T)`
    a plain matrix for the key's product); then XLA
    products (cuBLAS) take the width-`K` part: `dS_h k` per head gives the
    mixed query's gradient (hence the query's, summed over heads with
    `m_h`, and the mixing's, summed over batch and queries with `q`, both
    in one pass of `_mixing_kernel`, which also writes the mixed query),
    and one contraction of `dS` with the mixed query `(B, N, T, K)` over heads
    and queries gives the key's. Why: the width-`K` products are the bulk
    of the backward's FLOPs (`K` 256 against `V` 64), and the flash form
    runs them twice in Triton-lowered kernels (once per kernel, each
    recomputing the scores at width `K`) with a `(block_k, K)` float32 key
    accumulator that forces small tiles; cuBLAS runs them at about 2.5x
    that rate on an H200, and the kernel without the key accumulator
    takes larger tiles. The cost is memory: `dS`, the mixed query and its
    float32 gradient are written in chunks of batch rows of at most
    `Config.score_gradient_bytes` (1 GiB by default, `written_rows`), one
    chunk after the other (`lax.map`); with the causal mask the kernel
    writes zeros to the blocks it skips.
  * flash (`_backward_flash`, where one batch row's `dS` does not fit, or
    with `score_gradient_bytes=0`): one kernel per key block loops over all
    heads with the key tile loaded once, accumulating the shared key's
    gradient over heads (plus the values' and content term's gradients);
    one kernel per query block loops over all heads, accumulating the
    shared query's gradient and partial sums of the mixing gradient.

On CPUs the same kernels run in Pallas' interpreter (`interpret=True`,
used by the tests); `applies` says when the compiled kernel runs.
"""

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from collab_keras.ops import _attention_utils
from collab_keras.ops._attention_utils import key_tiles
from collab_keras.ops._attention_utils import round_up
from collab_keras.ops._attention_utils import tile_width

_LOG2E = math.log2(math.e)
_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
MAX_KEY_WIDTH = 512
MAX_VALUE_WIDTH = 256


class Config(NamedTuple):
    """Tile sizes and warps of the kernels (all powers of two), and the
    memory of the backward with the score gradient written."""

    block_q: int = 64  # forward
    block_k: int = 64
    warps: int = 4
    stages: int = 2
    block_q_bwd: int = 64  # flash backward (both kernels)
    block_k_bwd: int = 64
    warps_bwd: int = 8
    head_groups: int = 0  # backward: heads split over this many programs
    # (0: enough groups to fill the card, `head_groups`)
    block_q_ds: int = 64  # backward with the score gradient written
    block_k_ds: int = 64
    warps_ds: int = 4
    stages_ds: int = 2
    block_t_mix: int = 64  # and its `_mixing_kernel` (query rows, key
    block_c_mix: int = 64  # columns; the divisors of the padded sizes)
    # Bytes that the written backward's chunk of batch rows may take (the
    # score gradient, the mixed query and its gradient, `written_rows`); 0:
    # always the flash backward.
    score_gradient_bytes: int = _attention_utils.SCORE_GRADIENT_BYTES


def default_config(key_width, value_width, dtype=jnp.bfloat16,
                   full_mask=False):
    """Tile sizes by the padded key width and dtype, measured on an H200
    (values 64 wide, no mask), made smaller where the kernels' tiles would
    not fit in shared memory (`_attention_utils.fit_tiles`: wider values,
    a general mask's int8 tiles (`full_mask`), float32)."""
    width = tile_width(key_width)
    # Keys up to 128 wide keep the flash backward (the rule at 128 was
    # measured with it; on torch's twin kernel it is the faster one there).
    if width <= 64:
        config = Config(block_q=128, block_k=64, warps=4,
                        score_gradient_bytes=0)
    elif width <= 128:
        config = Config(block_q=128, block_k=64, warps=8,
                        score_gradient_bytes=0)
    elif width <= 256:
        config = Config(block_q=64, block_k=64, warps=4, block_q_bwd=64,
                        block_k_bwd=32, warps_bwd=4, block_q_ds=64,
                        block_k_ds=128, warps_ds=8, stages_ds=3)
    else:
        config = Config(block_q=64, block_k=32, warps=4, block_q_bwd=32,
                        block_k_bwd=32, warps_bwd=8, block_q_ds=32,
                        block_k_ds=64, warps_ds=8)
    if jnp.dtype(dtype).itemsize == 4:
        config = _attention_utils.halved_tiles(config)
    return _attention_utils.fitted_config(
        config, sum(key_tiles(key_width)), tile_width(value_width),
        jnp.dtype(dtype).itemsize, 1 if full_mask else 0)


def _key_block(config):
    """The multiple the keys are padded to: the largest key tile."""
    return max(config.block_k, config.block_k_bwd, config.block_k_ds)


def head_groups(num_heads, batch, length, block):
    """Groups of heads in the backward kernels (`_attention_utils.head_groups`)
    for `batch` sequences of `length` in blocks of `block`."""
    return _attention_utils.head_groups(num_heads, batch * -(-length // block))


def applies(query, key, value, mixing=None, content=None, mask=None,
            scale=None, is_causal=False):
    """Whether the compiled kernel runs these inputs on this device.

    A GPU (Triton lowering), float16/bfloat16/float32 inputs of one dtype,
    shared key width up to 512, value width up to 256, and a mask (if any)
    that broadcasts to `(B, 1 or N, T, S)`.
    """
    from collab_keras.ops import _jax_attention

    return _jax_attention.on_gpu() and _supported(query, key, value, mask) is None


# Where the automatic choice takes this kernel (`preferred`): shared key
# width (up to) -> query length below which, the narrowest entry that
# takes the width deciding; wider keys than every entry: never. Measured
# against the best other path (cuDNN where it takes the width, else the
# explicit one), attention core forward+backward, bf16, 12 heads, values
# 64 wide, content term on (benchmarks/attention_kernel.py, which prints
# this table as measured; docs/performance.md), and checked in whole
# training steps (benchmarks/model_step.py, bert_base 32 x 512):
# - Dk 128 (H200; flash backward): at length 128, 0.29 ms against cuDNN's
#   0.48 and the explicit path's 0.47; at 512 a tie with cuDNN, which is
#   faster from 2048 on;
# - Dk 192 (H100, 2026-12-08; 128 + 64 columns): 0.94 / 2.67 ms at 32 x 512
#   / 8 x 2048 against cuDNN's 1.74 / 4.10 (the key broadcast to every
#   head, the values padded to 192); bert_base step 36.9 ms against 54.1
#   on cuDNN (two calls an hour apart; their plain baselines 32.8 / 31.5);
# - Dk 256 (H200; score gradient written): 2.98 / 5.32 ms at lengths 2048 /
#   4096 against the explicit path's 8.54 / 16.77, 1.29 ms at 512 against
#   2.90 (cuDNN does not take the 257 columns of the content term); at
#   8192 one batch row's score gradient is over the memory budget and the
#   flash backward runs (21.7 ms; the explicit path not measured there, its
#   float32 scores take 6 GiB at batch 2): not taken;
# - Dk 384 (H100, 2026-12-08; 256 + 128 columns): 2.33 / 7.94 ms at 32 x 512
#   / 8 x 2048 against the explicit path's 3.98 / 11.37; the bert_base step
#   a tie (55.7 ms against 54.2 on the explicit path, two calls), which
#   keeps no (B, N, T, S) scores in memory. Lengths from 4096 not measured.
# Widths between entries take the wider entry's (320: 384's); wider than
# 384 (448, 512 compile and pass the checks) is not measured: not taken.
PREFERRED_LENGTHS = {128: 512, 192: 8192, 256: 8192, 384: 4096}


def preferred(length, key_width, dtype):
    """Whether the automatic choice runs this kernel: on a GPU, bfloat16 or
    float16, at query lengths below `PREFERRED_LENGTHS`'s entry for the
    width."""
    from collab_keras.ops import _jax_attention

    half = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    below = next((below for width, below in sorted(PREFERRED_LENGTHS.items())
                  if key_width <= width), 0)
    return (
        _jax_attention.on_gpu()
        and jnp.dtype(dtype) in half
        and length is not None
        and length < below
    )


def chosen(query, key, value, content=None, mask=None):
    """Whether the dispatch runs this kernel on JAX, for a fused call.

    Where `applies`, for bfloat16/float16: where the automatic choice
    prefers it (`preferred`), and, for shared key widths up to 256, where
    cuDNN does not take the inputs (`_jax_attention.cudnn_applies`, e.g.
    Dk 256 with the content column) and the fused path is asked for
    (`flash_attention=True`) at lengths the table does not cover. Else
    `_jax_attention.attention` runs it.
    """
    from collab_keras.ops import _jax_attention

    half = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if not applies(query, key, value, mask=mask):
        return False
    cudnn_takes = _jax_attention.cudnn_applies(
        key.shape[-1], value.shape[-1], query.dtype,
        use_content=content is not None,
        masked_lengths=None if mask is None else (query.shape[1], key.shape[1]),
    )
    if preferred(query.shape[1], key.shape[-1], query.dtype):
        return True
    return (
        jnp.dtype(query.dtype) in half
        and key.shape[-1] <= 256
        and not cudnn_takes
    )


def _supported(query, key, value, mask):
    """`None` when the kernel takes these shapes, else the reason."""
    if len(query.shape) != 3 or len(key.shape) != 3 or len(value.shape) != 4:
        return "ranks"
    dtype = jnp.dtype(query.dtype)
    if dtype not in [jnp.dtype(d) for d in _DTYPES]:
        return f"dtype {dtype}"
    if jnp.dtype(key.dtype) != dtype or jnp.dtype(value.dtype) != dtype:
        return "mixed dtypes"
    if query.shape[-1] > MAX_KEY_WIDTH or value.shape[-1] > MAX_VALUE_WIDTH:
        return "width"
    if mask is not None:
        batch, length = query.shape[:2]
        heads, keys = value.shape[2], key.shape[1]
        shape = (1,) * (4 - len(mask.shape)) + tuple(mask.shape)
        if len(shape) != 4 or any(
            d not in (1, full)
            for d, full in zip(shape, (batch, heads, length, keys))
        ):
            return "mask shape"
    return None


def attention(query, key, value, mixing, content=None, mask=None, scale=1.0,
              is_causal=False, *, config=None, interpret=False):
    """Collaborative attention, fused. Differentiable (`jax.custom_vjp`).

    Args:
        query: Shared query, `(B, T, K)`.
        key: Shared key, `(B, S, K)`.
        value: Per-head values, `(B, S, N, V)`.
        mixing: Mixing, `(N, K)`, cast to the query's dtype.
        content: Optional unscaled content term `y C`, `(B, S, N)`.
        mask: Optional boolean mask broadcastable to `(B, N, T, S)` (ranks
            2 to 4 are aligned to the right); `True` where a query may
            attend to a key.
        scale: Score scale.
        is_causal: Whether query `i` attends only to keys `j <= i`.
        config: Optional `Config` of tile sizes.
        interpret: Run the kernels in Pallas' interpreter (CPUs, tests).

    Returns:
        `(B, T, N, V)` in the query's dtype.
    """
    reason = _supported(query, key, value, mask)
    if reason is not None:
        raise _attention_utils.unsupported_inputs_error(
            "Pallas", reason, query, key, value, mask)
    batch, length, key_width = query.shape
    keys, num_heads, value_width = value.shape[1:]
    mask_kind = "none"
    if mask is not None:
        mask = mask.astype(jnp.bool_)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        # (B, S) key padding, or any (B, 1 or N, T, S) mask
        mask_kind = "keys" if mask.shape[1] == mask.shape[2] == 1 else "full"
    if config is None:
        config = default_config(key_width, value_width, query.dtype,
                                full_mask=mask_kind == "full")
    auto_groups = not config.head_groups
    if auto_groups:  # the flash backward's; the written one's: per chunk
        config = config._replace(head_groups=head_groups(
            num_heads, batch, max(length, keys), config.block_k_bwd))
    pad_t = max(config.block_q, config.block_q_bwd, config.block_q_ds)
    pad_s = _key_block(config)
    t_pad, s_pad = round_up(length, pad_t), round_up(keys, pad_s)
    k_pad, v_pad = sum(key_tiles(key_width)), tile_width(value_width)
    dtype = query.dtype
    q = _pad(query, (0, t_pad - length, k_pad - key_width))
    k = _pad(key, (0, s_pad - keys, k_pad - key_width))
    v = _pad(value, (0, s_pad - keys, 0, v_pad - value_width))
    m = _pad(mixing.astype(dtype), (0, k_pad - key_width))
    c = None
    if content is not None:
        c = jnp.transpose(content.astype(jnp.float32), (0, 2, 1))  # (B, N, S)
        c = _pad(c, (0, 0, s_pad - keys))
    mask_arr = None
    if mask_kind == "keys":
        mask_arr = jnp.broadcast_to(mask[:, 0, 0, :], (batch, keys))
        mask_arr = _pad(mask_arr.astype(jnp.int8), (0, s_pad - keys))
    elif mask_kind == "full":
        heads = mask.shape[1]
        mask_arr = jnp.broadcast_to(mask, (batch, heads, length, keys))
        mask_arr = _pad(mask_arr.astype(jnp.int8),
                        (0, 0, t_pad - length, s_pad - keys))
    static = _Static(
        scale=float(scale), causal=bool(is_causal), mask_kind=mask_kind,
        keys=keys, key_tiles=key_tiles(key_width), config=config,
        interpret=bool(interpret), auto_groups=auto_groups,
    )
    out = _attention(q, k, v, m, c, mask_arr, static)
    return out[:, :length, :, :value_width]


class _Static(NamedTuple):
    scale: float
    causal: bool
    mask_kind: str  # "none", "keys" (B, S) or "full" (B, 1|N, T, S)
    keys: int  # true key count (keys beyond it are padding)
    key_tiles: tuple  # widths of the key's column tiles (`key_tiles`)
    config: Config
    interpret: bool
    auto_groups: bool  # head groups of the written backward: by its grid


def _pad(x, extra):
    """Zero-pads the trailing axes of `x` by `extra` (a no-op if all 0)."""
    if not any(extra):
        return x
    widths = [(0, 0)] * (x.ndim - len(extra)) + [(0, e) for e in extra]
    return jnp.pad(x, widths)


# ---------------------------------------------------------------------------
# Shared pieces of the kernels.


def _columns(static):
    """The key's column tiles as index slices (`_Static.key_tiles`)."""
    starts = (0,) + tuple(itertools.accumulate(static.key_tiles))[:-1]
    return [pl.ds(start, width)
            for start, width in zip(starts, static.key_tiles)]


def _load(ref, *index, static):
    """`ref[*index, tile]` for each column tile of the key width: a list."""
    return [ref[(*index, cols)] for cols in _columns(static)]


def _sum_dots(a, b, **kwargs):
    """`sum_t a[t] @ b[t]` over the column tiles `t` (`_dot`)."""
    return functools.reduce(
        jnp.add, [_dot(x, y, **kwargs) for x, y in zip(a, b)])


def _scores(qm, k, c_ref, mask_ref, b, h, row0, col0, static, heads_in_mask,
            transposed=False):
    """Masked base-2 scores of the tile at (`row0`, `col0`) from the column
    tiles `qm` and `k` (lists, `_load`): `scale * log2(e) * (qm . k + c)`,
    -inf where masked; `(bq, bk)`, or `(bk, bq)` if `transposed` (computed
    so, not transposed after)."""
    bq, bk = qm[0].shape[0], k[0].shape[0]
    rows = row0 + jnp.arange(bq, dtype=jnp.int32)
    cols = col0 + jnp.arange(bk, dtype=jnp.int32)
    if transposed:
        s = _sum_dots(k, qm, trans_b=True)  # (bk, bq) float32
        rows, cols = rows[None, :], cols[:, None]
    else:
        s = _sum_dots(qm, k, trans_b=True)  # (bq, bk) float32
        rows, cols = rows[:, None], cols[None, :]
    if c_ref is not None:
        c = c_ref[b, h, pl.ds(col0, bk)]
        s = s + (c[:, None] if transposed else c[None, :])
    s = s * (static.scale * _LOG2E)
    valid = None
    if static.keys % _key_block(static.config):  # padded keys
        valid = jnp.broadcast_to(cols < static.keys, s.shape)
    if static.causal:
        causal = rows >= cols
        valid = causal if valid is None else valid & causal
    if static.mask_kind == "keys":
        keep = mask_ref[b, pl.ds(col0, bk)] != 0
        keep = jnp.broadcast_to(keep[:, None] if transposed else keep[None, :],
                                s.shape)
        valid = keep if valid is None else valid & keep
    elif static.mask_kind == "full":
        hm = h if heads_in_mask > 1 else 0
        keep = mask_ref[b, hm, pl.ds(row0, bq), pl.ds(col0, bk)] != 0
        if transposed:
            keep = keep.T
        valid = keep if valid is None else valid & keep
    if valid is not None:
        s = jnp.where(valid, s, -jnp.inf)
    return s


def _dot(a, b, trans_a=False, trans_b=False):
    """`a @ b` (optionally transposed) with float32 accumulation."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _mixed(q, m):
    """`q * m_h` rounded once to the input dtype, as the einsum would; of
    lists of column tiles, the list of the tiles'."""
    if isinstance(q, list):
        return [_mixed(x, y) for x, y in zip(q, m)]
    return (q.astype(jnp.float32) * m.astype(jnp.float32)[None, :]).astype(q.dtype)


def _masked_zero(s, ds, static):
    """`ds` with masked entries (`s` -inf) at 0, as the explicit path's
    `where` gives them: also where a NaN row made them NaN."""
    masks = (static.causal or static.mask_kind != "none"
             or static.keys % _key_block(static.config))
    return jnp.where(s == -jnp.inf, 0.0, ds) if masks else ds


def _key_blocks_for(i, block_q, block_k, n_kblocks, causal):
    """Number of key blocks query block `i` attends to."""
    if not causal:
        return n_kblocks
    return jnp.minimum(n_kblocks, lax.div((i + 1) * block_q + block_k - 1, block_k))


# ---------------------------------------------------------------------------
# Forward.


def _forward_kernel(*refs, static, has_content, heads_in_mask, n_kblocks):
    refs = list(refs)
    q_ref, k_ref, v_ref, m_ref = refs[:4]
    rest = refs[4:]
    c_ref = rest.pop(0) if has_content else None
    mask_ref = rest.pop(0) if static.mask_kind != "none" else None
    o_ref, lse_ref = rest
    cfg = static.config
    bq, bk = cfg.block_q, cfg.block_k
    h, i, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q = _load(q_ref, b, pl.ds(i * bq, bq), static=static)  # [(bq, tile)]
    qm = _mixed(q, _load(m_ref, h, static=static))
    v_width = v_ref.shape[-1]

    def body(j, carry):
        acc, top, total = carry
        k = _load(k_ref, b, pl.ds(j * bk, bk), static=static)  # [(bk, tile)]
        s = _scores(qm, k, c_ref, mask_ref, b, h, i * bq, j * bk, static,
                    heads_in_mask)
        new_top = jnp.maximum(top, jnp.max(s, axis=1))
        safe = jnp.where(new_top == -jnp.inf, 0.0, new_top)
        alpha = jnp.exp2(top - safe)
        p = jnp.exp2(s - safe[:, None])  # (bq, bk)
        total = total * alpha + jnp.sum(p, axis=1)
        v = v_ref[b, pl.ds(j * bk, bk), h, :]  # (bk, Vp)
        acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
        return acc, new_top, total

    acc = jnp.zeros((bq, v_width), jnp.float32)
    top = jnp.full((bq,), -jnp.inf, jnp.float32)
    total = jnp.zeros((bq,), jnp.float32)
    upper = _key_blocks_for(i, bq, bk, n_kblocks, static.causal)
    acc, top, total = lax.fori_loop(0, upper, body, (acc, top, total))
    attends = total > 0  # False for rows with every key masked (and NaN)
    nan = total != total
    out = acc / jnp.where(attends, total, 1.0)[:, None]
    out = jnp.where((attends | nan)[:, None], out, 0.0)
    o_ref[b, pl.ds(i * bq, bq), h, :] = out.astype(o_ref.dtype)
    # +inf for empty rows, so that the backward's exp2(s - lse) is 0 there.
    lse = jnp.where(attends, top + jnp.log2(jnp.where(attends, total, 1.0)),
                    jnp.inf)
    lse = jnp.where(nan, total, lse)
    lse_ref[b, h, pl.ds(i * bq, bq)] = lse


def _forward(q, k, v, m, c, mask_arr, static):
    cfg = static.config
    batch, t_pad, _ = q.shape
    s_pad, num_heads, v_pad = v.shape[1:]
    n_qblocks, n_kblocks = t_pad // cfg.block_q, s_pad // cfg.block_k
    heads_in_mask = 1 if mask_arr is None or mask_arr.ndim != 4 else mask_arr.shape[1]
    kernel = functools.partial(
        _forward_kernel, static=static, has_content=c is not None,
        heads_in_mask=heads_in_mask, n_kblocks=n_kblocks,
    )
    args = [q, k, v, m] + [x for x in (c, mask_arr) if x is not None]
    out, lse = pl.pallas_call(
        kernel,
        grid=(num_heads, n_qblocks, batch),
        out_shape=[
            jax.ShapeDtypeStruct((batch, t_pad, num_heads, v_pad), q.dtype),
            jax.ShapeDtypeStruct((batch, num_heads, t_pad), jnp.float32),
        ],
        compiler_params=_params(cfg.warps, cfg.stages),
        interpret=static.interpret,
        name="collaborative_attention_forward",
    )(*args)
    return out, lse


def _params(warps, stages):
    from jax.experimental.pallas import triton as plgpu

    return plgpu.CompilerParams(num_warps=warps, num_stages=stages)


# ---------------------------------------------------------------------------
# Backward.


def _key_kernel(*refs, static, has_content, heads_in_mask, n_qblocks,
                heads_per_group, write_ds=False):
    """Per key block: dV_h and dC_h for every head, and either dK summed
    over heads (the flash backward) or, with `write_ds`, the score gradient
    `dS` of every head and query block, written (no key gradient: XLA's
    products make it)."""
    refs = list(refs)
    q_ref, k_ref, v_ref, m_ref, do_ref, lse_ref, delta_ref = refs[:7]
    rest = refs[7:]
    c_ref = rest.pop(0) if has_content else None
    mask_ref = rest.pop(0) if static.mask_kind != "none" else None
    out_ref, dv_ref = rest[:2]  # out: dS (B, S, N, T) or dK (G, B, S, Kp)
    dc_ref = rest[2] if has_content else None
    cfg = static.config
    if write_ds:
        bq, bk = cfg.block_q_ds, cfg.block_k_ds
    else:
        bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    g, j, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    # [(bk, tile)], loaded once for all heads
    k = _load(k_ref, b, pl.ds(j * bk, bk), static=static)
    start = lax.div(j * bk, bq) if static.causal else 0

    def head(hh, dk):
        h = g * heads_per_group + hh
        m = _load(m_ref, h, static=static)
        v = v_ref[b, pl.ds(j * bk, bk), h, :]  # (bk, Vp)

        def body(i, carry):
            dk, dv, dc = carry  # dk: () when dS is written
            # Transposed tiles (key rows, query columns), as in Triton's
            # fused-attention tutorial: no transpose before the products.
            qm = _mixed(_load(q_ref, b, pl.ds(i * bq, bq), static=static), m)
            s = _scores(qm, k, c_ref, mask_ref, b, h, i * bq, j * bk, static,
                        heads_in_mask, transposed=True)  # (bk, bq)
            lse = lse_ref[b, h, pl.ds(i * bq, bq)]
            p = jnp.exp2(s - lse[None, :])  # (bk, bq)
            do = do_ref[b, pl.ds(i * bq, bq), h, :]  # (bq, Vp)
            dv = dv + _dot(p.astype(do.dtype), do)
            dp = _dot(v, do, trans_b=True)  # (bk, bq)
            delta = delta_ref[b, h, pl.ds(i * bq, bq)]
            ds = _masked_zero(s, p * (dp - delta[None, :]), static)
            # ds: d loss / d (scale * score)
            if write_ds:  # the tile as it is: the query axis contiguous
                out_ref[b, pl.ds(j * bk, bk), h, pl.ds(i * bq, bq)] = (
                    ds.astype(out_ref.dtype))  # (bk, bq)
            else:  # [(bk, tile)]
                dk = tuple(d + _dot(ds.astype(x.dtype), x)
                           for d, x in zip(dk, qm))
            if c_ref is not None:
                dc = dc + jnp.sum(ds, axis=1)
            return dk, dv, dc

        if write_ds and static.causal:  # the blocks above the diagonal: 0

            def skipped(i, carry):
                out_ref[b, pl.ds(j * bk, bk), h, pl.ds(i * bq, bq)] = (
                    jnp.zeros((bk, bq), out_ref.dtype))
                return carry

            lax.fori_loop(0, start, skipped, 0)
        dv = jnp.zeros((bk, v_ref.shape[-1]), jnp.float32)
        dc = jnp.zeros((bk,), jnp.float32)
        dk, dv, dc = lax.fori_loop(start, n_qblocks, body, (dk, dv, dc))
        dv_ref[b, pl.ds(j * bk, bk), h, :] = dv.astype(dv_ref.dtype)
        if dc_ref is not None:
            dc_ref[b, h, pl.ds(j * bk, bk)] = dc * static.scale
        return dk

    dk = () if write_ds else tuple(  # [(bk, tile)]
        jnp.zeros((bk, width), jnp.float32) for width in static.key_tiles)
    if heads_per_group == 1:
        dk = head(0, dk)
    else:
        dk = lax.fori_loop(0, heads_per_group, head, dk)
    for d, cols in zip(dk, _columns(static)):
        out_ref[g, b, pl.ds(j * bk, bk), cols] = d * static.scale


def _query_kernel(*refs, static, has_content, heads_in_mask, n_kblocks,
                  heads_per_group):
    """Per query block: dQ (summed over heads) and partial dM per head."""
    refs = list(refs)
    q_ref, k_ref, v_ref, m_ref, do_ref, lse_ref, delta_ref = refs[:7]
    rest = refs[7:]
    c_ref = rest.pop(0) if has_content else None
    mask_ref = rest.pop(0) if static.mask_kind != "none" else None
    dq_ref, dm_ref = rest
    cfg = static.config
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    g, i, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    q = _load(q_ref, b, pl.ds(i * bq, bq), static=static)  # [(bq, tile)]
    upper = _key_blocks_for(i, bq, bk, n_kblocks, static.causal)
    zeros = tuple(jnp.zeros((bq, width), jnp.float32)
                  for width in static.key_tiles)

    def head(hh, dq):
        h = g * heads_per_group + hh
        m = _load(m_ref, h, static=static)
        qm = _mixed(q, m)
        lse = lse_ref[b, h, pl.ds(i * bq, bq)]
        delta = delta_ref[b, h, pl.ds(i * bq, bq)]
        do = do_ref[b, pl.ds(i * bq, bq), h, :]  # (bq, Vp)

        def body(j, dqm):
            k = _load(k_ref, b, pl.ds(j * bk, bk), static=static)
            v = v_ref[b, pl.ds(j * bk, bk), h, :]
            s = _scores(qm, k, c_ref, mask_ref, b, h, i * bq, j * bk, static,
                        heads_in_mask)
            p = jnp.exp2(s - lse[:, None])
            dp = _dot(do, v, trans_b=True)
            ds = _masked_zero(s, p * (dp - delta[:, None]), static)
            return tuple(d + _dot(ds.astype(x.dtype), x)
                         for d, x in zip(dqm, k))

        dqm = lax.fori_loop(0, upper, body, zeros)  # [(bq, tile)]
        new_dq = []
        for d, x, y, cols, old in zip(dqm, q, m, _columns(static), dq):
            d = d * static.scale  # d (q * m_h)
            dm_ref[g, b, i, hh, cols] = jnp.sum(d * x.astype(jnp.float32),
                                                axis=0)
            new_dq.append(old + d * y.astype(jnp.float32)[None, :])
        return tuple(new_dq)

    if heads_per_group == 1:
        dq = head(0, zeros)
    else:
        dq = lax.fori_loop(0, heads_per_group, head, zeros)
    for d, cols in zip(dq, _columns(static)):
        dq_ref[g, b, pl.ds(i * bq, bq), cols] = d


def _backward_flash(static, q, k, v, m, c, mask_arr, lse, d_out, delta):
    """The flash backward: two kernels, nothing `(B, N, T, S)` in memory."""
    cfg = static.config
    batch, t_pad, k_pad = q.shape
    s_pad, num_heads, v_pad = v.shape[1:]
    groups = cfg.head_groups
    per_group = num_heads // groups
    n_qblocks, n_kblocks = t_pad // cfg.block_q_bwd, s_pad // cfg.block_k_bwd
    heads_in_mask = 1 if mask_arr is None or mask_arr.ndim != 4 else mask_arr.shape[1]
    has_content = c is not None
    args = [q, k, v, m, d_out, lse, delta] + [
        x for x in (c, mask_arr) if x is not None
    ]
    params = _params(cfg.warps_bwd, cfg.stages)
    out_shape = [
        jax.ShapeDtypeStruct((groups, batch, s_pad, k_pad), jnp.float32),
        jax.ShapeDtypeStruct(v.shape, v.dtype),
    ]
    if has_content:
        out_shape.append(jax.ShapeDtypeStruct(c.shape, jnp.float32))
    key_grads = pl.pallas_call(
        functools.partial(
            _key_kernel, static=static, has_content=has_content,
            heads_in_mask=heads_in_mask, n_qblocks=n_qblocks,
            heads_per_group=per_group,
        ),
        grid=(groups, n_kblocks, batch),
        out_shape=out_shape,
        compiler_params=params,
        interpret=static.interpret,
        name="collaborative_attention_backward_keys",
    )(*args)
    dk_parts, dv = key_grads[:2]
    dc = key_grads[2] if has_content else None
    dq_parts, dm_parts = pl.pallas_call(
        functools.partial(
            _query_kernel, static=static, has_content=has_content,
            heads_in_mask=heads_in_mask, n_kblocks=n_kblocks,
            heads_per_group=per_group,
        ),
        grid=(groups, n_qblocks, batch),
        out_shape=[
            jax.ShapeDtypeStruct((groups, batch, t_pad, k_pad), jnp.float32),
            jax.ShapeDtypeStruct(
                (groups, batch, n_qblocks, per_group, k_pad), jnp.float32
            ),
        ],
        compiler_params=params,
        interpret=static.interpret,
        name="collaborative_attention_backward_queries",
    )(*args)
    dq = jnp.sum(dq_parts, axis=0).astype(q.dtype)
    dk = jnp.sum(dk_parts, axis=0).astype(k.dtype)
    dm = jnp.sum(dm_parts, axis=(1, 2)).reshape(num_heads, k_pad).astype(m.dtype)
    return dq, dk, dv, dm, dc


def _mixing_kernel(dqm_ref, q_ref, m_ref, dq_ref, dm_ref, mixed_ref, *,
                   scale, num_heads, block_t, block_c):
    """The written backward's query side on a block of query rows and key
    columns, from dQm_h = dS_h k (unscaled, float32, `(B, N, T, K)`):
    dq = scale * sum_h m_h * dQm_h, this block's part of dm_h =
    scale * sum_t q * dQm_h, and the mixed query q * m_h (`_mixed`) for
    the key's product, in one pass over dQm."""
    i, b, c = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows, cols = pl.ds(i * block_t, block_t), pl.ds(c * block_c, block_c)
    q = q_ref[b, rows, cols]  # (bt, bc)

    def head(h, dq):
        m = m_ref[h, cols]
        dqm = dqm_ref[b, h, rows, cols] * scale  # d (q * m_h)
        dm_ref[b, i, h, cols] = jnp.sum(dqm * q.astype(jnp.float32), axis=0)
        mixed_ref[b, h, rows, cols] = _mixed(q, m)
        return dq + dqm * m.astype(jnp.float32)[None, :]

    dq = lax.fori_loop(0, num_heads, head,
                       jnp.zeros((block_t, block_c), jnp.float32))
    dq_ref[b, rows, cols] = dq.astype(dq_ref.dtype)


def written_rows(batch, heads, length, keys, key_width, dtype, config):
    """Batch rows per chunk of the backward with the score gradient
    written: the most rows whose buffers of shape `(rows, heads, length,
    .)` fit in `config.score_gradient_bytes` (the score gradient, `keys`
    wide in `dtype`; the mixed query and its float32 gradient, `key_width`
    wide: `_attention_utils.score_gradient_rows` of their bytes per query),
    rounded down to a divisor of `batch` so that the chunks are equal; 0:
    the flash backward runs."""
    itemsize = jnp.dtype(dtype).itemsize
    per_query = keys * itemsize + key_width * (itemsize + 4)
    rows = _attention_utils.score_gradient_rows(
        batch, heads, length, per_query, budget=config.score_gradient_bytes)
    while rows and batch % rows:
        rows -= 1
    return rows


def _backward_written(static, q, k, v, m, c, mask_arr, lse, d_out, delta,
                      rows):
    """The backward with the score gradient written: per chunk of `rows`
    batch rows, `_key_kernel` (`write_ds`) then XLA's products at width K;
    the chunks run one after the other (`lax.map`)."""
    cfg = static.config
    batch, t_pad, k_pad = q.shape
    s_pad, num_heads, v_pad = v.shape[1:]
    dtype = q.dtype
    n_qblocks, n_kblocks = t_pad // cfg.block_q_ds, s_pad // cfg.block_k_ds
    groups = cfg.head_groups
    if static.auto_groups:
        groups = _attention_utils.head_groups(num_heads, rows * n_kblocks)
    per_group = num_heads // groups
    heads_in_mask = 1 if mask_arr is None or mask_arr.ndim != 4 else mask_arr.shape[1]
    has_content = c is not None
    # `_mixing_kernel`'s tiles: divisors of the padded sizes.
    block_t = math.gcd(cfg.block_t_mix, t_pad)
    block_c = math.gcd(cfg.block_c_mix, k_pad)
    # float32 inputs: products in float32 (not TF32), as the kernels'.
    precision = lax.Precision.HIGHEST if dtype == jnp.float32 else None
    kernel = functools.partial(
        _key_kernel, static=static, has_content=has_content,
        heads_in_mask=heads_in_mask, n_qblocks=n_qblocks,
        heads_per_group=per_group, write_ds=True,
    )

    def chunk(xs):
        q, k, v, d_out, lse, delta, c, mask_arr = xs  # `rows` batch rows
        out_shape = [
            jax.ShapeDtypeStruct((rows, s_pad, num_heads, t_pad), dtype),
            jax.ShapeDtypeStruct(v.shape, v.dtype),
        ]
        if has_content:
            out_shape.append(jax.ShapeDtypeStruct(c.shape, jnp.float32))
        args = [q, k, v, m, d_out, lse, delta] + [
            x for x in (c, mask_arr) if x is not None
        ]
        grads = pl.pallas_call(
            kernel,
            grid=(groups, n_kblocks, rows),
            out_shape=out_shape,
            compiler_params=_params(cfg.warps_ds, cfg.stages_ds),
            interpret=static.interpret,
            name="collaborative_attention_score_gradient",
        )(*args)
        ds, dv = grads[:2]  # ds: (rows, S, N, T), unscaled
        dc = grads[2] if has_content else None
        dqm = jnp.einsum("bsnt,bsk->bntk", ds, k, precision=precision,
                         preferred_element_type=jnp.float32)
        # dqm: d (q * m_h) / scale, (rows, N, T, Kp) float32
        dq, dm, mixed = pl.pallas_call(
            functools.partial(_mixing_kernel, scale=static.scale,
                              num_heads=num_heads, block_t=block_t,
                              block_c=block_c),
            grid=(t_pad // block_t, rows, k_pad // block_c),
            out_shape=[
                jax.ShapeDtypeStruct(q.shape, dtype),
                jax.ShapeDtypeStruct(
                    (rows, t_pad // block_t, num_heads, k_pad), jnp.float32),
                jax.ShapeDtypeStruct((rows, num_heads, t_pad, k_pad), dtype),
            ],
            compiler_params=_params(4, 1),
            interpret=static.interpret,
            name="collaborative_attention_mixing_gradient",
        )(dqm, q, m)
        dk = jnp.einsum("bsnt,bntk->bsk", ds, mixed, precision=precision,
                        preferred_element_type=jnp.float32) * static.scale
        return dq, dk.astype(k.dtype), dv, jnp.sum(dm, axis=(0, 1)), dc

    xs = (q, k, v, d_out, lse, delta, c, mask_arr)
    if rows == batch:
        dq, dk, dv, dm, dc = chunk(xs)
    else:
        split = lambda x: x.reshape((batch // rows, rows) + x.shape[1:])
        merge = lambda x: x.reshape((batch,) + x.shape[2:])
        xs = jax.tree_util.tree_map(split, xs)
        dq, dk, dv, dm, dc = lax.map(chunk, xs)
        dq, dk, dv, dc = jax.tree_util.tree_map(merge, (dq, dk, dv, dc))
        dm = jnp.sum(dm, axis=0)
    return dq, dk, dv, dm.astype(m.dtype), dc


def _backward(static, residuals, d_out):
    q, k, v, m, c, mask_arr, out, lse = residuals
    batch, t_pad = q.shape[:2]
    s_pad, num_heads = v.shape[1:3]
    d_out = d_out.astype(q.dtype)
    # An elementwise product and a sum (one fusion), not a dot: as a dot it
    # may run as a batched matrix-vector product, slow on GPUs.
    delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32),
                    axis=-1).transpose(0, 2, 1)  # (B, N, T)
    args = (static, q, k, v, m, c, mask_arr, lse, d_out, delta)
    rows = written_rows(batch, num_heads, t_pad, s_pad, q.shape[-1], q.dtype,
                        static.config)
    if rows:
        grads = _backward_written(*args, rows)
    else:
        grads = _backward_flash(*args)
    mask_grad = None
    return grads + (mask_grad,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention(q, k, v, m, c, mask_arr, static):
    return _forward(q, k, v, m, c, mask_arr, static)[0]


def _attention_fwd(q, k, v, m, c, mask_arr, static):
    out, lse = _forward(q, k, v, m, c, mask_arr, static)
    return out, (q, k, v, m, c, mask_arr, out, lse)


_attention.defvjp(_attention_fwd, _backward)


def reference(query, key, value, mixing, content=None, mask=None, scale=1.0,
              is_causal=False):
    """The explicit computation, in float32 (for tests and benchmarks)."""
    f32 = jnp.float32
    mixed = jnp.einsum("btk,nk->btnk", query, mixing.astype(query.dtype))
    scores = jnp.einsum("btnk,bsk->bnts", mixed.astype(f32), key.astype(f32))
    if content is not None:
        scores = scores + jnp.transpose(content.astype(f32), (0, 2, 1))[:, :, None, :]
    scores = scores * scale
    length, keys = query.shape[1], key.shape[1]
    valid = jnp.ones((1, 1, length, keys), bool)
    if is_causal:
        valid = valid & jnp.tril(jnp.ones((length, keys), bool))[None, None]
    if mask is not None:
        mask = mask.astype(bool)
        valid = valid & mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    scores = jnp.where(valid, scores, -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True)
    top = jnp.where(top == -jnp.inf, 0.0, top)
    weights = jnp.exp(scores - lax.stop_gradient(top))
    total = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(total > 0, total, 1.0)
    out = jnp.einsum("bnts,bsnv->btnv", weights, value.astype(f32))
    return out.astype(query.dtype)

