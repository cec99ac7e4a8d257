"""Fused collaborative attention for PyTorch on CUDA GPUs: a Triton kernel.

For every head `h` it computes, exactly,

    softmax_j(scale * ((q_i * m_h) . k_j + c_h(j)) + mask) @ v_h

from the shared query `q` (B, T, K), the shared key `k` (B, S, K), the
per-head values `v` (B, S, N, V), the mixing `m` (N, K) and the optional
content term `c` (B, S, N), in float32 accumulation, with a FlashAttention-2
online softmax and backward pass (Dao, 2023), wrapped in a
`torch.autograd.Function`. The maths and the design are those of the JAX
kernel (`_pallas_attention.py`); what this one does differently is to read
every operand in place through its strides (no padding, no copy):

- the mixing `m_h` is applied to the query tile inside the kernel: no
  `(B, T, N, K)` tensor is written, and the key is never broadcast. The
  forward grid runs the heads of one query block side by side (head is the
  fastest program index), so each shared key tile comes from memory once
  and from the L2 cache for the other heads; the backward key kernel loads
  a key tile once and loops over the heads, summing the key's gradient;
- scores are `K` wide and values `V` wide: tiles are powers of two, the
  key width cut into one or two of them (`_attention_utils.key_tiles`: 192
  runs 128 + 64 columns, 384 runs 256 + 128), loaded with masks; nothing is
  padded in memory;
- the content term `scale * c_h(j)` is added to the scores inside the
  kernel; the causal mask is computed there; a boolean mask is read tile by
  tile through its strides (broadcast axes have stride 0, so a `(B, 1, 1, S)`
  key-padding mask reads `S` values per batch row), no `(B, T, S)` tensor is
  made; query rows with no key to attend to give 0; NaN and Inf propagate as
  in the explicit softmax;
- float16 and bfloat16 inputs (float32 runs too, with exact IEEE products,
  for tests; the dispatch sends float32 to `scaled_dot_product_attention`);
  any lengths.

Two backward passes, the same maths and the same roundings:

- for keys wider than 128 (`default_config`), the score gradient is written
  to memory: `_key_kernel` (`WRITE_DS`) recomputes the scores once per key
  block, accumulates dV and dC and writes dS `(B, S, N, T)` in the input
  dtype; the products at width K (dQ, dK: two thirds of the backward's
  FLOPs at K = 4 V) then run in cuBLAS, and `_mixing_gradient_kernel`
  turns d(q * m_h) into dq and dm. It runs on chunks of batch rows whose
  dS fits in `Config.score_gradient_bytes` (1 GiB; `score_gradient_rows`),
  or, where one row's does not (length 8192), of that row's heads
  (`score_gradient_heads`), which caps the memory it adds;
- otherwise (narrower keys, or one head's dS over the budget), the flash
  backward of FlashAttention-2: `_key_kernel` (dK, dV, dC per key block)
  and `_query_kernel` (dQ, dM per query block), each recomputing the
  scores, with no `(T, S)` tensor in memory.

On an H200 at K = 256, 12 heads, V = 64, the first takes 0.92 ms of kernel
time against the second's 1.30 at length 512 (batch 32) and 2.66 against
4.33 ms at 2048 (batch 8) (`benchmarks/attention_kernel_torch.py
--profile`); docs/performance.md has length 8192 (heads in chunks) and
K = 384.

`applies` says when the kernel runs; `attention` is the kernel contract of
every backend (see `collaborative_dot_product_attention.py`). The kernels run
in Triton's interpreter on CPUs when `TRITON_INTERPRET=1` is set before this
module is imported (the CPU tests do).
"""

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from collab_keras.ops._attention_utils import SCORE_GRADIENT_BYTES
from collab_keras.ops._attention_utils import fitted_config
from collab_keras.ops._attention_utils import halved_tiles
from collab_keras.ops._attention_utils import head_groups
from collab_keras.ops._attention_utils import score_gradient_heads
from collab_keras.ops._attention_utils import score_gradient_rows
from collab_keras.ops._attention_utils import key_tiles
from collab_keras.ops._attention_utils import tile_width
from collab_keras.ops._attention_utils import unsupported_inputs_error

MAX_KEY_WIDTH = 512
MAX_VALUE_WIDTH = 256
_LOG2E = math.log2(math.e)
_HALF = (torch.float16, torch.bfloat16)


class Config(NamedTuple):
    """Tile sizes and warps of the three kernels (powers of two)."""

    block_q: int = 64  # forward
    block_k: int = 64
    warps: int = 4
    stages: int = 2
    block_q_bwd: int = 64  # backward (both kernels)
    block_k_bwd: int = 32
    warps_bwd: int = 4
    head_groups: int = 0  # backward: heads split over this many programs
    # (0: the fewest that fill the card, `head_groups`)
    block_q_ds: int = 32  # backward with the score gradient written
    block_k_ds: int = 64
    warps_ds: int = 4
    stages_ds: int = 2
    block_t_mix: int = 64  # and its `_mixing_gradient_kernel` (query rows,
    block_c_mix: int = 64  # key columns)
    score_gradient_bytes: int = SCORE_GRADIENT_BYTES  # 0: flash backward


