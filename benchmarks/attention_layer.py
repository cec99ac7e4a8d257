"""Times CollaborativeAttention against keras.layers.MultiHeadAttention.

A benchmark, not a test. For each size (batch, length, d_model, heads,
shared_key_dim) it builds one MultiHeadAttention and one or more
CollaborativeAttention variants (self-attention, no mask), compiles forward
and forward+backward the way the active backend runs Keras fast
(`tf.function(jit_compile=True)`, `jax.jit` over `stateless_call`, eager
torch), times all layers alternating in one process, and prints for each the
median time ratio next to the FLOP ratio of the two layers, and the memory
each step allocates beyond its inputs and weights (`step_memory_mib`: XLA's
memory analysis on JAX, the CUDA allocator's peak on torch; "-" elsewhere).

    KERAS_BACKEND=tensorflow python benchmarks/attention_layer.py
    KERAS_BACKEND=jax python benchmarks/attention_layer.py \
        --sizes 64,128,768,12,256 --dtype mixed_bfloat16 --check

`--check` also compares the fused and the explicit collaborative path
(outputs and gradients, relative error) on the same sizes.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import keras  # noqa: E402

from collab_keras.layers import CollaborativeAttention  # noqa: E402

BACKEND = keras.backend.backend()

DEFAULT_SIZES = "16,128,256,8,64;16,128,256,8,128;4,512,256,8,64"


def layer_flops(batch, length, d_model, heads, head_dim, shared_key_dim=None):
    """Forward FLOPs of one self-attention layer (multiply-add = 2 FLOPs):
    `collab_keras.training.flops.attention_flops` for `batch` sequences, as
    for MultiHeadAttention with `key_dim = value_dim = head_dim` when
    `shared_key_dim` is None, else for CollaborativeAttention."""
    from collab_keras.training import flops

    key_width = heads * head_dim if shared_key_dim is None else shared_key_dim
    return batch * flops.attention_flops(length, length, d_model, heads, key_width, heads * head_dim,
                                         collaborative=shared_key_dim is not None)


def parse_sizes(text):
    sizes = []
    for item in text.split(";"):
        b, t, d, h, k = (int(v) for v in item.split(","))
        sizes.append((b, t, d, h, k))
    return sizes


def sync(x):
    """Waits for the device work behind `x`."""
    if BACKEND == "jax":
        import jax

        jax.block_until_ready(x)
    elif BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        np.asarray(x)  # copies a scalar back: waits for the computation


def make_step(layer, inputs, backward):
    """A compiled `step()` computing the layer forward (+ backward)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        variables = layer.trainable_variables

        @tf.function(jit_compile=True)
        def step(x):
            if not backward:
                return tf.reduce_sum(tf.cast(layer(x, x), "float32"))
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.cast(layer(x, x), "float32"))
            grads = tape.gradient(loss, variables)
            return loss + tf.add_n([tf.reduce_sum(tf.cast(g, "float32")) for g in grads])

        return lambda: step(inputs)
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss_fn(tv, x):
            y, _ = layer.stateless_call(tv, non_trainable, x, x)
            return jnp.sum(y.astype("float32"))

        if backward:
            fn = jax.jit(jax.grad(loss_fn))
        else:
            fn = jax.jit(loss_fn)

        def step():
            return fn(trainable, inputs)

        def memory():  # XLA's temporaries and outputs: what the step allocates
            stats = fn.lower(trainable, inputs).compile().memory_analysis()
            return stats.temp_size_in_bytes + stats.output_size_in_bytes

        step.memory = memory
        return step
    import torch

    params = [v.value for v in layer.trainable_variables]

    def step():
        if not backward:
            with torch.no_grad():
                return layer(inputs, inputs).float().sum()
        y = layer(inputs, inputs).float().sum()
        return torch.autograd.grad(y, params)

    return step


