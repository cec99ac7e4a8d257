"""GPU correctness check of the Triton collaborative attention kernel (torch).

Not collected by pytest (no GPU in CI): run it on a CUDA machine,

    KERAS_BACKEND=torch python3 tests/gpu_triton_attention.py [MIN_KEY_WIDTH]

(with MIN_KEY_WIDTH, only the cases of keys at least that wide).

It compiles the kernel and compares the output and the gradients of every
input (query, key, values, mixing, content term) with the explicit
computation in float64: float32 inputs (the kernel's exact IEEE products,
bound 1e-5), bfloat16 and float16 (bound: twice the error of the explicit
path run in the input dtype, plus 1e-2), every mask kind (none, causal, key
padding `(B, 1, 1, S)`, shared `(B, 1, T, S)`, per head `(B, N, T, S)`, with
fully masked rows, causal + mask), odd lengths, key widths 64 to 512, value
widths 32, 64, 80; then that fully masked rows give 0, that NaN propagates,
and that the dispatch (`collaborative_dot_product_attention`) routes
bfloat16 CUDA inputs to this kernel. Every case runs both backward passes:
the score gradient written to memory (in one chunk, in chunks of one batch
row, and in chunks of one row's heads) and the flash backward. Exits
non-zero if a case fails.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch  # noqa: E402

from collab_keras.ops import _torch_attention  # noqa: E402
from collab_keras.ops import _triton_attention as ta  # noqa: E402
from _torch_attention_reference import explicit  # noqa: E402
from _torch_attention_reference import output_and_grads  # noqa: E402

CASES = [
    # B, T, S, N, K, V, content, mask, causal
    (2, 128, 128, 12, 256, 64, True, None, False),
    (2, 77, 77, 12, 256, 64, True, None, True),
    (3, 100, 131, 4, 192, 80, True, "keys", False),
    (2, 64, 200, 6, 128, 64, False, "full", False),
    (2, 96, 96, 3, 384, 32, True, "keys", True),
    (1, 33, 65, 2, 512, 80, True, "full_heads", False),
    (2, 130, 130, 12, 64, 64, True, None, False),
    (2, 257, 300, 12, 384, 64, True, "full", True),
]
FLOAT32_CASES = (0, 2, 5)


def inputs(case, dtype, seed=0):
    batch, t, s, n, k, v, content, mask_kind, _ = case
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, device="cuda")
    q, key, m = rand(batch, t, k), rand(batch, s, k), rand(n, k)
    val = rand(batch, s, n, v)
    c = rand(batch, s, n) * 3 if content else None
    mask = None
    if mask_kind == "keys":
        lengths = torch.tensor([s, s // 2, 1][:batch], device="cuda")
        mask = torch.arange(s, device="cuda")[None, :] < lengths[:, None]
        mask = mask[:, None, None, :]  # (B, 1, 1, S)
    elif mask_kind in ("full", "full_heads"):
        heads = n if mask_kind == "full_heads" else 1
        mask = torch.rand(batch, heads, t, s, generator=gen, device="cuda") < 0.6
        mask[:, :, 1, :] = False  # a fully masked row
    grad = rand(batch, t, n, v)
    cast = lambda x: None if x is None else x.to(dtype)
    return [cast(x) for x in (q, key, val, m, c)], mask, grad


def outputs(fn, args, mask, grad, scale, causal, **kwargs):
    """Output and the gradients of every given input."""
    return output_and_grads(fn, args, grad, mask=mask, scale=scale,
                            is_causal=causal, **kwargs)


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / (b.abs().max() + 1e-30))


def main():
    print("card:", torch.cuda.get_device_name(), "| torch", torch.__version__)
    print("| case (B,T,S,N,K,V,content,mask,causal) | dtype | backward | out "
          "| dq | dk | dv | dm | dc | explicit-in-dtype worst | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    failed = 0
    min_width = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    for index, case in enumerate(CASES):
        if case[4] < min_width:
            continue
        scale = case[4] ** -0.5
        causal = case[8]
        dtypes = [torch.bfloat16] + [torch.float16] * (index == 0)
        dtypes += [torch.float32] * (index in FLOAT32_CASES)
        for dtype in dtypes:
            args, mask, grad = inputs(case, dtype)
            truth = outputs(explicit, args, mask, grad, scale, causal,
                            dtype=torch.float64)
            if dtype == torch.float32:
                yard, bound = 0.0, 1e-5
            else:
                mine = outputs(explicit, args, mask, grad, scale, causal)
                yard = max(rel(e, t) for e, t in zip(mine, truth))
                bound = 2 * yard + 1e-2
            head_bytes = case[1] * case[2] * args[0].element_size()
            row_bytes = case[3] * head_bytes
            for backward, budget in (
                ("written", ta.SCORE_GRADIENT_BYTES),
                ("written rows", row_bytes),
                # one row's heads in chunks of N - 1 and 1
                ("written heads", max(1, case[3] - 1) * head_bytes),
                ("flash", 0),
            ):
                config = ta.default_config(
                    case[4], dtype, case[5],
                    full_mask=case[7] in ("full", "full_heads"),
                )._replace(score_gradient_bytes=budget)
                got = outputs(ta.attention, args, mask, grad, scale, causal,
                              config=config)
                errs = [rel(g, t) for g, t in zip(got, truth)]
                ok = all(e <= bound for e in errs) and all(
                    bool(torch.isfinite(g).all()) for g in got)
                failed += not ok
                cells = [f"{e:.1e}" for e in errs] + ["-"] * (6 - len(errs))
                print(f"| {case} | {str(dtype)[6:]} | {backward} | "
                      + " | ".join(cells)
                      + f" | {yard:.1e} | {'yes' if ok else 'NO'} |",
                      flush=True)
    # Fully masked rows give 0 (and finite gradients above); NaN propagates.
    args, mask, _ = inputs(CASES[3], torch.bfloat16)
    out = ta.attention(*args, mask=mask, scale=0.1)
    zero_row = bool((out[:, 1] == 0).all())
    args[0][0, 5, 3] = float("nan")
    out = ta.attention(*args, mask=mask, scale=0.1)
    nan_row = bool(out[0, 5].isnan().all()) and bool(out[1].isfinite().all())
    print(f"fully masked row -> 0: {zero_row}; NaN in one query row -> that "
          f"row NaN, others finite: {nan_row}")
    failed += (not zero_row) + (not nan_row)
    # The dispatch routes bfloat16 CUDA inputs here (and float32 to SDPA).
    args, mask, _ = inputs(CASES[2], torch.bfloat16)
    routed = _torch_attention.triton_kernel(args[0], args[1], args[2], mask) is ta
    f32 = [x.float() for x in args[:3]]
    routed &= _torch_attention.triton_kernel(*f32, mask) is None
    from collab_keras.ops import collaborative_dot_product_attention

    via = collaborative_dot_product_attention(*args, mask=mask[:, 0], scale=0.1)
    direct = ta.attention(*args, mask=mask, scale=0.1)
    routed &= bool(torch.equal(via, direct))
    print(f"dispatch routes bf16 CUDA inputs to Triton, float32 to SDPA: {routed}")
    failed += not routed
    print("FAILED cases:", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