def default_config(key_width, dtype=torch.bfloat16, value_width=64,
                   full_mask=False):
    """Tile sizes by the key width's tile (a power of two) and dtype,
    measured on an H200 (`benchmarks/attention_kernel_torch.py --sweep`,
    values 64 wide, no mask; the written backward's by kernel time, the
    others by wall time), made smaller where the kernels' tiles would
    not fit in shared memory (`fit_tiles`: wider values, a general mask's
    tiles (`full_mask`), float32)."""
    width = tile_width(key_width)
    if width <= 128:  # the flash backward: faster at these widths
        config = Config(block_q=128, block_k=64, warps=8, block_q_bwd=64,
                        block_k_bwd=64, warps_bwd=4, score_gradient_bytes=0)
    elif width <= 256:
        config = Config(block_q=128, block_k=128, warps=8, block_q_bwd=32,
                        block_k_bwd=64, warps_bwd=4, block_q_ds=64,
                        block_k_ds=128, warps_ds=8, stages_ds=3)
    elif key_width <= 384:
        config = Config(block_q=128, block_k=64, warps=8, block_q_bwd=32,
                        block_k_bwd=64, warps_bwd=8, block_q_ds=32,
                        block_k_ds=128, warps_ds=8, stages_ds=3)
    else:  # not swept: the tiles of the first GPU checks
        config = Config(block_q=64, block_k=32, warps=4, block_q_bwd=32,
                        block_k_bwd=64, warps_bwd=8)
    if dtype == torch.float32:
        config = halved_tiles(config)
    return fitted_config(config, sum(key_tiles(key_width)),
                         tile_width(value_width), dtype.itemsize,
                         1 if full_mask else 0)


def applies(query, key, value, mask=None):
    """Whether the compiled kernel runs these inputs.

    CUDA tensors of compute capability 8.0 or more, float16 or bfloat16 (one
    dtype for query, key and values), shared key width up to 512, value
    width up to 256, a mask (if any) of rank 4 that broadcasts to
    `(B, N, T, S)`.
    """
    if not (query.is_cuda and key.is_cuda and value.is_cuda):
        return False
    if query.dtype not in _HALF or key.dtype != query.dtype:
        return False
    if value.dtype != query.dtype:
        return False
    if torch.cuda.get_device_capability(query.device) < (8, 0):
        return False
    return _unsupported(query, key, value, mask) is None


def _unsupported(query, key, value, mask):
    """`None` when the kernel takes these shapes, else the reason."""
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 4:
        return "ranks"
    if query.dtype not in _HALF + (torch.float32,):
        return f"dtype {query.dtype}"
    if key.dtype != query.dtype or value.dtype != query.dtype:
        return "mixed dtypes"
    if query.shape[-1] > MAX_KEY_WIDTH or value.shape[-1] > MAX_VALUE_WIDTH:
        return "width"
    if mask is not None:
        batch, length = query.shape[:2]
        heads, keys = value.shape[2], key.shape[1]
        if mask.dim() != 4 or any(
            d not in (1, full)
            for d, full in zip(mask.shape, (batch, heads, length, keys))
        ):
            return "mask shape"
    return None


def attention(query, key, value, mixing, content=None, mask=None, scale=1.0,
              is_causal=False, config=None):
    """Collaborative attention, fused. Differentiable (autograd).

    Args:
        query: Shared query, `(B, T, K)`.
        key: Shared key, `(B, S, K)`.
        value: Per-head values, `(B, S, N, V)`.
        mixing: Mixing, `(N, K)`, cast to the query's dtype.
        content: Optional unscaled content term `y C`, `(B, S, N)`.
        mask: Optional boolean mask of rank 4 broadcastable to
            `(B, N, T, S)`; `True` where a query may attend to a key.
        scale: Score scale.
        is_causal: Whether query `i` attends only to keys `j <= i`.
        config: Optional `Config` of tile sizes.

    Returns:
        `(B, T, N, V)` in the query's dtype.
    """
    reason = _unsupported(query, key, value, mask)
    if reason is not None:
        raise unsupported_inputs_error("Triton", reason, query, key, value,
                                       mask)
    if config is None:
        config = default_config(query.shape[-1], query.dtype,
                                value.shape[-1], _mask_args(mask)[1] == 2)
    mixing = mixing.to(query.dtype)
    if mask is not None:
        mask = mask.to(torch.bool)
    return _Attention.apply(query, key, value, mixing, content, mask,
                            float(scale), bool(is_causal), config)


def _strides(x, dims):
    """Strides of `x` (`dims` of them), 0 where the size is 1 or `x` is
    None (broadcast)."""
    if x is None:
        return (0,) * dims
    return tuple(0 if n == 1 else s for n, s in zip(x.shape, x.stride()))


def _mask_args(mask):
    """The mask as a uint8 view (no copy), its kind and strides: kind 0 none,
    1 key padding (only the batch and key axes vary), 2 any other."""
    if mask is None:
        return None, 0, (0, 0, 0, 0)
    kind = 1 if mask.shape[1] == 1 and mask.shape[2] == 1 else 2
    return mask.view(torch.uint8), kind, _strides(mask, 4)


class _Static(NamedTuple):
    scale: float
    causal: bool
    config: Config


# ---------------------------------------------------------------------------
# Shared pieces of the kernels. The key width is covered by tile A and, where
# a power of two would waste columns, tile B (`_attention_utils.key_tiles`,
# `_constants`): a 384-wide key runs 256 + 128 columns, not 512.


@triton.jit
def _load(ptr, rows, n_rows, stride_r, cols, n_cols, stride_c):
    """The tile `ptr[rows, cols]`, 0 outside `n_rows` x `n_cols`."""
    return tl.load(ptr + rows[:, None] * stride_r + cols[None, :] * stride_c,
                   mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols),
                   other=0.0)


@triton.jit
def _mix(q, m_ptr, cols, stride, key_width):
    """`q * m_h` on the columns `cols`, rounded once to the input dtype (as
    the einsum would), and `m_h` there in float32."""
    m = tl.load(m_ptr + cols * stride, mask=cols < key_width, other=0.0)
    m = m.to(tl.float32)
    return (q.to(tl.float32) * m[None, :]).to(q.dtype), m