def step_memory_mib(step):
    """MiB the step allocates beyond its inputs and weights: on JAX, the
    compiled program's temporaries and outputs (XLA's memory analysis, so
    on every device); on torch with CUDA, the allocator's peak during one
    call less what was allocated before it; otherwise None."""
    if BACKEND == "jax":
        return step.memory() / 2**20
    if BACKEND == "torch" and _cuda():
        import torch

        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        sync(step())
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    return None


def time_alternating(steps, repeats, target_s=0.05):
    """Median seconds per call of each step, the steps alternating.

    Each sample runs a step `inner` times back to back (so that one sample
    lasts about `target_s`) and waits for the device once.
    """
    inner = {}
    for name, step in steps.items():
        for _ in range(2):  # compile, warm up
            sync(step())
        start = time.perf_counter()
        sync(step())
        single = time.perf_counter() - start
        inner[name] = max(1, min(50, int(target_s / max(single, 1e-6))))
    samples = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                out = step()
            sync(out)
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(s) for name, s in samples.items()}


BREAKDOWN = False  # --breakdown: print the costliest kernels of each layer


def torch_kernel_ms(steps, calls=5):
    """Milliseconds of GPU kernels per call of each step (torch profiler).

    Keras on torch runs eagerly, so wall time includes the Python dispatch
    of every op; the summed kernel time is what the GPU spends.
    """
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    result = {}
    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                step()
            torch.cuda.synchronize()
        total = 0.0
        for event in prof.key_averages():
            total += getattr(event, "self_device_time_total", None) or getattr(
                event, "self_cuda_time_total", 0.0
            )
        result[name] = total / calls / 1e3  # microseconds -> ms
        if BREAKDOWN:
            events = sorted(
                prof.key_averages(),
                key=lambda e: -(getattr(e, "self_device_time_total", None)
                                or getattr(e, "self_cuda_time_total", 0.0)),
            )
            print(f"  kernels of {name} ({result[name]:.3f} ms per call):")
            for e in events[:12]:
                t = (getattr(e, "self_device_time_total", None)
                     or getattr(e, "self_cuda_time_total", 0.0))
                print(f"    {t / calls / 1e3:.3f} ms  x{e.count // calls}  "
                      f"{e.key[:90]}")
    return result


def build_layers(d_model, heads, shared_key_dim, variants, seed=0):
    head_dim = d_model // heads
    layers = {
        "mha": keras.layers.MultiHeadAttention(
            num_heads=heads, key_dim=head_dim, seed=seed
        )
    }
    for variant in variants:
        flash = {"auto": None, "fused": True, "explicit": False}[variant]
        layers[f"collab_{variant}"] = CollaborativeAttention(
            num_heads=heads,
            key_dim=head_dim,
            shared_key_dim=shared_key_dim,
            mixing_initializer="random_normal",
            bias_initializer="random_normal",
            flash_attention=flash,
            seed=seed,
        )
    return layers


def auto_path(layer, length):
    """Which core the automatic choice runs for `layer` at `length`:
    "explicit", or the fused kernel ("pallas", "cudnn", "triton", "sdpa",
    "fused")."""
    dtype = keras.config.dtype_policy().compute_dtype
    query = keras.ops.zeros((1, length, layer.shared_key_dim), dtype)
    if not layer._use_fused_path(False, query):
        return "explicit"
    if BACKEND == "jax":
        from collab_keras.ops import _pallas_attention

        key = query
        value = keras.ops.zeros((1, length, layer.num_heads, layer.value_dim),
                                dtype)
        content = (keras.ops.zeros((1, length, layer.num_heads), dtype)
                   if layer.use_bias else None)
        if _pallas_attention.chosen(query, key, value, content):
            return "pallas"
        return "cudnn"
    return "fused"


