"""GPU correctness check of the Pallas decoding kernel.

Not collected by pytest (no GPU in CI): run it on the GPU machine,

    KERAS_BACKEND=jax python3 tests/gpu_pallas_decode.py

It compiles the kernel (`collab_keras/ops/_pallas_decode.py`, Triton
lowering) and compares its output with the explicit computation in float32
(`_pallas_decode.reference` at "highest" matmul precision): bfloat16 inputs
(float16 and float32 for one case each), the decoding shapes of
`benchmarks/decode_step.py` and odd ones (a cache of 2047 or 77 positions,
shared key widths 192 to 512, values 48 to 128 wide, 1 to 16 heads, 1 to 4
query rows), every mask the layer passes (the decoding prefix `(1, 1, S)`,
`(B, T, S)`, per head `(B, N, T, S)` with rows that have no key), one split
and many. bfloat16 errors are printed next to those of the layer's XLA
decoding core (the explicit arithmetic in the input dtype), the yardstick;
rows with no key must give 0 and NaN must reach the rows it reaches on the
explicit path, no other. Exits non-zero if a case fails.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from collab_keras.ops import _pallas_decode as pd

jax.config.update("jax_default_matmul_precision", "highest")

CASES = [
    # B, T, S, N, K, V, content, mask, config
    (32, 1, 2048, 12, 256, 64, True, "prefix", None),  # decode_step.py
    (32, 1, 2048, 12, 128, 64, True, "prefix", None),
    (4, 1, 2047, 12, 192, 64, True, "rows", None),
    (3, 2, 77, 5, 64, 48, False, "heads", pd.Config(block_k=16, splits=3)),
    (2, 4, 300, 16, 512, 128, True, "heads", None),  # one stage of 16 keys
    (8, 1, 1000, 1, 256, 64, True, None, pd.Config(splits=1)),
    (2, 1, 4096, 12, 384, 64, True, "rows", pd.Config(16, 0, 8, 3)),
]
NAN_CASE = CASES[3]  # two query rows, per-head mask, three splits


def inputs(case, dtype, seed=0):
    batch, rows, keys, heads, width, value_width, content, kind, _ = case
    ks = jax.random.split(jax.random.key(seed), 6)
    q = jax.random.normal(ks[0], (batch, rows, width), jnp.float32)
    k = jax.random.normal(ks[1], (batch, keys, width), jnp.float32)
    v = jax.random.normal(ks[2], (batch, keys, heads, value_width), jnp.float32)
    m = jax.random.normal(ks[3], (heads, width), jnp.float32)
    c = jax.random.normal(ks[4], (batch, keys, heads)) * 3 if content else None
    mask = None
    if kind == "prefix":
        mask = jnp.arange(keys)[None, None, :] <= keys - 2
    elif kind in ("rows", "heads"):
        shape = (batch, rows, keys) if kind == "rows" else (batch, heads, rows, keys)
        mask = jax.random.bernoulli(ks[5], 0.6, shape)
        mask = mask.at[-1, ..., 0, :].set(False)  # rows with no key
    cast = lambda x: None if x is None else x.astype(dtype)
    return [cast(x) for x in (q, k, v, m, c)], mask


def explicit_in_dtype(query, key, value, mixing, content=None, mask=None,
                      scale=1.0):
    """The XLA decoding core's arithmetic (`_compute_decode_attention`):
    products in the input dtype, softmax in float32, weights rounded."""
    dtype = query.dtype
    mixed = jnp.einsum("btk,nk->btnk", query * jnp.asarray(scale, dtype), mixing)
    scores = jnp.einsum("btnk,bsk->bnts", mixed, key)
    if content is not None:
        scores = scores + jnp.transpose(content * jnp.asarray(scale, dtype),
                                        (0, 2, 1))[:, :, None]
    scores = scores.astype(jnp.float32)
    valid = jnp.ones(scores.shape, bool)
    if mask is not None:
        valid = valid & jnp.reshape(mask, pd._mask_shape(mask.shape))
    scores = jnp.where(valid, scores, -1e9)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = jnp.where(valid, weights, 0.0).astype(dtype)
    return jnp.einsum("bnts,bsnv->btnv", weights, value)


def rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ok = ~np.isnan(b)
    return float(np.max(np.abs(a[ok] - b[ok])) / (np.max(np.abs(b[ok])) + 1e-30))


def main():
    print("card:", jax.devices()[0].device_kind, "| jax", jax.__version__)
    print("| case (B,T,S,N,K,V,content,mask,config) | dtype | kernel error | "
          "XLA core error | ok |")
    print("|---|---|---|---|---|")
    failed = 0
    for case in CASES:
        scale = case[4] ** -0.5
        for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
            if dtype != jnp.bfloat16 and case is not CASES[0]:
                continue
            args, mask = inputs(case, dtype)
            f32 = [None if a is None else a.astype(jnp.float32) for a in args]
            truth = jax.jit(pd.reference, static_argnames="scale")(
                *f32, mask=mask, scale=scale)
            kernel = jax.jit(
                lambda *a: pd.attention(*a, scale=scale, config=case[8]))
            got = kernel(*args, mask)
            error = rel(got, truth)
            yard = rel(jax.jit(explicit_in_dtype, static_argnames="scale")(
                *args, mask=mask, scale=scale), truth)
            bound = 2e-5 if dtype == jnp.float32 else 2 * yard + 1e-2
            ok = error <= bound and bool(jnp.all(jnp.isfinite(
                got.astype(jnp.float32))))
            if mask is not None and case[7] != "prefix":
                ok = ok and bool(jnp.all(got[-1, 0] == 0))  # no key: 0
            failed += not ok
            print(f"| {case[:8]} {case[8] or 'default'} | "
                  f"{jnp.dtype(dtype).name} | {error:.1e} | {yard:.1e} | "
                  f"{'yes' if ok else 'NO'} |", flush=True)
    # NaN reaches exactly the rows and heads it reaches on the explicit path.
    case = NAN_CASE
    args, mask = inputs(case, jnp.bfloat16)
    args[0] = args[0].at[0, 1, 3].set(jnp.nan)  # one query row: all heads
    args[2] = args[2].at[1, 10, 2, 0].set(jnp.nan)  # one head's value
    got = np.asarray(pd.attention(*args, mask=mask, scale=0.1,
                                  config=case[8]), np.float32)
    want = np.asarray(pd.reference(*args, mask=mask, scale=0.1), np.float32)
    same = bool(np.array_equal(np.isnan(got), np.isnan(want)))
    reached = bool(np.isnan(got[0, 1]).all()) and bool(np.isnan(got[1, :, 2, 0]).any())
    print(f"NaN where the explicit path has NaN, nowhere else: {same}; "
          f"a NaN query row -> every head of it NaN, a NaN value -> its head: {reached}")
    failed += (not same) + (not reached)
    print("FAILED cases:", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
