"""All GPU measurements of collaborative attention in one call.

Runs on the GPU machine (JAX and PyTorch, Keras from wheels, no
TensorFlow), each part in its own process (Keras picks the backend per
process); full outputs go to `<out>/*.txt`, the tables are printed again at
the end. Parts (`--parts`, default `check,kernel,jax`):

- `check`: `tests/gpu_pallas_attention.py`, the Pallas kernel's outputs and
  gradients against the explicit computation (every mask kind, odd sizes);
- `kernel`: `benchmarks/attention_kernel.py`, the attention core alone on
  JAX: the Pallas kernel, today's cuDNN path (key broadcast), the explicit
  einsums and MultiHeadAttention's cuDNN flash core;
- `jax` / `torch`: `benchmarks/attention_layer.py` on that backend,
  mixed_bfloat16, d_model 768, 12 heads, the layer against
  `keras.layers.MultiHeadAttention` (flash), forward and forward+backward,
  with `--check` (fused vs explicit path);
- `core`: the card's matmul peak and torch SDPA's core (torch);
- `decode`: `benchmarks/decode_step.py` on each backend run.

    python3 benchmarks/gpu_attention.py --out $OUT

"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_and_core(out):
    """Card name, matmul peak and the torch attention core, to `core.txt`."""
    import torch
    import torch.nn.functional as F

    lines = []
    name = torch.cuda.get_device_name()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    ms = _cuda_time(lambda: a @ b, 20)
    peak = 2 * 8192**3 / ms / 1e9
    lines.append(f"card: {name}; bf16 8192^3 matmul: {ms:.3f} ms = {peak:.0f} TFLOP/s")
    del a, b
    # Attention core, torch, batch 32, length 512, 12 heads, values 64(+1 -> 72).
    B, N, T, V = 32, 12, 512, 72
    lines.append("| torch core, B32 T512 N12 V72, fwd+bwd ms | K=64 | 192 | 256 | 384 |")
    lines.append("|---|---|---|---|---|")
    for layout in ("gqa", "expand", "copy", "gqa cudnn-only", "mha (K=V=64)"):
        cells = []
        for K in (64, 192, 256, 384):
            try:
                q = torch.randn(B, N, T, K, device="cuda", dtype=torch.bfloat16,
                                requires_grad=True)
                k1 = torch.randn(B, 1, T, K, device="cuda", dtype=torch.bfloat16,
                                 requires_grad=True)
                v = torch.randn(B, N, T, V, device="cuda", dtype=torch.bfloat16,
                                requires_grad=True)
                gqa = layout.startswith("gqa")
                if layout.startswith("mha"):
                    if K != 64:
                        cells.append("-")
                        continue
                    k1 = torch.randn(B, N, T, 64, device="cuda",
                                     dtype=torch.bfloat16, requires_grad=True)
                    v = torch.randn(B, N, T, 64, device="cuda",
                                    dtype=torch.bfloat16, requires_grad=True)

                def run():
                    k = k1
                    if layout == "expand":
                        k = k1.expand(-1, N, -1, -1)
                    elif layout == "copy":
                        k = k1.expand(-1, N, -1, -1).contiguous()
                    o = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
                    o.backward(torch.ones_like(o))

                if layout == "gqa cudnn-only":
                    with torch.nn.attention.sdpa_kernel(
                        [torch.nn.attention.SDPBackend.CUDNN_ATTENTION]
                    ):
                        run()
                        ms = _cuda_time(run, 20)
                else:
                    run()
                    ms = _cuda_time(run, 20)
                cells.append(f"{ms:.3f}")
            except Exception as error:  # noqa: BLE001 (report and go on)
                cells.append("fails: " + str(error).split("\n")[0][:60])
        lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    torch.cuda.empty_cache()  # leave the card to the JAX processes
    text = "\n".join(lines)
    print(text, flush=True)
    with open(os.path.join(out, "core.txt"), "w") as f:
        f.write(text + "\n")


def _cuda_time(fn, n):
    import torch

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(n):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


JAX_CORE = r"""
import time, jax, jax.numpy as jnp
B, N, T = 32, 12, 512
print("| JAX cuDNN core, B32 T512 N12, key broadcast, values padded to D, fwd+bwd ms | D=64 | 192 | 256 | 264 | 384 |")
print("|---|---|---|---|---|---|")
cells = []
for D in (64, 192, 256, 264, 384):
    try:
        ks = jax.random.split(jax.random.key(0), 3)
        q = jax.random.normal(ks[0], (B, T, N, D), jnp.bfloat16)
        k = jax.random.normal(ks[1], (B, T, 1, D), jnp.bfloat16)
        v = jax.random.normal(ks[2], (B, T, N, D), jnp.bfloat16)
        def loss(q, k, v):
            kb = jnp.broadcast_to(k, (B, T, N, D))
            o = jax.nn.dot_product_attention(q, kb, v, implementation="cudnn")
            return jnp.sum(o.astype(jnp.float32))
        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        jax.block_until_ready(f(q, k, v))
        ts = []
        for _ in range(20):
            t = time.perf_counter(); jax.block_until_ready(f(q, k, v)); ts.append(time.perf_counter() - t)
        ts.sort(); cells.append(f"{ts[10]*1e3:.3f}")
    except Exception as e:
        cells.append("fails: " + str(e).split(chr(10))[0][:60])