def benchmark(sizes, variants, modes, repeats, log, skip_same=False):
    rows = []
    for batch, length, d_model, heads, shared in sizes:
        head_dim = d_model // heads
        x = keras.random.normal((batch, length, d_model), seed=1)
        x = keras.ops.cast(x, keras.config.dtype_policy().compute_dtype)
        layers = build_layers(d_model, heads, shared, variants)
        for layer in layers.values():
            layer(x, x)  # build
        path = None
        if "auto" in variants:
            path = auto_path(layers["collab_auto"], length)
            if skip_same and path == "explicit" and "explicit" in variants:
                del layers["collab_explicit"]  # the same computation
        size_variants = [v for v in variants if f"collab_{v}" in layers]
        mha_flops = layer_flops(batch, length, d_model, heads, head_dim)
        col_flops = layer_flops(batch, length, d_model, heads, head_dim, shared)
        for mode in modes:
            backward = mode == "fwd+bwd"
            steps = {n: make_step(l, x, backward) for n, l in layers.items()}
            try:
                times = time_alternating(steps, repeats)
            except Exception as error:  # noqa: BLE001 (report, go on)
                print(f"  {batch}x{length} K{shared} {mode} FAILED: "
                      f"{str(error).splitlines()[0][:300]}", flush=True)
                continue
            memory = {name: step_memory_mib(step) for name, step in steps.items()}
            kernel = None
            if BACKEND == "torch" and _cuda():
                kernel = torch_kernel_ms(steps)
            factor = 3 if backward else 1
            for variant in size_variants:
                name = f"collab_{variant}"
                row = dict(
                    batch=batch,
                    length=length,
                    d_model=d_model,
                    heads=heads,
                    shared_key_dim=shared,
                    mode=mode,
                    variant=f"auto ({path})" if variant == "auto" else variant,
                    mha_ms=times["mha"] * 1e3,
                    collab_ms=times[name] * 1e3,
                    time_ratio=times[name] / times["mha"],
                    flop_ratio=col_flops / mha_flops,
                    mha_tflops=factor * mha_flops / times["mha"] / 1e12,
                    collab_tflops=factor * col_flops / times[name] / 1e12,
                    mha_mib=memory["mha"],
                    collab_mib=memory[name],
                )
                row["ratio_over_flop_ratio"] = row["time_ratio"] / row["flop_ratio"]
                if kernel is not None:
                    row["mha_gpu_ms"] = kernel["mha"]
                    row["collab_gpu_ms"] = kernel[name]
                    row["gpu_ratio"] = kernel[name] / kernel["mha"]
                    row["collab_gpu_tflops"] = (
                        factor * col_flops / kernel[name] / 1e9
                    )
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(
                    f"  {batch}x{length} d{d_model} h{heads} K{shared} {mode}"
                    f" {variant}: mha {row['mha_ms']:.3f} ms, collab "
                    f"{row['collab_ms']:.3f} ms, ratio {row['time_ratio']:.2f}"
                    f" (FLOP ratio {row['flop_ratio']:.2f})",
                    flush=True,
                )
    return rows


