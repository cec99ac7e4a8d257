"""GPU correctness check of the Pallas collaborative attention kernel.

Not collected by pytest (no GPU in CI): run it on the GPU machine,

    python3 tests/gpu_pallas_attention.py

and commit its output (benchmarks/results/<date>-h200-kernel/gpu_check.txt).
It compiles the kernel (Triton lowering) and compares the output and the
gradients of every input (query, key, values, mixing, content term) with the
explicit computation in float32 (`_pallas_attention.reference` at "highest"
matmul precision): bfloat16 inputs, float32 for two cases and float16 for one, every mask kind
(none, causal, key padding, general per-head boolean mask with fully masked
rows, causal + key padding), odd lengths and widths (K 64 to 512, V 48 to
128), and NaN propagation. bfloat16 errors are printed next to those of the
explicit path run in bfloat16 (the XLA einsums on bf16 inputs), the yardstick
for "as exact as the explicit path". Exits non-zero if a case fails.
"""

import sys

import jax
import jax.numpy as jnp

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
]


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
        lengths = jnp.array([s, s // 2, 1][:batch])
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


def errors(fn, args, mask, grad, scale, causal):
    """Output and gradients of `fn` (float32)."""
    argnums = tuple(i for i, a in enumerate(args) if a is not None)

    def loss(*a):
        out = fn(*a, mask=mask, scale=scale, is_causal=causal)
        return jnp.sum(out.astype(jnp.float32) * grad), out

    (_, out), grads = jax.jit(
        jax.value_and_grad(loss, argnums, has_aux=True)
    )(*args)
    return [out] + list(grads)


def rel(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def main():
    print("card:", jax.devices()[0].device_kind, "| jax", jax.__version__)
    print("| case (B,T,S,N,K,V,content,mask,causal) | dtype | out | dq | dk | dv | dm | dc | explicit-in-dtype worst | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
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
            truth = errors(pa.reference, [None if a is None else a.astype(jnp.float32) for a in args],
                           mask, grad, scale, causal)
            got = errors(pa.attention, args, mask, grad, scale, causal)
            errs = [rel(g, t) for g, t in zip(got, truth)]
            explicit = errors(reference_in_dtype, args, mask, grad, scale, causal)
            yard = max(rel(e, t) for e, t in zip(explicit, truth))
            # bf16/f16: within 2x the explicit path's own error (+ a floor).
            bound = tol if tol is not None else 2 * yard + 1e-2
            ok = all(e <= bound for e in errs) and all(
                bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))) for g in got
            )
            failed += not ok
            cells = [f"{e:.1e}" for e in errs] + ["-"] * (6 - len(errs))
            print(f"| {case} | {jnp.dtype(dtype).name} | " + " | ".join(cells)
                  + f" | {yard:.1e} | {'yes' if ok else 'NO'} |", flush=True)
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
    print("FAILED cases:", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