print("| broadcast key | " + " | ".join(cells) + " |")
"""


def run(cmd, out, name, env=None, timeout=400):
    """Runs `cmd`, tees its output to `<out>/<name>.txt`, returns it."""
    start = time.time()
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env,
                              timeout=timeout)
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as error:
        text = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) \
            else (error.stdout or "")
        text += f"\nTIMEOUT after {timeout} s"
    with open(os.path.join(out, name + ".txt"), "w") as f:
        f.write(text)
    print(f"[{name}: {time.time() - start:.0f} s]", flush=True)
    return text


def tables(text):
    """The markdown tables and check lines of a benchmark's output."""
    keep = [l for l in text.splitlines()
            if l.startswith(("|", "##", "  check", "card", "{", "fully",
                             "FAILED"))
            or "Error" in l or "TIMEOUT" in l]
    return "\n".join(keep[-60:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    parser.add_argument("--shared-key-dims", default="256")
    parser.add_argument("--lengths", default="128,512,2048,8192")
    parser.add_argument("--variants", default="auto,explicit")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--parts", default="check,kernel,jax",
                        help="check, kernel, core, jax, torch, decode")
    parser.add_argument("--kernel-args", default="",
                        help="extra arguments of attention_kernel.py")
    parser.add_argument("--layer-timeout", type=int, default=300)
    parser.add_argument("--check-timeout", type=int, default=240)
    parser.add_argument("--check-sizes", default="4,512,768,12,256")
    parser.add_argument("--check-only", action="store_true",
                        help="layer part: only the fused/explicit checks")
    parser.add_argument("--breakdown", action="store_true",
                        help="torch kernel list at batch 32, length 512, Dk 256")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    batch_for = {128: 64, 512: 32, 2048: 8, 8192: 2}
    sizes = ";".join(
        f"{batch_for.get(t, 8)},{t},768,12,{k}"
        for k in args.shared_key_dims.split(",")
        for t in (int(v) for v in args.lengths.split(","))
    )
    summary = []
    parts = args.parts.split(",")
    log = os.path.join(args.out, "all.jsonl")
    root = os.path.join(HERE, os.pardir)
    if "kernel" in parts:
        text = run([sys.executable, os.path.join(HERE, "attention_kernel.py")]
                   + args.kernel_args.split(), args.out, "kernel",
                   env={"KERAS_BACKEND": "jax"}, timeout=args.layer_timeout)
        summary.append(tables(text))
    if "core" in parts:
        peak_and_core(args.out)
        text = run([sys.executable, "-c", JAX_CORE], args.out, "core_jax")
        with open(os.path.join(args.out, "core.txt"), "a") as f:
            f.write("\n" + text)
        os.remove(os.path.join(args.out, "core_jax.txt"))
        summary.append(open(os.path.join(args.out, "core.txt")).read())
    script = os.path.join(HERE, "attention_layer.py")
    decode = os.path.join(HERE, "decode_step.py")
    for backend in [p for p in parts if p in ("jax", "torch")]:
        env = {"KERAS_BACKEND": backend}
        text = run(
            [sys.executable, script, "--sizes", sizes, "--dtype",
             "mixed_bfloat16", "--variants", args.variants, "--repeats",
             str(args.repeats), "--check", "--check-sizes", args.check_sizes,
             "--log", log] + (["--no-bench"] if args.check_only else []),
            args.out, f"layer_{backend}", env=env, timeout=args.layer_timeout,
        )
        summary.append(tables(text))
        if "decode" not in parts:
            continue
        text = run(
            [sys.executable, decode, "--dtype", "bfloat16", "--log", log],
            args.out, f"decode_{backend}", env=env, timeout=180,
        )
        summary.append(tables(text))
    if args.breakdown:
        text = run(
            [sys.executable, script, "--sizes", "32,512,768,12,256", "--dtype",
             "mixed_bfloat16", "--modes", "fwd+bwd", "--repeats", "3",
             "--breakdown", "--log", log],
            args.out, "breakdown_torch", env={"KERAS_BACKEND": "torch"},
            timeout=120,
        )
        summary.append("\n".join(l for l in text.splitlines()
                                 if l.startswith("  ") or l.startswith("|")))
    if "check" in parts:  # last: compiles many kernels, times nothing
        text = run([sys.executable,
                    os.path.join(root, "tests", "gpu_pallas_attention.py")],
                   args.out, "gpu_check", env={"KERAS_BACKEND": "jax"},
                   timeout=args.check_timeout)
        summary.append(tables(text))
    print("\n\n" + "\n\n".join(summary))


if __name__ == "__main__":
    main()