def _cuda():
    if BACKEND != "torch":
        return False
    import torch

    return torch.cuda.is_available()


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def check(sizes, log, masked=True):
    """Relative error of the fused path against the explicit one.

    Float32 (outputs and parameter gradients of a random linear loss), and
    the fused and the explicit path under the active dtype policy against
    the float32 explicit path (the second shows the error that the dtype
    alone brings). With `masked`, a random padding mask is used too.
    """
    results = []
    policy = keras.config.dtype_policy().name
    for batch, length, d_model, heads, shared in sizes:
        batch = min(batch, 4)
        head_dim = d_model // heads
        rng = np.random.default_rng(length + shared)
        x = rng.normal(size=(batch, length, d_model)).astype("float32")
        w = rng.normal(size=(batch, length, d_model)).astype("float32")
        mask = None
        if masked:
            keep = rng.random((batch, length)) > 0.2
            keep[:, 0] = True
            mask = keep[:, None, :] & np.ones((1, length, 1), bool)
        outs = {}
        for name, flash, pol in (
            ("explicit32", False, "float32"),
            ("fused32", True, "float32"),
            ("fused_policy", True, policy),
            ("explicit_policy", False, policy),
        ):
            keras.config.set_dtype_policy(pol)
            layer = CollaborativeAttention(
                num_heads=heads,
                key_dim=head_dim,
                shared_key_dim=shared,
                mixing_initializer="random_normal",
                bias_initializer="random_normal",
                flash_attention=flash,
                seed=3,
            )
            layer.build((batch, length, d_model), (batch, length, d_model))
            rs = np.random.default_rng(7)
            for v in layer.weights:  # identical weights in all three
                v.assign(rs.normal(scale=0.05, size=v.shape).astype("float32"))
            try:
                if BACKEND == "jax":  # float32 matmuls in float32, not tf32
                    import jax

                    with jax.default_matmul_precision("highest"):
                        outs[name] = _output_and_grads(layer, x, w, mask)
                else:
                    outs[name] = _output_and_grads(layer, x, w, mask)
            except Exception as error:  # noqa: BLE001 (report, go on)
                print(f"  check {name} {batch}x{length} K{shared} FAILED: "
                      f"{str(error).splitlines()[0][:300]}", flush=True)
        keras.config.set_dtype_policy(policy)
        ref = outs.get("explicit32")
        for name in ("fused32", "fused_policy", "explicit_policy"):
            if ref is None or name not in outs:
                continue
            errs = [
                float(np.linalg.norm(a - r) / np.linalg.norm(r))
                for a, r in zip(outs[name], ref)
            ]
            finite = all(np.isfinite(a).all() for a in outs[name])
            row = dict(
                check=name,
                policy="float32" if name == "fused32" else policy,
                batch=batch,
                length=length,
                shared_key_dim=shared,
                masked=masked,
                output_rel_err=errs[0],
                max_grad_rel_err=max(errs[1:]),
                finite=finite,
            )
            results.append(row)
            log.write(json.dumps(row) + "\n")
            print(
                f"  check {name} ({row['policy']}) {batch}x{length} K{shared}"
                f" mask={masked}: output {errs[0]:.2e}, grads max "
                f"{max(errs[1:]):.2e}, finite {finite}",
                flush=True,
            )
    return results


def _output_and_grads(layer, x, w, mask):
    """Output and gradients of sum(output * w) w.r.t. the trainable weights."""
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]

        def loss(tv, x, w, mask):  # arguments, not constants: XLA would fold
            y, _ = layer.stateless_call(tv, ntv, x, x, attention_mask=mask)
            return jnp.sum(y.astype("float32") * w), y

        grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (_, y), grads = grad_fn(tv, x, w, mask)
    elif BACKEND == "torch":
        import torch

        params = [v.value for v in layer.trainable_variables]
        y = layer(x, x, attention_mask=mask)
        wt = keras.ops.convert_to_tensor(w)
        grads = torch.autograd.grad((y.float() * wt).sum(), params)
        y = y.detach()
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            y = layer(x, x, attention_mask=mask)
            loss = tf.reduce_sum(tf.cast(y, "float32") * w)
        grads = tape.gradient(loss, layer.trainable_variables)
    return [to_numpy(y)] + [to_numpy(g) for g in grads]


