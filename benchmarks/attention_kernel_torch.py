"""The collaborative attention core on a GPU, torch: Triton kernel vs the rest.

The torch part of `benchmarks/attention_kernel.py` (same shapes, same FLOP
model). Times, in one process on one card, forward and forward+backward of
the attention core alone (bf16, 12 heads, value width 64, content term on):

- `triton`: `collab_keras.ops._triton_attention.attention` (this repo's
  kernel: shared key read once per block, mixing, content and masks inside,
  values at their own width), with its default backward (the score
  gradient written to memory where it fits, the width-K products in
  cuBLAS);
- `triton-flash`: the same kernel with the flash backward
  (`score_gradient_bytes=0`: both backward kernels recompute the scores);
- `sdpa`: the path before it (`_torch_attention.sdpa_attention`):
  `scaled_dot_product_attention` with one shared key head
  (`enable_gqa=True`), the content term as `N` more key columns, widths
  padded (cuDNN up to 256 wide, PyTorch's math kernel beyond);
- `explicit`: the einsum path (bf16 products, float32 softmax);
- `mha`: `scaled_dot_product_attention` with 12 heads of width 64 on the
  flash kernel (what `keras.layers.MultiHeadAttention` runs).

FLOP model (matrix products only, as the JAX rows): forward
`2 B N T S (K + V)` for collaborative and `2 B N T S (64 + 64)` for MHA,
forward+backward 3.5x the forward; TFLOP/s columns use it. Ratios are times
against `mha`.

    KERAS_BACKEND=torch python3 benchmarks/attention_kernel_torch.py \\
        [--sweep] [--lengths 128,512,2048,8192] [--key-widths 128,256,384]

`--sweep` first times the tile configurations of `SWEEP` at the lengths
of `--sweep-lengths` (to choose `_triton_attention.default_config`): the
event-timed wall time and the summed kernel time (torch profiler), the
second the steadier at short lengths, where launch gaps and clocks make the
first vary by 10-20% between calls. `--profile` prints the GPU time of
each kernel of one forward+backward.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from collab_keras.ops import _torch_attention  # noqa: E402
from collab_keras.ops import _triton_attention as ta  # noqa: E402
from attention_layer import torch_kernel_ms  # noqa: E402
from _attention_core_table import BATCH_FOR  # noqa: E402
from _attention_core_table import HEADS  # noqa: E402
from _attention_core_table import VALUE  # noqa: E402
from _attention_core_table import print_header  # noqa: E402
from _attention_core_table import print_rows  # noqa: E402



def timed(fn, repeats=7, calls=3):
    """Median of `repeats` timings (ms, CUDA events) of `calls` calls."""
    fn()
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    times.sort()
    return times[len(times) // 2]


def make(batch, length, key_width, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, device="cuda",
                                  dtype=torch.bfloat16).requires_grad_()
    q, k = rand(batch, length, key_width), rand(batch, length, key_width)
    v, m = rand(batch, length, HEADS, VALUE), rand(HEADS, key_width)
    c = rand(batch, length, HEADS)
    g = torch.randn(batch, length, HEADS, VALUE, generator=gen, device="cuda",
                    dtype=torch.bfloat16)
    return (q, k, v, m, c), g


def explicit(q, k, v, m, c, scale, causal):
    mixed = torch.einsum("btk,nk->bntk", q, m)
    s = torch.matmul(mixed, k.unsqueeze(1).transpose(-1, -2)).float()
    s = (s + c.float().permute(0, 2, 1)[:, :, None, :]) * scale
    if causal:
        t = q.shape[1]
        s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool,
                                      device=q.device).tril(), float("-inf"))
    p = torch.softmax(s, dim=-1).to(v.dtype)
    return torch.einsum("bnts,bsnv->btnv", p, v)


def core(kind, key_width, causal, config=None):
    scale = key_width**-0.5
    if kind == "triton-flash":
        config = ta.default_config(key_width)._replace(score_gradient_bytes=0)
        kind = "triton"
    if kind == "triton":
        return lambda q, k, v, m, c: ta.attention(
            q, k, v, m, c, None, scale, causal, config=config)
    if kind == "sdpa":
        return lambda q, k, v, m, c: _torch_attention.sdpa_attention(
            q, k, v, m, c, None, scale, causal)
    return lambda q, k, v, m, c: explicit(q, k, v, m, c, scale, causal)


def steps(fn, args, g):
    """The forward (no autograd) and the forward+backward of `fn`."""
    def fwd():
        with torch.no_grad():
            fn(*args)

    def both():
        out = fn(*args)
        torch.autograd.grad(out, args, g)

    return fwd, both


def fwd_and_both(fn, args, g):
    return tuple(timed(step) for step in steps(fn, args, g))


def mha(batch, length, causal):
    gen = torch.Generator(device="cuda").manual_seed(1)
    rand = lambda: torch.randn(batch, HEADS, length, 64, generator=gen,
                               device="cuda", dtype=torch.bfloat16).requires_grad_()
    q, k, v = rand(), rand(), rand()
    g = torch.randn_like(q)
    flash = torch.nn.attention.SDPBackend.FLASH_ATTENTION

    def fn(q, k, v):
        with torch.nn.attention.sdpa_kernel(flash):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return fwd_and_both(fn, (q, k, v), g)


SWEEP = {  # key width: forward (bq, bk, warps, stages), flash backward
    # (bq, bk, warps), backward with the score gradient written
    # (bq, bk, warps, stages)
    128: ([(128, 64, 8, 2), (128, 64, 4, 3), (64, 64, 4, 2)],
          [(64, 64, 4), (32, 64, 4), (64, 128, 8), (32, 128, 4)],
          [(64, 64, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2), (64, 64, 8, 2)]),
    256: ([(128, 128, 8, 2), (128, 128, 8, 3), (128, 128, 4, 2),
           (128, 64, 8, 3), (64, 128, 4, 3), (64, 64, 4, 2)],
          [(32, 64, 4), (32, 128, 8), (16, 64, 4), (32, 64, 8), (64, 64, 4)],
          [(32, 64, 4, 2), (32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3),
           (32, 128, 8, 4), (32, 128, 4, 3), (16, 128, 4, 3), (32, 64, 4, 4),
           (64, 64, 4, 3), (32, 64, 8, 3), (64, 64, 8, 3)]),
    384: ([(64, 32, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 8, 2),
           (128, 64, 8, 3)],
          [(32, 32, 8), (32, 32, 4), (16, 32, 4), (32, 64, 8), (16, 64, 4),
           (64, 32, 8)],
          [(32, 64, 4, 2), (32, 64, 4, 3), (32, 128, 8, 3), (64, 128, 8, 3),
           (64, 64, 8, 3), (32, 64, 8, 3), (64, 64, 4, 3)]),
}


# The written backward's `_mixing_gradient_kernel` (query rows, key
# columns; every key width).
MIXING_SWEEP = [(32, 64), (64, 64), (32, 128), (64, 128), (16, 128),
                (128, 32)]


def sweep(lengths, key_widths, parts):
    """Times each tile configuration of `SWEEP` and `MIXING_SWEEP`
    (`parts`: "fwd", "flash", "written", "mixing") at each length and key
    width."""
    for length in lengths:
        batch = BATCH_FOR[length]
        for key_width in key_widths:
            fwd_configs, flash_configs, written_configs = SWEEP[key_width]
            args, g = make(batch, length, key_width)
            base = ta.default_config(key_width)
            print(f"## sweep Dk {key_width}, B{batch} T{length}, default {base}")
            runs = []
            if "fwd" in parts:
                runs += [(f"fwd bq{bq} bk{bk} w{w} s{st}", 0, base._replace(
                    block_q=bq, block_k=bk, warps=w, stages=st))
                    for bq, bk, w, st in fwd_configs]
            if "flash" in parts:
                runs += [(f"fwd+bwd, flash bwd bq{bq} bk{bk} w{w}", 1,
                          base._replace(block_q_bwd=bq, block_k_bwd=bk,
                                        warps_bwd=w, score_gradient_bytes=0))
                         for bq, bk, w in flash_configs]
            if "written" in parts:
                runs += [(f"fwd+bwd, written bwd bq{bq} bk{bk} w{w} s{st}", 1,
                          base._replace(block_q_ds=bq, block_k_ds=bk,
                                        warps_ds=w, stages_ds=st))
                         for bq, bk, w, st in written_configs]
            if "mixing" in parts:
                runs += [(f"fwd+bwd, mixing bt{bt} bc{bc}", 1, base._replace(
                    block_t_mix=bt, block_c_mix=bc))
                    for bt, bc in MIXING_SWEEP]
            for name, index, cfg in runs:
                try:
                    fn = core("triton", key_width, False, cfg)
                    step = steps(fn, args, g)[index]
                    wall = timed(step)
                    kernels = torch_kernel_ms({"step": step})["step"]
                    print(f"{name}: {wall:.3f} ms, kernels {kernels:.3f} ms",
                          flush=True)
                except Exception as e:  # noqa: BLE001 (report and go on)
                    print(f"{name}: fails {str(e)[:200]}")
            torch.cuda.empty_cache()


def profile(lengths, key_widths, flash=False):
    """CUDA time per kernel of one forward+backward of the Triton core (the
    default backward, or the flash one), from torch's profiler."""
    for length in lengths:
        batch = BATCH_FOR[length]
        for key_width in key_widths:
            args, g = make(batch, length, key_width)
            fn = core("triton-flash" if flash else "triton", key_width, False)
            both = lambda: torch.autograd.grad(fn(*args), args, g)  # noqa: E731
            both()
            torch.cuda.synchronize()
            activities = [torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(3):
                    both()
                torch.cuda.synchronize()
            print(f"## profile Dk {key_width}, B{batch} T{length}, "
                  f"{'flash' if flash else 'default'} backward (3 calls)")
            print(prof.key_averages().table(sort_by="cuda_time_total",
                                            row_limit=14, max_name_column_width=60))


def table(lengths, key_widths, causal):
    print(f"\n## attention core (torch), bf16, N{HEADS} V{VALUE}, content on, "
          f"causal={causal}, card: {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}")
    others = ("triton-flash", "sdpa", "explicit")
    print_header("triton", others)
    for length in lengths:
        batch = BATCH_FOR[length]
        base = mha(batch, length, causal)
        for key_width in key_widths:
            args, g = make(batch, length, key_width)
            res = {}
            for kind in ("triton",) + others:
                if kind in ("sdpa", "explicit") and batch * length * length > 2**27:
                    res[kind] = (None, None)  # (B, N, T, S) scores: minutes
                    continue
                try:
                    res[kind] = fwd_and_both(core(kind, key_width, causal),
                                             args, g)
                except Exception as e:  # noqa: BLE001
                    print(f"{kind} T{length} Dk{key_width} fails: {str(e)[:300]}")
                    res[kind] = (None, None)
                torch.cuda.empty_cache()
            print_rows(length, batch, key_width, causal, res, base,
                       "triton", others)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-lengths", default="512")
    parser.add_argument("--sweep-key-widths", default="128,256,384")
    parser.add_argument("--sweep-parts", default="fwd,flash,written,mixing")
    parser.add_argument("--no-table", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="CUDA time per kernel at --lengths x --key-widths")
    parser.add_argument("--lengths", default="128,512,2048,8192")
    parser.add_argument("--key-widths", default="128,256,384")
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]
    if args.sweep:
        sweep(ints(args.sweep_lengths), ints(args.sweep_key_widths),
              args.sweep_parts.split(","))
    if args.profile:
        profile(ints(args.lengths), ints(args.key_widths))
        profile(ints(args.lengths), ints(args.key_widths), flash=True)
    if not args.no_table:
        table(ints(args.lengths), ints(args.key_widths), args.causal)


if __name__ == "__main__":
    main()