@triton.jit
def _masked_scores(s, rows, cols, c, mask_ptr, stride_mt, stride_ms,
                   length, keys, qk_scale, HAS_CONTENT: tl.constexpr,
                   MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
                   EVEN_S: tl.constexpr):
    """Base-2 scores `scale * log2(e) * (s + c)`, -inf where masked.

    `s` is `(len(rows), len(cols))` from the products; `rows` and `cols`
    come as `[:, None]` / `[None, :]` (or transposed) so that the same code
    serves the transposed tiles of the backward key kernel. `mask_ptr`
    points at the batch and head of the mask; `c` holds the content term's
    values of `cols` (broadcast like `cols`).
    """
    if HAS_CONTENT:
        s = s + c
    s = s * qk_scale
    if not EVEN_S:
        s = tl.where(cols < keys, s, float("-inf"))
    if CAUSAL:
        s = tl.where(rows >= cols, s, float("-inf"))
    if MASK_KIND == 1:
        keep = tl.load(mask_ptr + cols * stride_ms, mask=cols < keys, other=0)
        s = tl.where(keep != 0, s, float("-inf"))
    if MASK_KIND == 2:
        keep = tl.load(mask_ptr + rows * stride_mt + cols * stride_ms,
                       mask=(rows < length) & (cols < keys), other=0)
        s = tl.where(keep != 0, s, float("-inf"))
    return s


@triton.jit
def _masked_zero(s, ds, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
                 EVEN_S: tl.constexpr):
    """`ds` with masked entries (`s` -inf) at 0, as the explicit path's
    masked fill gives them: also where a NaN query row made them NaN."""
    if MASK_KIND > 0 or CAUSAL or not EVEN_S:
        ds = tl.where(s == float("-inf"), 0.0, ds)
    return ds


# ---------------------------------------------------------------------------
# Forward.


@triton.jit
def _forward_kernel(
    Q, K, V, M, C, MASK, O, LSE,
    sq_b, sq_t, sq_k, sk_b, sk_s, sk_k, sv_b, sv_s, sv_n, sv_v, sm_n, sm_k,
    sc_b, sc_s, sc_n, smask_b, smask_n, smask_t, smask_s,
    so_b, so_t, so_n, so_v, sl_b, sl_n, sl_t,
    length, keys, key_width, value_width, qk_scale,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, K_A: tl.constexpr,
    K_B: tl.constexpr, V_TILE: tl.constexpr, HAS_CONTENT: tl.constexpr,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, EVEN_S: tl.constexpr,
    PRECISION: tl.constexpr,
):
    h = tl.program_id(0)
    i = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = i * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ka = tl.arange(0, K_A)
    if K_B > 0:
        kb = K_A + tl.arange(0, K_B)
    vv = tl.arange(0, V_TILE)
    q_ptr, k_ptr = Q + b * sq_b, K + b * sk_b
    v_ptr = V + b * sv_b + h * sv_n
    qm_a, _ = _mix(_load(q_ptr, rows, length, sq_t, ka, key_width, sq_k),
                   M + h * sm_n, ka, sm_k, key_width)  # (BQ, Ka)
    if K_B > 0:
        qm_b, _ = _mix(_load(q_ptr, rows, length, sq_t, kb, key_width, sq_k),
                       M + h * sm_n, kb, sm_k, key_width)  # (BQ, Kb)
    mask_ptr = MASK + b * smask_b + h * smask_n
    acc = tl.zeros((BLOCK_Q, V_TILE), tl.float32)
    top = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_Q,), tl.float32)
    upper = keys
    if CAUSAL:
        upper = tl.minimum(keys, (i + 1) * BLOCK_Q)
    for start in range(0, upper, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        k = _load(k_ptr, cols, keys, sk_s, ka, key_width, sk_k)  # (BK, Ka)
        s = tl.dot(qm_a, tl.trans(k), input_precision=PRECISION)  # (BQ, BK)
        if K_B > 0:
            k = _load(k_ptr, cols, keys, sk_s, kb, key_width, sk_k)
            s += tl.dot(qm_b, tl.trans(k), input_precision=PRECISION)
        c = 0.0
        if HAS_CONTENT:
            c = tl.load(C + b * sc_b + cols * sc_s + h * sc_n,
                        mask=cols < keys, other=0.0).to(tl.float32)[None, :]
        s = _masked_scores(s, rows[:, None], cols[None, :], c, mask_ptr,
                           smask_t, smask_s, length, keys, qk_scale,
                           HAS_CONTENT, MASK_KIND, CAUSAL, EVEN_S)
        new_top = tl.maximum(top, tl.max(s, 1))
        safe = tl.where(new_top == float("-inf"), 0.0, new_top)
        alpha = tl.exp2(top - safe)
        p = tl.exp2(s - safe[:, None])
        total = total * alpha + tl.sum(p, 1)
        v = _load(v_ptr, cols, keys, sv_s, vv, value_width, sv_v)  # (BK, Vt)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v,
                                            input_precision=PRECISION)
        top = new_top
    attends = total > 0  # False for rows with every key masked (and NaN)
    nan = total != total
    out = acc / tl.where(attends, total, 1.0)[:, None]
    out = tl.where((attends | nan)[:, None], out, 0.0)
    tl.store(O + b * so_b + rows[:, None] * so_t + h * so_n + vv[None, :] * so_v,
             out.to(O.dtype.element_ty),
             mask=(rows[:, None] < length) & (vv[None, :] < value_width))
    # +inf for rows with no key, so that the backward's exp2(s - lse) is 0.
    lse = tl.where(attends, top + tl.log2(tl.where(attends, total, 1.0)),
                   float("inf"))
    lse = tl.where(nan, total, lse)
    tl.store(LSE + b * sl_b + h * sl_n + rows * sl_t, lse, mask=rows < length)


