"""All GPU measurements of collaborative attention in one call.

Runs on the GPU machine (JAX and PyTorch, Keras from wheels, no
TensorFlow), each part in its own process (Keras picks the backend per
process) and in the order given (`--parts`, default `jax,bert,decode,kernel`),
all within `--budget-s`; full outputs go to `<out>/*.txt`, the tables to
`<out>/summary.txt` as they come and again to stdout at the end:

- `jax` / `torch`: `benchmarks/attention_layer.py` on that backend,
  mixed_bfloat16, d_model 768, 12 heads, the layer (automatic path, and the
  explicit path where the automatic one is fused) against
  `keras.layers.MultiHeadAttention` (flash), forward and forward+backward,
  time ratio next to FLOP ratio, with `--check` (fused vs explicit path);
- `bert`: one training step of bert_base (12 layers, `bert_step`), JAX;
- `decode`: `benchmarks/decode_step.py` on each of `--decode-backends`;
- `kernel`: `benchmarks/attention_kernel.py`, the attention core alone on
  JAX: the Pallas kernel, the cuDNN path (key broadcast), the explicit
  einsums and MultiHeadAttention's cuDNN flash core, with TFLOP/s;
- `kernel_torch`: `benchmarks/attention_kernel_torch.py`, the same on torch
  (the Triton kernel), where that script exists;
- `core`: the card's matmul peak and torch SDPA's core (torch);
- `breakdown`: torch kernel list at batch 32, length 512, Dk 256;
- `check`: `tests/gpu_pallas_attention.py`, the Pallas kernel's outputs and
  gradients against the explicit computation (every mask kind, odd sizes).

    python3 benchmarks/gpu_attention.py --out $OUT --shared-key-dims \\
        128,192,256,384 --skip-same --parts jax,bert,decode,kernel
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


def bert_step(args):
    """One training step of bert_base (12 layers) on JAX, to stdout.

    `collab_keras.models.BertBackbone.from_architecture("bert_base_uncased")`
    at length `--bert-length`, batch `--bert-batch`, mixed_bfloat16, dropout
    0 (the fused paths take no attention dropout), all tokens real. The step
    is the whole update under one `jax.jit` (buffers donated): the backbone
    forward, a masked-LM loss on 15% of the positions (logits through the
    tied token embedding, float32 softmax cross-entropy), the backward pass
    and AdamW. Variants: concatenated heads (`MultiHeadAttention`, flash),
    and collaborative heads at `--bert-key-dims` on the automatic path
    (`flash_attention=None`), plus `--bert-fused` widths with
    `flash_attention=True`.
    """
    import jax
    import jax.numpy as jnp
    import keras
    import keras_hub  # noqa: F401 (the zoo needs it; no TensorFlow here)
    import numpy as np

    sys.path.insert(0, os.path.join(HERE, os.pardir))
    from collab_keras.models import BertBackbone

    keras.config.set_dtype_policy("mixed_bfloat16")
    batch, length = args.bert_batch, args.bert_length
    picks = max(1, int(0.15 * length))
    rng = np.random.default_rng(0)
    vocabulary = 30522
    inputs = {
        "token_ids": rng.integers(1, vocabulary, (batch, length)).astype("int32"),
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": np.ones((batch, length), "int32"),
    }
    positions = jnp.asarray(rng.integers(0, length, (batch, picks, 1)), "int32")
    labels = jnp.asarray(rng.integers(0, vocabulary, (batch, picks)), "int32")
    variants = [("concatenated", "concatenate", None, None)]
    variants += [(f"collaborative {k} auto", "collaborative", int(k), None)
                 for k in args.bert_key_dims.split(",") if k]
    variants += [(f"collaborative {k} flash=True", "collaborative", int(k), True)
                 for k in args.bert_fused.split(",") if k]
    print(f"## {args.bert_architecture} training step, JAX {jax.__version__} on "
          f"{jax.devices()[0].device_kind}, keras-hub {keras_hub.__version__}, "
          f"batch {batch}, length {length}, mixed_bfloat16, AdamW, "
          f"masked-LM loss on {picks} positions", flush=True)
    rows = []
    for variant in variants:
        try:
            rows.append(_bert_variant(args, variant, inputs, positions, labels))
        except Exception as error:  # noqa: BLE001 (report the row, go on)
            print(f"  {variant[0]} fails: {str(error).splitlines()[0][:300]}",
                  flush=True)
    base = rows[0][2]
    print("| attention | parameters | ms/step | vs concatenated | tokens/s |")
    print("|---|---|---|---|---|")
    for name, params, ms, _, _ in rows:
        print(f"| {name} | {params / 1e6:.1f} M | {ms:.2f} | {ms / base:.3f} | "
              f"{batch * length / ms * 1e3:,.0f} |")


def _core_path(length, key_dim, flash, heads=12, value_dim=64):
    """The attention core a collaborative layer runs on JAX (content term
    on): "explicit", "pallas", "cudnn" or "xla" (`flash` as the layer's
    `flash_attention`)."""
    import jax.numpy as jnp

    from collab_keras.ops import _jax_attention
    from collab_keras.ops import _pallas_attention
    from collab_keras.ops import fused_attention_preferred

    q = jnp.zeros((1, length, key_dim), jnp.bfloat16)
    v = jnp.zeros((1, length, heads, value_dim), jnp.bfloat16)
    c = jnp.zeros((1, length, heads), jnp.bfloat16)
    if flash is False or (flash is None and not fused_attention_preferred(
            q, key_dim, value_dim, heads, True)):
        return "explicit"
    if _pallas_attention.chosen(q, q, v, c):
        return "pallas"
    if _jax_attention.cudnn_applies(key_dim, value_dim, q.dtype, True):
        return "cudnn"
    return "xla"


def _bert_variant(args, variant, inputs, positions, labels):
    """One row of `bert_step`: (name, parameters, ms/step, loss, first call s)."""
    import jax
    import jax.numpy as jnp
    import keras

    from collab_keras.models import BertBackbone

    name, attention, key_dim, flash = variant
    length = args.bert_length
    if key_dim is not None:
        name += f" ({_core_path(length, key_dim, flash)})"
    keras.utils.set_random_seed(0)
    kwargs = None if flash is None else {"flash_attention": flash}
    backbone = BertBackbone.from_architecture(
        args.bert_architecture, attention=attention, shared_key_dim=key_dim,
        dropout=0.0, max_sequence_length=max(512, length),
        attention_kwargs=kwargs,
    )
    optimizer = keras.optimizers.AdamW(1e-4)
    optimizer.build(backbone.trainable_variables)
    embedding = [i for i, v in enumerate(backbone.trainable_variables)
                 if v is backbone.token_embedding.embeddings][0]

    def loss_fn(tv, ntv, x):
        out, ntv = backbone.stateless_call(tv, ntv, x, training=True)
        seq = out["sequence_output"]  # (B, T, D)
        picked = jnp.take_along_axis(seq, positions, axis=1)  # (B, P, D)
        logits = jnp.einsum("bpd,vd->bpv", picked,
                            tv[embedding].astype(picked.dtype),
                            preferred_element_type=jnp.float32)
        true = jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
        loss = jnp.mean(jax.nn.logsumexp(logits, -1) - true)
        return loss, ntv

    def step(tv, ntv, ov, x):
        (loss, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            tv, ntv, x)
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        return tv, ntv, ov, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    state = ([v.value for v in backbone.trainable_variables],
             [v.value for v in backbone.non_trainable_variables],
             [v.value for v in optimizer.variables])
    x = {k: jnp.asarray(v) for k, v in inputs.items()}
    start = time.perf_counter()
    *state, loss = step(*state, x)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start
    for _ in range(3):
        *state, loss = step(*state, x)
    jax.block_until_ready(loss)
    samples = []
    for _ in range(args.bert_repeats):
        start = time.perf_counter()
        for _ in range(5):
            *state, loss = step(*state, x)
        jax.block_until_ready(loss)
        samples.append((time.perf_counter() - start) / 5)
    samples.sort()
    ms = samples[len(samples) // 2] * 1e3
    params = backbone.count_params()
    print(f"  {name}: {ms:.2f} ms/step, loss {float(loss):.3f}, "
          f"{params:,} parameters, first call {compile_s:.0f} s", flush=True)
    return name, params, ms, float(loss), compile_s


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
    parser.add_argument("--parts", default="jax,bert,decode,kernel",
                        help="in this order: jax, torch (layer tables), bert, "
                        "decode, kernel, kernel_torch, core, breakdown, check")
    parser.add_argument("--budget-s", type=int, default=3600,
                        help="wall time for all parts together")
    parser.add_argument("--skip-same", action="store_true",
                        help="layer: time `explicit` only where `auto` is fused")
    parser.add_argument("--kernel-args", default="",
                        help="extra arguments of attention_kernel.py")
    parser.add_argument("--layer-timeout", type=int, default=300)
    parser.add_argument("--check-timeout", type=int, default=240)
    parser.add_argument("--check-sizes", default="4,512,768,12,256")
    parser.add_argument("--check-only", action="store_true",
                        help="layer part: only the fused/explicit checks")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--decode-backends", default="jax,torch")
    parser.add_argument("--decode-timeout", type=int, default=240)
    parser.add_argument("--decode-args", default="",
                        help="extra arguments of decode_step.py")
    parser.add_argument("--bert-batch", type=int, default=32)
    parser.add_argument("--bert-length", type=int, default=512)
    parser.add_argument("--bert-key-dims", default="256,384")
    parser.add_argument("--bert-fused", default="",
                        help="bert: widths also run with flash_attention=True")
    parser.add_argument("--bert-repeats", type=int, default=5)
    parser.add_argument("--bert-architecture", default="bert_base_uncased")
    parser.add_argument("--bert-timeout", type=int, default=300)
    parser.add_argument("--bert-only", action="store_true",
                        help=argparse.SUPPRESS)  # the bert part's process
    args = parser.parse_args()
    if args.bert_only:
        bert_step(args)
        return
    os.makedirs(args.out, exist_ok=True)
    batch_for = {128: 64, 512: 32, 2048: 8, 8192: 2}
    sizes = ";".join(
        f"{batch_for.get(t, 8)},{t},768,12,{k}"
        for k in args.shared_key_dims.split(",")
        for t in (int(v) for v in args.lengths.split(","))
    )
    log = os.path.join(args.out, "all.jsonl")
    root = os.path.join(HERE, os.pardir)
    script = os.path.join(HERE, "attention_layer.py")
    decode = os.path.join(HERE, "decode_step.py")
    deadline = time.time() + args.budget_s
    known = ("jax", "torch", "bert", "decode", "kernel", "kernel_torch",
             "core", "breakdown", "check")
    for name in args.parts.split(","):
        if name not in known:
            raise ValueError(f"Unknown part. Received: part={name!r}")
    summary = []

    def part(cmd, name, backend, timeout):
        """Runs one part within what is left of `--budget-s`."""
        left = int(deadline - time.time()) - 10
        if left < 20:
            summary.append(f"## {name}: not run (budget spent)")
        else:
            text = run(cmd, args.out, name, env={"KERAS_BACKEND": backend},
                       timeout=min(timeout, left))
            summary.append(tables(text))
        with open(os.path.join(args.out, "summary.txt"), "w") as f:
            f.write("\n\n".join(summary) + "\n")

    for name in args.parts.split(","):
        if name == "kernel":
            part([sys.executable, os.path.join(HERE, "attention_kernel.py")]
                 + args.kernel_args.split(), "kernel", "jax",
                 args.layer_timeout)
        elif name == "kernel_torch":
            path = os.path.join(HERE, "attention_kernel_torch.py")
            if os.path.exists(path):
                part([sys.executable, path] + args.kernel_args.split(),
                     "kernel_torch", "torch", args.layer_timeout)
        elif name == "core":
            peak_and_core(args.out)
            text = run([sys.executable, "-c", JAX_CORE], args.out, "core_jax")
            with open(os.path.join(args.out, "core.txt"), "a") as f:
                f.write("\n" + text)
            os.remove(os.path.join(args.out, "core_jax.txt"))
            summary.append(open(os.path.join(args.out, "core.txt")).read())
        elif name in ("jax", "torch"):
            part([sys.executable, script, "--sizes", sizes, "--dtype",
                  "mixed_bfloat16", "--variants", args.variants, "--repeats",
                  str(args.repeats), "--modes", args.modes, "--check",
                  "--check-sizes", args.check_sizes, "--log", log]
                 + (["--no-bench"] if args.check_only else [])
                 + (["--skip-same"] if args.skip_same else []),
                 f"layer_{name}", name, args.layer_timeout)
        elif name == "decode":
            for backend in args.decode_backends.split(","):
                part([sys.executable, decode, "--dtype", "bfloat16", "--log",
                      log] + args.decode_args.split(),
                     f"decode_{backend}", backend, args.decode_timeout)
        elif name == "bert":
            part([sys.executable, os.path.abspath(__file__), "--bert-only",
                  "--bert-batch", str(args.bert_batch), "--bert-length",
                  str(args.bert_length), "--bert-key-dims", args.bert_key_dims,
                  "--bert-fused", args.bert_fused, "--bert-repeats",
                  str(args.bert_repeats), "--bert-architecture",
                  args.bert_architecture],
                 "bert", "jax", args.bert_timeout)
        elif name == "breakdown":
            text = run(
                [sys.executable, script, "--sizes", "32,512,768,12,256",
                 "--dtype", "mixed_bfloat16", "--modes", "fwd+bwd",
                 "--repeats", "3", "--breakdown", "--log", log],
                args.out, "breakdown_torch", env={"KERAS_BACKEND": "torch"},
                timeout=120,
            )
            summary.append("\n".join(l for l in text.splitlines()
                                     if l.startswith(("  ", "|"))))
        elif name == "check":  # compiles many kernels, times nothing
            part([sys.executable,
                  os.path.join(root, "tests", "gpu_pallas_attention.py")],
                 "gpu_check", "jax", args.check_timeout)
    print("\n\n" + "\n\n".join(summary))

if __name__ == "__main__":
    main()
