"""GPU correctness check of the Pallas collaborative attention kernel.

Not collected by pytest (no GPU in CI): run it on the GPU machine,

    python3 tests/gpu_pallas_attention.py [--backwards written,flash,chunks]

and commit its output (benchmarks/results/<date>-h200-kernel/gpu_check.txt).
It compiles the kernel (Triton lowering) and compares the output and the
gradients of every input (query, key, values, mixing, content term) with the
explicit computation in float64 (`_pallas_attention.reference` on float64
inputs): bfloat16 inputs, float32 for two cases and float16 for one, every
mask kind (none, causal, key padding, general per-head boolean mask with
fully masked rows, causal + key padding, causal + per-head mask), odd
lengths and widths (K 64 to 512, 192, 320 and 384 as two tiles, V 48 to
128), and NaN propagation; each
case with both backwards: `written` (the score gradient written, the
default where it fits) and `flash` (`score_gradient_bytes=0`), and for two
cases `chunks` (the written backward with a budget of one batch row: one
chunk per row). bfloat16 errors are printed next to those of the explicit
path run in bfloat16 (the XLA einsums on bf16 inputs), the yardstick for
"as exact as the explicit path". Exits non-zero if a case fails.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from collab_keras.ops import _pallas_attention as pa

jax.config.update("jax_default_matmul_precision", "highest")

CASES = [
    # B, T, S, N, K, V, content, mask, causal
    (2, 128, 128, 12, 256, 64, True, None, False),
    (2, 77, 77, 12, 256, 64, True, "causal", True),
    (3, 100, 131, 4, 192, 48, True, "keys", False),
    (2, 64, 200, 6, 128, 64, False, "full", False),
    (2, 96, 96, 3, 384, 64, True, "keys", True),
    (1, 33, 65, 2, 512, 128, True, "full_heads", False),
    (2, 130, 130, 12, 64, 64, True, None, False),
    (2, 200, 200, 12, 128, 64, True, "full_heads", True),
    (3, 257, 257, 12, 384, 64, False, None, True),
    (2, 100, 100, 6, 320, 64, True, "causal", True),  # 256 + 64 columns
    (4, 130, 130, 12, 256, 64, True, "keys", True),
]
CHUNKED = (CASES[0], CASES[-1])  # also run in chunks of one batch row


BACKWARDS = ("written", "flash", "chunks")  # `--backwards` picks some


def backwards(case, dtype):
    """The backwards to check on `case`: name -> `Config`."""
    batch, t, s, n, k, v = case[:6]
    config = pa.default_config(k, v, dtype,
                               full_mask=case[7] in ("full", "full_heads"))
    kinds = {"written": config,
             "flash": config._replace(score_gradient_bytes=0)}
    if case in CHUNKED:
        # The padded sizes (as `pa.attention` pads them).
        t_pad = pa.round_up(t, max(config.block_q, config.block_q_bwd,
                                   config.block_q_ds))
        s_pad = pa.round_up(s, pa._key_block(config))
        k_pad = sum(pa.key_tiles(k))
        sizes = (batch, n, t_pad, s_pad, k_pad, dtype)
        assert pa.written_rows(*sizes, config) == batch  # one chunk
        # The budget of one row: `batch` chunks.
        size = jnp.dtype(dtype).itemsize
        row = n * t_pad * (s_pad * size + k_pad * (size + 4))
        chunks = config._replace(score_gradient_bytes=row)
        assert pa.written_rows(*sizes, chunks) == 1
        kinds["chunks"] = chunks
    return {name: kinds[name] for name in BACKWARDS if name in kinds}


def inputs(case, dtype, seed=0):
    batch, t, s, n, k, v, content, mask_kind, _ = case
    ks = jax.random.split(jax.random.key(seed), 8)
    q = jax.random.normal(ks[0], (batch, t, k), jnp.float32)
    key = jax.random.normal(ks[1], (batch, s, k), jnp.float32)
    val = jax.random.normal(ks[2], (batch, s, n, v), jnp.float32)
    m = jax.random.normal(ks[3], (n, k), jnp.float32)
    c = jax.random.normal(ks[4], (batch, s, n), jnp.float32) * 3 if content else None
    mask = None
    if mask_kind == "keys":
        lengths = jnp.array([s, s // 2, 1, s - 3][:batch])
        mask = (jnp.arange(s)[None, :] < lengths[:, None])[:, None, None, :]
    elif mask_kind in ("full", "full_heads"):
        heads = n if mask_kind == "full_heads" else 1
        mask = jax.random.bernoulli(ks[5], 0.6, (batch, heads, t, s))
        mask = mask.at[:, :, 1, :].set(False)  # a fully masked row
    grad = jax.random.normal(ks[6], (batch, t, n, v), jnp.float32)
    cast = lambda x: None if x is None else x.astype(dtype)
    return [cast(x) for x in (q, key, val, m, c)], mask, grad


def reference_in_dtype(query, key, value, mixing, content=None, mask=None,
                       scale=1.0, is_causal=False):
    """The explicit path's arithmetic: einsums on the input dtype (float32
    accumulation), softmax in float32, weights rounded to the input dtype."""
    dtype = query.dtype
    mixed = jnp.einsum("btk,nk->btnk", query, mixing)
    scores = jnp.einsum("btnk,bsk->bnts", mixed, key,
                        preferred_element_type=jnp.float32)
    if content is not None:
        scores = scores + jnp.transpose(content.astype(jnp.float32), (0, 2, 1))[:, :, None, :]
    scores = scores * scale
    t, s = query.shape[1], key.shape[1]
    valid = jnp.ones((1, 1, t, s), bool)
    if is_causal:
        valid = valid & jnp.tril(jnp.ones((t, s), bool))[None, None]
    if mask is not None:
        valid = valid & mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    scores = jnp.where(valid, scores, -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True)
    top = jnp.where(top == -jnp.inf, 0.0, top)
    weights = jnp.exp(scores - jax.lax.stop_gradient(top))
    total = jnp.sum(weights, axis=-1, keepdims=True)
    weights = (weights / jnp.where(total > 0, total, 1.0)).astype(dtype)
    return jnp.einsum("bnts,bsnv->btnv", weights, value)


def errors(fn, args, mask, grad, scale, causal, **kwargs):
    """Output and gradients of `fn` (in the dtype of `grad`)."""
    argnums = tuple(i for i, a in enumerate(args) if a is not None)

    def loss(*a):
        out = fn(*a, mask=mask, scale=scale, is_causal=causal, **kwargs)
        return jnp.sum(out.astype(grad.dtype) * grad), out

    (_, out), grads = jax.jit(
        jax.value_and_grad(loss, argnums, has_aux=True)
    )(*args)
    return [out] + list(grads)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def truth(args, mask, grad, scale, causal):
    """Output and gradients of the explicit computation in float64."""
    with jax.enable_x64(True):
        f64 = [None if a is None else jnp.asarray(a, jnp.float64) for a in args]
        got = errors(pa.reference, f64, mask, jnp.asarray(grad, jnp.float64),
                     scale, causal)
        return [np.asarray(x, np.float64) for x in got]


def main():
    global BACKWARDS
    parser = argparse.ArgumentParser()
    parser.add_argument("--backwards", default=",".join(BACKWARDS),
                        help="comma-separated, of " + ",".join(BACKWARDS))
    BACKWARDS = tuple(parser.parse_args().backwards.split(","))
    print("card:", jax.devices()[0].device_kind, "| jax", jax.__version__)
    print("| case (B,T,S,N,K,V,content,mask,causal) | dtype | backward | out | dq | dk | dv | dm | dc | explicit-in-dtype worst | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for case in CASES:
        scale = case[4] ** -0.5
        causal = case[8]
        for dtype, tol in ((jnp.float32, 2e-5), (jnp.bfloat16, None),
                           (jnp.float16, None)):
            if dtype == jnp.float16 and case is not CASES[0]:
                continue
            if dtype == jnp.float32 and case not in (CASES[0], CASES[2]):
                continue
            args, mask, grad = inputs(case, dtype)
            exact = truth(args, mask, grad, scale, causal)
            explicit = errors(reference_in_dtype, args, mask, grad, scale, causal)
            yard = max(rel(e, t) for e, t in zip(explicit, exact))
            # bf16/f16: within 2x the explicit path's own error (+ a floor).
            bound = tol if tol is not None else 2 * yard + 1e-2
            for name, config in backwards(case, dtype).items():
                got = errors(pa.attention, args, mask, grad, scale, causal,
                             config=config)
                errs = [rel(g, t) for g, t in zip(got, exact)]
                ok = all(e <= bound for e in errs) and all(
                    bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
                    for g in got
                )
                failed += not ok
                cells = [f"{e:.1e}" for e in errs] + ["-"] * (6 - len(errs))
                print(f"| {case} | {jnp.dtype(dtype).name} | {name} | "
                      + " | ".join(cells)
                      + f" | {yard:.1e} | {'yes' if ok else 'NO'} |",
                      flush=True)
    # Fully masked rows give 0 and finite gradients; NaN propagates.
    case = CASES[3]
    args, mask, grad = inputs(case, jnp.bfloat16)
    out = pa.attention(*args, mask=mask, scale=0.1)
    zero_row = bool(jnp.all(out[:, 1] == 0))
    args[0] = args[0].at[0, 5, 3].set(jnp.nan)
    out = pa.attention(*args, mask=mask, scale=0.1)
    nan_row = bool(jnp.all(jnp.isnan(out[0, 5]))) and bool(jnp.all(jnp.isfinite(out[1])))
    print(f"fully masked row -> 0: {zero_row}; NaN in one query row -> that row NaN, others finite: {nan_row}")
    failed += (not zero_row) + (not nan_row)
    # Gradients: the fully masked row's query gradient is 0, and a NaN in
    # a query row reaches the same gradient entries as on the explicit path.
    args, mask, grad = inputs(case, jnp.float32)
    for name, config in backwards(case, jnp.float32).items():
        got = errors(pa.attention, args, mask, grad, 0.1, False, config=config)
        zero_grad = bool(jnp.all(got[1][:, 1] == 0))
        nan_args = [args[0].at[0, 5, 3].set(jnp.nan)] + args[1:]
        got = errors(pa.attention, nan_args, mask, grad, 0.1, False,
                     config=config)
        want = errors(pa.reference, nan_args, mask, grad, 0.1, False)
        same_nans = all(bool(jnp.all(jnp.isnan(a) == jnp.isnan(b)))
                        for a, b in zip(got, want))
        print(f"{name}: fully masked row -> query gradient 0: {zero_grad}; "
              f"NaN reaches the explicit path's gradient entries: {same_nans}")
        failed += (not zero_grad) + (not same_nans)
    print("FAILED cases:", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