# ---------------------------------------------------------------------------
# Backward.


@triton.jit
def _key_kernel(
    Q, K, V, M, C, MASK, DO, LSE, DELTA, DK, DS, DV, DC,
    sq_b, sq_t, sq_k, sk_b, sk_s, sk_k, sv_b, sv_s, sv_n, sv_v, sm_n, sm_k,
    sc_b, sc_s, sc_n, smask_b, smask_n, smask_t, smask_s,
    sdo_b, sdo_t, sdo_n, sdo_v, sl_b, sl_n, sl_t,
    sdk_g, sdk_b, sdk_s, sds_b, sds_n, sds_t, sds_s,
    sdv_b, sdv_s, sdv_n, sdv_v, sdc_b, sdc_s, sdc_n,
    length, keys, key_width, value_width, qk_scale, scale, heads_per_group,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, K_A: tl.constexpr,
    K_B: tl.constexpr, V_TILE: tl.constexpr, HAS_CONTENT: tl.constexpr,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, EVEN_S: tl.constexpr,
    PRECISION: tl.constexpr, WRITE_DS: tl.constexpr,
):
    """Per key block: dV_h and dC_h for every head of the group, the key
    tile loaded once, and either (flash backward) dK summed over heads, or
    (`WRITE_DS`) the score gradient dS_h (d loss / d (scale * score), in the
    input dtype: the value the flash kernels cast before their products)
    written to `DS` laid out `(B, S, N, T)` (the tile's contiguous query
    axis contiguous in memory, `(S, N*T)` a matrix for the products at width
    K that then run in cuBLAS; no dK accumulator). Tiles are transposed (key
    rows, query columns), as in Triton's fused-attention tutorial."""
    j = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2)
    cols = j * BLOCK_K + tl.arange(0, BLOCK_K)
    ka = tl.arange(0, K_A)
    if K_B > 0:
        kb = K_A + tl.arange(0, K_B)
    vv = tl.arange(0, V_TILE)
    q_ptr, k_ptr = Q + b * sq_b, K + b * sk_b
    k_a = _load(k_ptr, cols, keys, sk_s, ka, key_width, sk_k)  # (BK, Ka)
    if K_B > 0:
        k_b = _load(k_ptr, cols, keys, sk_s, kb, key_width, sk_k)
    if not WRITE_DS:
        dk_a = tl.zeros((BLOCK_K, K_A), tl.float32)
        if K_B > 0:
            dk_b = tl.zeros((BLOCK_K, K_B), tl.float32)
    lower = 0
    if CAUSAL:
        lower = (j * BLOCK_K // BLOCK_Q) * BLOCK_Q
    key_cols = cols[:, None] < keys
    for hh in range(0, heads_per_group):
        h = g * heads_per_group + hh
        if WRITE_DS:
            ds_ptr = DS + b * sds_b + h * sds_n + cols[:, None] * sds_s
            for start in range(0, lower, BLOCK_Q):  # causal: above diagonal
                rows = start + tl.arange(0, BLOCK_Q)
                tl.store(ds_ptr + rows[None, :] * sds_t,
                         tl.zeros((BLOCK_K, BLOCK_Q), DS.dtype.element_ty),
                         mask=key_cols & (rows[None, :] < length))
        v = _load(V + b * sv_b + h * sv_n, cols, keys, sv_s, vv, value_width,
                  sv_v)  # (BK, Vt)
        c = 0.0
        if HAS_CONTENT:
            c = tl.load(C + b * sc_b + cols * sc_s + h * sc_n,
                        mask=cols < keys, other=0.0).to(tl.float32)[:, None]
        mask_ptr = MASK + b * smask_b + h * smask_n
        dv = tl.zeros((BLOCK_K, V_TILE), tl.float32)
        dc = tl.zeros((BLOCK_K,), tl.float32)
        for start in range(lower, length, BLOCK_Q):
            rows = start + tl.arange(0, BLOCK_Q)
            qm_a, _ = _mix(_load(q_ptr, rows, length, sq_t, ka, key_width, sq_k),
                           M + h * sm_n, ka, sm_k, key_width)  # (BQ, Ka)
            s = tl.dot(k_a, tl.trans(qm_a), input_precision=PRECISION)  # (BK, BQ)
            if K_B > 0:
                qm_b, _ = _mix(
                    _load(q_ptr, rows, length, sq_t, kb, key_width, sq_k),
                    M + h * sm_n, kb, sm_k, key_width)
                s += tl.dot(k_b, tl.trans(qm_b), input_precision=PRECISION)
            s = _masked_scores(s, rows[None, :], cols[:, None], c, mask_ptr,
                               smask_t, smask_s, length, keys, qk_scale,
                               HAS_CONTENT, MASK_KIND, CAUSAL, EVEN_S)
            lse = tl.load(LSE + b * sl_b + h * sl_n + rows * sl_t,
                          mask=rows < length, other=float("inf"))
            p = tl.exp2(s - lse[None, :])  # (BK, BQ)
            do = _load(DO + b * sdo_b + h * sdo_n, rows, length, sdo_t, vv,
                       value_width, sdo_v)  # (BQ, Vt)
            dv += tl.dot(p.to(do.dtype), do, input_precision=PRECISION)
            dp = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BK, BQ)
            delta = tl.load(DELTA + b * sl_b + h * sl_n + rows * sl_t,
                            mask=rows < length, other=0.0)
            ds = _masked_zero(s, p * (dp - delta[None, :]), MASK_KIND, CAUSAL,
                              EVEN_S)  # d loss / d (scale * score)
            if WRITE_DS:
                tl.store(ds_ptr + rows[None, :] * sds_t,
                         ds.to(DS.dtype.element_ty),
                         mask=key_cols & (rows[None, :] < length))
            else:
                dk_a += tl.dot(ds.to(qm_a.dtype), qm_a,
                               input_precision=PRECISION)
                if K_B > 0:
                    dk_b += tl.dot(ds.to(qm_b.dtype), qm_b,
                                   input_precision=PRECISION)
            if HAS_CONTENT:
                dc += tl.sum(ds, 1)
        tl.store(DV + b * sdv_b + cols[:, None] * sdv_s + h * sdv_n
                 + vv[None, :] * sdv_v, dv.to(DV.dtype.element_ty),
                 mask=key_cols & (vv[None, :] < value_width))
        if HAS_CONTENT:
            tl.store(DC + b * sdc_b + cols * sdc_s + h * sdc_n, dc * scale,
                     mask=cols < keys)
    if not WRITE_DS:
        dk_ptr = DK + g * sdk_g + b * sdk_b + cols[:, None] * sdk_s
        tl.store(dk_ptr + ka[None, :], dk_a * scale,
                 mask=key_cols & (ka[None, :] < key_width))
        if K_B > 0:
            tl.store(dk_ptr + kb[None, :], dk_b * scale,
                     mask=key_cols & (kb[None, :] < key_width))