def machine():
    info = {
        "backend": BACKEND,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if BACKEND == "jax":
        import jax

        info["jax"] = jax.__version__
        info["device"] = str(jax.devices()[0].device_kind)
    elif BACKEND == "torch":
        import torch

        info["torch"] = torch.__version__
        info["device"] = (
            torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        )
    else:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["device"] = "cpu" if not tf.config.list_physical_devices("GPU") else "gpu"
    info["processor"] = platform.processor() or platform.machine()
    return info


def print_table(rows, info):
    print(
        f"\n## {info['backend']} on {info['device']}, Keras {info['keras']}, "
        f"{keras.config.dtype_policy().name}"
    )
    print(
        "| batch, length, d_model, heads, Dk | pass | collab path | MHA ms "
        "| collab ms | time ratio | FLOP ratio | time/FLOP ratio "
        "| MHA TFLOP/s | collab TFLOP/s | MHA MiB | collab MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "gpu_ratio" in r:
            continue
        print(
            f"| {r['batch']}, {r['length']}, {r['d_model']}, {r['heads']}, "
            f"{r['shared_key_dim']} | {r['mode']} | {r['variant']} | "
            f"{r['mha_ms']:.3f} | {r['collab_ms']:.3f} | "
            f"{r['time_ratio']:.2f} | {r['flop_ratio']:.2f} | "
            f"{r['ratio_over_flop_ratio']:.2f} | {r['mha_tflops']:.3g} | "
            f"{r['collab_tflops']:.3g} | {_mib(r['mha_mib'])} | "
            f"{_mib(r['collab_mib'])} |"
        )


def _mib(value):
    return "-" if value is None else f"{value:.1f}"


def print_kernel_table(rows):
    rows = [r for r in rows if "gpu_ratio" in r]
    if not rows:
        return
    print(
        "\nWall time is Keras' eager torch dispatch; GPU ms is the summed "
        "kernel time (torch profiler)."
    )
    print(
        "| batch, length, d_model, heads, Dk | pass | collab path | MHA ms "
        "| collab ms | MHA GPU ms | collab GPU ms | GPU time ratio "
        "| FLOP ratio | GPU ratio/FLOP ratio | collab GPU TFLOP/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']}, {r['length']}, {r['d_model']}, {r['heads']}, "
            f"{r['shared_key_dim']} | {r['mode']} | {r['variant']} | "
            f"{r['mha_ms']:.3f} | {r['collab_ms']:.3f} | "
            f"{r['mha_gpu_ms']:.3f} | {r['collab_gpu_ms']:.3f} | "
            f"{r['gpu_ratio']:.2f} | {r['flop_ratio']:.2f} | "
            f"{r['gpu_ratio'] / r['flop_ratio']:.2f} | "
            f"{r['collab_gpu_tflops']:.3g} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="'b,t,d,h,k;...' (batch, length, d_model, heads, "
                        "shared_key_dim)")
    parser.add_argument("--variants", default="auto",
                        help="collaborative paths to time: auto,fused,explicit")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="float32",
                        help="dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--check", action="store_true",
                        help="also check fused == explicit on these sizes")
    parser.add_argument("--log", default=None, help="JSON-lines log file")
    parser.add_argument("--check-sizes", default=None,
                        help="sizes for --check (default: --sizes)")
    parser.add_argument("--no-bench", action="store_true",
                        help="only run --check")
    parser.add_argument("--breakdown", action="store_true",
                        help="torch on CUDA: list the costliest kernels")
    parser.add_argument("--skip-same", action="store_true",
                        help="time `explicit` only where `auto` is fused")
    args = parser.parse_args(argv)
    keras.config.set_dtype_policy(args.dtype)
    info = machine()
    print(json.dumps(info), flush=True)
    log = open(args.log, "a") if args.log else open(os.devnull, "w")
    log.write(json.dumps(dict(info, dtype=args.dtype, argv=sys.argv[1:])) + "\n")
    sizes = parse_sizes(args.sizes)
    global BREAKDOWN
    BREAKDOWN = args.breakdown
    if args.check:
        check(parse_sizes(args.check_sizes or args.sizes), log)
    if args.no_bench:
        log.close()
        return
    rows = benchmark(
        sizes,
        args.variants.split(","),
        args.modes.split(","),
        args.repeats,
        log,
        skip_same=args.skip_same,
    )
    print_table(rows, info)
    print_kernel_table(rows)
    log.close()


if __name__ == "__main__":
    main()