@triton.jit
def _query_kernel(
    Q, K, V, M, C, MASK, DO, LSE, DELTA, DQ, DM,
    sq_b, sq_t, sq_k, sk_b, sk_s, sk_k, sv_b, sv_s, sv_n, sv_v, sm_n, sm_k,
    sc_b, sc_s, sc_n, smask_b, smask_n, smask_t, smask_s,
    sdo_b, sdo_t, sdo_n, sdo_v, sl_b, sl_n, sl_t,
    sdq_g, sdq_b, sdq_t, sdm_b, sdm_i, sdm_n,
    length, keys, key_width, value_width, qk_scale, scale, heads_per_group,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, K_A: tl.constexpr,
    K_B: tl.constexpr, V_TILE: tl.constexpr, HAS_CONTENT: tl.constexpr,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, EVEN_S: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Per query block: dQ (summed over the group's heads) and each head's
    partial dM (summed over the block's queries). With one tile of keys the
    sum over heads stays in registers; with two it goes through memory (the
    program's own dQ rows), which keeps wide keys from spilling."""
    i = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2)
    rows = i * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ka = tl.arange(0, K_A)
    if K_B > 0:
        kb = K_A + tl.arange(0, K_B)
    vv = tl.arange(0, V_TILE)
    q_ptr, k_ptr = Q + b * sq_b, K + b * sk_b
    q_a = _load(q_ptr, rows, length, sq_t, ka, key_width, sq_k)  # (BQ, Ka)
    if K_B > 0:
        q_b = _load(q_ptr, rows, length, sq_t, kb, key_width, sq_k)
    dq_ptr = DQ + g * sdq_g + b * sdq_b + rows[:, None] * sdq_t
    dm_ptr = DM + b * sdm_b + i * sdm_i
    query_rows = rows[:, None] < length
    upper = keys
    if CAUSAL:
        upper = tl.minimum(keys, (i + 1) * BLOCK_Q)
    dq_a = tl.zeros((BLOCK_Q, K_A), tl.float32)
    for hh in range(0, heads_per_group):
        h = g * heads_per_group + hh
        qm_a, m_a = _mix(q_a, M + h * sm_n, ka, sm_k, key_width)
        if K_B > 0:
            qm_b, m_b = _mix(q_b, M + h * sm_n, kb, sm_k, key_width)
            dqm_b = tl.zeros((BLOCK_Q, K_B), tl.float32)
        lse = tl.load(LSE + b * sl_b + h * sl_n + rows * sl_t,
                      mask=rows < length, other=float("inf"))
        delta = tl.load(DELTA + b * sl_b + h * sl_n + rows * sl_t,
                        mask=rows < length, other=0.0)
        do = _load(DO + b * sdo_b + h * sdo_n, rows, length, sdo_t, vv,
                   value_width, sdo_v)  # (BQ, Vt)
        v_ptr = V + b * sv_b + h * sv_n
        mask_ptr = MASK + b * smask_b + h * smask_n
        dqm_a = tl.zeros((BLOCK_Q, K_A), tl.float32)
        for start in range(0, upper, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            k_a = _load(k_ptr, cols, keys, sk_s, ka, key_width, sk_k)
            s = tl.dot(qm_a, tl.trans(k_a), input_precision=PRECISION)
            if K_B > 0:
                k_b = _load(k_ptr, cols, keys, sk_s, kb, key_width, sk_k)
                s += tl.dot(qm_b, tl.trans(k_b), input_precision=PRECISION)
            c = 0.0
            if HAS_CONTENT:
                c = tl.load(C + b * sc_b + cols * sc_s + h * sc_n,
                            mask=cols < keys, other=0.0).to(tl.float32)[None, :]
            s = _masked_scores(s, rows[:, None], cols[None, :], c, mask_ptr,
                               smask_t, smask_s, length, keys, qk_scale,
                               HAS_CONTENT, MASK_KIND, CAUSAL, EVEN_S)
            p = tl.exp2(s - lse[:, None])
            v = _load(v_ptr, cols, keys, sv_s, vv, value_width, sv_v)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = _masked_zero(s, p * (dp - delta[:, None]), MASK_KIND, CAUSAL,
                              EVEN_S).to(k_a.dtype)
            dqm_a += tl.dot(ds, k_a, input_precision=PRECISION)
            if K_B > 0:
                dqm_b += tl.dot(ds, k_b, input_precision=PRECISION)
        # d loss / d (q * m_h), then d m_h and this head's part of d q.
        dqm_a = dqm_a * scale
        tl.store(dm_ptr + h * sdm_n + ka, tl.sum(dqm_a * q_a.to(tl.float32), 0),
                 mask=ka < key_width)
        if K_B > 0:
            dqm_b = dqm_b * scale
            tl.store(dm_ptr + h * sdm_n + kb,
                     tl.sum(dqm_b * q_b.to(tl.float32), 0), mask=kb < key_width)
            mask_a = query_rows & (ka[None, :] < key_width)
            mask_b = query_rows & (kb[None, :] < key_width)
            part_a = dqm_a * m_a[None, :]
            part_b = dqm_b * m_b[None, :]
            if hh > 0:
                part_a += tl.load(dq_ptr + ka[None, :], mask=mask_a, other=0.0)
                part_b += tl.load(dq_ptr + kb[None, :], mask=mask_b, other=0.0)
            tl.store(dq_ptr + ka[None, :], part_a, mask=mask_a)
            tl.store(dq_ptr + kb[None, :], part_b, mask=mask_b)
        else:
            dq_a += dqm_a * m_a[None, :]
    if K_B == 0:
        tl.store(dq_ptr + ka[None, :], dq_a,
                 mask=query_rows & (ka[None, :] < key_width))


@triton.jit
def _delta_kernel(
    O, DO, DELTA, so_b, so_t, so_n, so_v, sdo_b, sdo_t, sdo_n, sdo_v,
    sd_b, sd_n, sd_t, length, value_width,
    BLOCK_T: tl.constexpr, V_TILE: tl.constexpr,
):
    """delta = sum_v out * d_out in float32 on a block of query rows of one
    head, `(B, N, T)` (lse's layout); out and d_out read through their
    strides."""
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    vv = tl.arange(0, V_TILE)
    out = _load(O + b * so_b + h * so_n, rows, length, so_t, vv, value_width,
                so_v)  # (BT, Vt)
    d_out = _load(DO + b * sdo_b + h * sdo_n, rows, length, sdo_t, vv,
                  value_width, sdo_v)
    delta = tl.sum(out.to(tl.float32) * d_out.to(tl.float32), 1)
    tl.store(DELTA + b * sd_b + h * sd_n + rows * sd_t, delta,
             mask=rows < length)


@triton.jit
def _mixing_gradient_kernel(
    DQM, Q, M, DQ, DM, QM,
    sdqm_b, sdqm_n, sdqm_t, sq_b, sq_t, sm_n, sdq_b, sdq_t, sdm_b, sdm_i,
    sdm_n, sqm_b, sqm_n, sqm_t,
    length, key_width, num_heads, scale,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, ACCUMULATE: tl.constexpr,
):
    """From dQm_h = dS_h k (float32, `(B, N, T, K)`), on a block of query
    rows and key columns: dq = scale * sum_h m_h * dQm_h, this block's part
    of dm_h = scale * sum_t q * dQm_h, and the mixed query q * m_h (rounded
    to the input dtype, as `_mix`) for the key's product. Every axis but the
    batch's and the heads' is contiguous. With `ACCUMULATE` (heads in
    chunks), dq is added to what `DQ` (float32) holds."""
    i = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    col0 = tl.program_id(2) * BLOCK_C
    rows = i * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = col0 + tl.arange(0, BLOCK_C)
    inside = (rows[:, None] < length) & (cols[None, :] < key_width)
    offsets = rows[:, None] * sq_t + cols[None, :]
    q = tl.load(Q + b * sq_b + offsets, mask=inside, other=0.0)
    q32 = q.to(tl.float32)
    dq = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
    for h in range(0, num_heads):
        m = tl.load(M + h * sm_n + cols, mask=cols < key_width, other=0.0)
        m32 = m.to(tl.float32)
        dqm = tl.load(DQM + b * sdqm_b + h * sdqm_n + rows[:, None] * sdqm_t
                      + cols[None, :], mask=inside, other=0.0)  # (BT, BC)
        dq += dqm * m32[None, :]
        tl.store(DM + b * sdm_b + i * sdm_i + h * sdm_n + cols,
                 tl.sum(dqm * q32, 0) * scale, mask=cols < key_width)
        tl.store(QM + b * sqm_b + h * sqm_n + rows[:, None] * sqm_t
                 + cols[None, :], (q32 * m32[None, :]).to(q.dtype), mask=inside)
    dq_ptr = DQ + b * sdq_b + rows[:, None] * sdq_t + cols[None, :]
    dq = dq * scale
    if ACCUMULATE:
        dq += tl.load(dq_ptr, mask=inside, other=0.0)
    tl.store(dq_ptr, dq.to(DQ.dtype.element_ty), mask=inside)


# ---------------------------------------------------------------------------
# The autograd function.


def _common(q, k, v, m, c, mask):
    """Pointers-and-strides arguments shared by the three kernels."""
    mask_arr, _, mask_strides = _mask_args(mask)
    return (
        [q, k, v, m, c if c is not None else q,
         mask_arr if mask_arr is not None else q],
        [*q.stride(), *k.stride(), *v.stride(), *m.stride(),
         *_strides(c, 3), *mask_strides],
    )


def _constants(q, k, v, c, mask, static, block_k):
    keys = k.shape[1]
    tiles = key_tiles(q.shape[-1]) + (0,)  # (A, B); B 0: one tile
    return dict(
        K_A=tiles[0],
        K_B=tiles[1],
        V_TILE=tile_width(v.shape[-1]),
        HAS_CONTENT=c is not None, MASK_KIND=_mask_args(mask)[1],
        CAUSAL=static.causal, EVEN_S=keys % block_k == 0,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


def _forward(q, k, v, m, c, mask, static):
    cfg = static.config
    batch, length, _ = q.shape
    keys, num_heads, value_width = v.shape[1:]
    out = torch.empty((batch, length, num_heads, value_width), dtype=q.dtype,
                      device=q.device)
    lse = torch.empty((batch, num_heads, length), dtype=torch.float32,
                      device=q.device)
    tensors, strides = _common(q, k, v, m, c, mask)
    grid = (num_heads, triton.cdiv(length, cfg.block_q), batch)
    _forward_kernel[grid](
        *tensors, out, lse, *strides, *out.stride(), *lse.stride(),
        length, keys, q.shape[-1], value_width, static.scale * _LOG2E,
        BLOCK_Q=cfg.block_q, BLOCK_K=cfg.block_k,
        **_constants(q, k, v, c, mask, static, cfg.block_k),
        num_warps=cfg.warps, num_stages=cfg.stages,
    )
    return out, lse


def _backward(q, k, v, m, c, mask, out, lse, d_out, static):
    """The gradients: with the score gradient written to memory in chunks of
    batch rows (`score_gradient_rows`) that fit in
    `Config.score_gradient_bytes`, or of one batch row and some of its heads
    (`score_gradient_heads`) where a whole row does not; else (one head's dS
    over the budget, or a budget of 0) the flash backward."""
    batch, length, _ = q.shape
    keys, num_heads = v.shape[1:3]
    d_out = d_out.to(q.dtype)
    delta = torch.empty_like(lse)  # (B, N, T)
    block_t = 64
    _delta_kernel[(triton.cdiv(length, block_t), num_heads, batch)](
        out, d_out, delta, *_strides(out, 4), *_strides(d_out, 4),
        *delta.stride(), length, out.shape[-1],
        BLOCK_T=block_t, V_TILE=tile_width(out.shape[-1]),
    )
    row_bytes = keys * q.element_size()  # a row of dS
    budget = static.config.score_gradient_bytes
    rows = score_gradient_rows(batch, num_heads, length, row_bytes, budget)
    heads = num_heads
    if rows == 0:  # one batch row at a time, its heads in chunks
        rows, heads = 1, score_gradient_heads(num_heads, length, row_bytes,
                                              budget)
    if heads > 0:
        return _backward_written(q, k, v, m, c, mask, lse, delta, d_out,
                                 static, rows, heads)
    return _backward_flash(q, k, v, m, c, mask, lse, delta, d_out, static)


def _batch_rows(x, rows):
    """`x[rows]` along the batch axis, or `x` where it is `None` or
    broadcast (batch size 1)."""
    if x is None or x.shape[0] == 1:
        return x
    return x[rows]


def _product(a, b):
    """Batched `a @ b` accumulated and returned in float32 (cuBLAS writes
    float32 from half inputs; elsewhere the inputs are cast)."""
    if a.is_cuda and a.dtype in _HALF:
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


def _backward_written(q, k, v, m, c, mask, lse, delta, d_out, static, rows,
                      heads):
    """dS_h (B', S, N', T) from `_key_kernel` (`WRITE_DS`, with dV and dC),
    then the width-K products in cuBLAS, on chunks of `rows` batch rows and
    `heads` heads (all of them, or one row's heads in chunks):

        dQm_h = dS_h k                     (d loss / d (q * m_h))
        dq = sum_h m_h * dQm_h,   dm_h = sum_{b,t} q * dQm_h
                                           (`_mixing_gradient_kernel`),
        dk = sum_{h,t} dS_h^T (q * m_h)    (one product over (h, t)).

    Every kernel reads a chunk through views (its heads' slices of the
    values, mixing, content term, mask, output gradient, lse and delta);
    dq and dk are summed over head chunks in float32.
    """
    cfg = static.config
    batch, length, key_width = q.shape
    keys, num_heads, value_width = v.shape[1:]
    bq, bk = cfg.block_q_ds, cfg.block_k_ds
    n_kblocks = triton.cdiv(keys, bk)
    constants = _constants(q, k, v, c, mask, static, bk)
    head_chunks = [slice(h, min(h + heads, num_heads))
                   for h in range(0, num_heads, heads)]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty_like(v)
    dc = None
    if c is not None:
        dc = torch.empty((batch, keys, num_heads), dtype=torch.float32,
                         device=q.device)
    # Flat buffers: a chunk's dS (B', S, N', T) and mixed query (B', N', T,
    # K) are contiguous views of their first elements, also where the last
    # chunk has fewer rows or heads.
    ds = torch.empty(rows * keys * heads * length, dtype=q.dtype,
                     device=q.device)
    qm = torch.empty(rows * heads * length * key_width, dtype=q.dtype,
                     device=q.device)
    dq32 = None
    if len(head_chunks) > 1:  # dq summed over head chunks
        dq32 = torch.empty((rows, length, key_width), dtype=torch.float32,
                           device=q.device)
    block_t, block_c = cfg.block_t_mix, cfg.block_c_mix
    n_tblocks = triton.cdiv(length, block_t)
    dm = torch.empty((batch, n_tblocks, num_heads, key_width),
                     dtype=torch.float32, device=q.device)
    q, m = q.contiguous(), m.contiguous()
    for first in range(0, batch, rows):
        part = slice(first, min(first + rows, batch))
        n = part.stop - part.start
        q_p, k_p = q[part], k[part]
        v_p, c_p = v[part], _batch_rows(c, part)
        mask_p = _batch_rows(mask, part)
        dk_p = None
        for chunk in head_chunks:
            h = chunk.stop - chunk.start
            groups = cfg.head_groups or head_groups(h, n * n_kblocks)
            tensors, strides = _common(
                q_p, k_p, v_p[:, :, chunk], m[chunk],
                None if c_p is None else c_p[..., chunk],
                _mask_heads(mask_p, chunk))
            ds_p = ds[:n * keys * h * length].view(n, keys, h, length)
            qm_p = qm[:n * h * length * key_width].view(n, h, length,
                                                         key_width)
            dv_p = dv[part][:, :, chunk]
            dc_p = dc[part][..., chunk] if dc is not None else None
            d_out_p = d_out[part][:, :, chunk]
            lse_p, delta_p = lse[part][:, chunk], delta[part][:, chunk]
            _key_kernel[(n_kblocks, n, groups)](
                *tensors, d_out_p, lse_p, delta_p, ds_p, ds_p, dv_p,
                dv_p if dc_p is None else dc_p,
                *strides, *d_out_p.stride(), *lse_p.stride(), 0, 0, 0,
                ds_p.stride(0), ds_p.stride(2), ds_p.stride(3),
                ds_p.stride(1), *dv_p.stride(), *_strides(dc_p, 3),
                length, keys, key_width, value_width,
                static.scale * _LOG2E, static.scale, h // groups,
                BLOCK_Q=bq, BLOCK_K=bk, **constants, WRITE_DS=True,
                num_warps=cfg.warps_ds, num_stages=cfg.stages_ds,
            )
            ds_p = ds_p.view(n, keys, h * length)  # (B', S, N'*T)
            dqm = _product(ds_p.transpose(1, 2), k_p)  # (B', N'*T, K)
            dm_p = dm[part][:, :, chunk]
            dq_p = dq[part] if dq32 is None else dq32[:n]
            _mixing_gradient_kernel[(n_tblocks, n, triton.cdiv(key_width,
                                                               block_c))](
                dqm, q_p, m[chunk], dq_p, dm_p, qm_p,
                dqm.stride(0), length * dqm.stride(1), dqm.stride(1),
                q_p.stride(0), q_p.stride(1), m.stride(0), dq_p.stride(0),
                dq_p.stride(1), *dm_p.stride()[:3], *qm_p.stride()[:3],
                length, key_width, h, static.scale,
                BLOCK_T=block_t, BLOCK_C=block_c,
                ACCUMULATE=dq32 is not None and chunk.start > 0,
            )
            product = _product(ds_p, qm_p.view(n, h * length, key_width))
            dk_p = product if dk_p is None else dk_p + product  # (B', S, K)
        if dq32 is not None:
            dq[part].copy_(dq32[:n])
        torch.mul(dk_p, static.scale, out=dk[part])  # float32, then cast
    if dc is not None:
        dc = dc.to(c.dtype)
    return dq, dk, dv, dm.sum((0, 1)).to(m.dtype), dc


def _mask_heads(mask, chunk):
    """`mask[:, chunk]` along the heads' axis, or `mask` where it is `None`
    or broadcast over heads."""
    if mask is None or mask.shape[1] == 1:
        return mask
    return mask[:, chunk]


def _backward_flash(q, k, v, m, c, mask, lse, delta, d_out, static):
    """dK, dV, dC per key block (`_key_kernel`) and dQ, dM per query block
    (`_query_kernel`), each kernel recomputing the scores
    (FlashAttention-2's backward)."""
    cfg = static.config
    batch, length, key_width = q.shape
    keys, num_heads, value_width = v.shape[1:]
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    n_qblocks, n_kblocks = triton.cdiv(length, bq), triton.cdiv(keys, bk)
    groups = cfg.head_groups or head_groups(
        num_heads, batch * max(n_qblocks, n_kblocks))
    per_group = num_heads // groups
    tensors, strides = _common(q, k, v, m, c, mask)
    constants = _constants(q, k, v, c, mask, static, bk)
    scalars = (length, keys, key_width, value_width, static.scale * _LOG2E,
               static.scale, per_group)
    device = q.device
    dk = torch.empty((groups, batch, keys, key_width), dtype=torch.float32,
                     device=device)
    dv = torch.empty_like(v)
    dc = None
    if c is not None:
        dc = torch.empty((batch, keys, num_heads), dtype=torch.float32,
                         device=device)
    _key_kernel[(n_kblocks, batch, groups)](
        *tensors, d_out, lse, delta, dk, dk, dv,
        dc if dc is not None else dk, *strides, *d_out.stride(),
        *lse.stride(), *dk.stride()[:3], 0, 0, 0, 0, *dv.stride(),
        *_strides(dc, 3), *scalars,
        BLOCK_Q=bq, BLOCK_K=bk, **constants, WRITE_DS=False,
        num_warps=cfg.warps_bwd, num_stages=cfg.stages,
    )
    dq = torch.empty((groups, batch, length, key_width), dtype=torch.float32,
                     device=device)
    dm = torch.empty((batch, n_qblocks, num_heads, key_width),
                     dtype=torch.float32, device=device)
    _query_kernel[(n_qblocks, batch, groups)](
        *tensors, d_out, lse, delta, dq, dm,
        *strides, *d_out.stride(), *lse.stride(), *dq.stride()[:3],
        *dm.stride()[:3], *scalars,
        BLOCK_Q=bq, BLOCK_K=bk, **constants,
        num_warps=cfg.warps_bwd, num_stages=cfg.stages,
    )
    dq = dq.sum(0).to(q.dtype)
    dk = dk.sum(0).to(k.dtype)
    dm = dm.sum((0, 1)).to(m.dtype)
    if dc is not None:
        dc = dc.to(c.dtype)
    return dq, dk, dv, dm, dc


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, m, c, mask, scale, causal, config):
        static = _Static(scale, causal, config)
        out, lse = _forward(q, k, v, m, c, mask, static)
        ctx.save_for_backward(q, k, v, m, c, mask, out, lse)
        ctx.static = static
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, m, c, mask, out, lse = ctx.saved_tensors
        grads = _backward(q, k, v, m, c, mask, out, lse, d_out, ctx.static)
        return (*grads, None, None, None, None)
