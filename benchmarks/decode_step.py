"""Times one cached decoding step of a decoder: collaborative vs multi-head.

A benchmark, not a test. Two pre-LayerNorm decoders of `--layers` blocks
(self-attention + a 4x GELU feed-forward) differ only in their attention:
`keras.layers.MultiHeadAttention` with a per-head key/value cache (the step
that `keras_hub.layers.CachedMultiHeadAttention` runs: project the new
position, `ops.slice_update` it into the cache, `_compute_attention` over
the cache), and `CachedCollaborativeAttention` with its shared-key cache.
One step decodes one new position for every sequence of the batch at cache
index `--length - 1` with a mask over the cache; the steps alternate and
the median is reported, with the cache sizes and the bytes each step must
read (caches + weights) over its time.

    KERAS_BACKEND=jax python benchmarks/decode_step.py --dtype bfloat16

JAX donates the caches to the compiled step (updated in place, as in a
generation loop); torch runs eagerly, where `ops.slice_update` copies the
cache tensor it updates (for both layers).
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import keras  # noqa: E402
from keras import ops  # noqa: E402

from collab_keras.layers import CachedCollaborativeAttention  # noqa: E402

BACKEND = keras.backend.backend()


class Decoder(keras.layers.Layer):
    """`num_layers` pre-LN blocks whose self-attention reads a cache."""

    def __init__(self, kind, num_layers, d_model, heads, shared_key_dim,
                 flash_attention=None, decode_core=True, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        head_dim = d_model // heads
        self.blocks = []
        for i in range(num_layers):
            if kind == "mha":
                attention = keras.layers.MultiHeadAttention(
                    heads, head_dim, name=f"attention_{i}"
                )
            else:
                attention = CachedCollaborativeAttention(
                    heads,
                    head_dim,
                    shared_key_dim=shared_key_dim,
                    mixing_initializer="random_normal",
                    bias_initializer="random_normal",
                    flash_attention=flash_attention,
                    name=f"attention_{i}",
                )
                if not decode_core:  # the einsum core of the layer
                    attention._DECODE_MAX_ROWS = 0
            self.blocks.append(
                (
                    keras.layers.LayerNormalization(name=f"ln1_{i}"),
                    attention,
                    keras.layers.LayerNormalization(name=f"ln2_{i}"),
                    keras.layers.Dense(4 * d_model, activation="gelu",
                                       name=f"ffn1_{i}"),
                    keras.layers.Dense(d_model, name=f"ffn2_{i}"),
                )
            )

    def call(self, x, caches, index, mask):
        new_caches = []
        for (ln1, attention, ln2, ffn1, ffn2), cache in zip(self.blocks, caches):
            h = ln1(x)
            if self.kind == "mha":
                a, cache = _mha_step(attention, h, cache, index, mask)
            else:
                a, cache = attention(
                    h, h, attention_mask=mask, cache=cache,
                    cache_update_index=index,
                )
            x = x + a
            x = x + ffn2(ffn1(ln2(x)))
            new_caches.append(cache)
        return x, new_caches


def _mha_step(layer, h, cache, index, mask):
    """keras_hub's CachedMultiHeadAttention step on a keras MHA layer."""
    if not layer.built:
        layer.build(h.shape, h.shape)
    query = layer._query_dense(h)  # (B, 1, N, H)
    start = [0, index, 0, 0]
    key = ops.slice_update(cache["key"], start, layer._key_dense(h))
    value = ops.slice_update(cache["value"], start, layer._value_dense(h))
    out, _ = layer._compute_attention(query, key, value, attention_mask=mask)
    return layer._output_dense(out), {"key": key, "value": value}


def initial_caches(kind, num_layers, batch, length, d_model, heads,
                   shared_key_dim, dtype, seed):
    """Random (not zero) caches, as a long prompt would leave them."""
    rng = np.random.default_rng(seed)
    head_dim = d_model // heads
    if kind == "mha":
        shapes = {"key": (batch, length, heads, head_dim),
                  "value": (batch, length, heads, head_dim)}
    else:
        shapes = {"key": (batch, length, shared_key_dim),
                  "value": (batch, length, heads, head_dim),
                  "content": (batch, length, heads)}
    caches = []
    for _ in range(num_layers):
        caches.append({
            name: ops.cast(
                ops.convert_to_tensor(
                    rng.standard_normal(shape, dtype=np.float32)
                ),
                dtype,
            )
            for name, shape in shapes.items()
        })
    return caches


def cache_bytes(caches):
    return sum(
        int(np.prod(v.shape)) * np.dtype(ops.convert_to_numpy(v[:1, :1]).dtype).itemsize
        for cache in caches for v in cache.values()
    )


def weight_bytes(layer):
    return sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in layer.weights
    )


def make_step(decoder, x, caches, index, mask):
    """A `step(caches) -> (y, caches)` callable, compiled where Keras is."""
    decoder(x, caches=caches, index=index, mask=mask)  # build
    if BACKEND == "jax":
        import jax

        tv = [v.value for v in decoder.trainable_variables]
        ntv = [v.value for v in decoder.non_trainable_variables]

        def fn(tv, caches, index):
            (y, caches), _ = decoder.stateless_call(
                tv, ntv, x, caches=caches, index=index, mask=mask
            )
            return y, caches

        jitted = jax.jit(fn, donate_argnums=(1,))
        jindex = jax.numpy.asarray(index, "int32")

        def step(caches):
            return jitted(tv, caches, jindex)

        step.compiled_text = lambda caches: (
            jitted.lower(tv, caches, jindex).compile().as_text())
        return step
    if BACKEND == "torch":
        import torch

        def step(caches):
            with torch.no_grad():
                return decoder(x, caches=caches, index=index, mask=mask)

        return step
    import tensorflow as tf

    fn = tf.function(
        lambda caches: decoder(x, caches=caches, index=index, mask=mask),
                     jit_compile=True)
    return fn


def big_operations(hlo, min_mb=4.0):
    """The operations of an optimized HLO module's entry computation whose
    result is at least `min_mb` MB, as `count x opcode shape (MB)` lines:
    where a step writes a cache-sized tensor (a copy or transpose of a
    cache) beside the in-place cache updates."""
    import re

    sizes = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "pred": 1, "s8": 1}
    entry = hlo[hlo.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    pattern = re.compile(r"= (\w+)\[([\d,]*)\]\{[^}]*\} ([\w-]+)\(.*?"
                         r"(?:kind=(\w+))?(?:, calls=(%?[\w.-]+))?")
    counts = {}
    for line in entry.splitlines():
        match = pattern.search(line)
        if not match or match.group(1) not in sizes:
            continue
        dims = [int(d) for d in match.group(2).split(",") if d]
        mb = sizes[match.group(1)] * int(np.prod(dims)) / 1e6
        if mb < min_mb:
            continue
        what = match.group(3)
        if match.group(4):
            what += f" {match.group(4)} {match.group(5) or ''}"
        key = f"{what} {match.group(1)}{dims} ({mb:.0f} MB)"
        counts[key] = counts.get(key, 0) + 1
    return "\n".join(f"  {n} x {k}" for k, n in sorted(counts.items()))


def sync(y):
    if BACKEND == "jax":
        import jax

        jax.block_until_ready(y)
    elif BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        np.asarray(y[0, 0, 0])


def kernel_count(hlo):
    """Kernels a compiled JAX step launches, from its optimized HLO: the
    entry computation's fusions, library calls (cuBLAS, cuDNN, Pallas) and
    other non-trivial operations (parameters, constants, bitcasts and
    tuples launch nothing)."""
    entry = hlo[hlo.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    import re

    free = ("parameter", "constant", "bitcast", "get-tuple-element", "tuple")
    opcode = re.compile(r"[\s})]([a-z][a-z0-9-]*)\(")
    count = 0
    for line in entry.splitlines()[1:]:
        if " = " not in line:
            continue
        match = opcode.search(line.split(" = ", 1)[1])
        count += bool(match) and match.group(1) not in free
    return count


def measure(args, s, log):
    """Times the variants at cache length `s`; prints the table."""
    dtype = keras.config.dtype_policy().compute_dtype
    b, d, h = args.batch, args.d_model, args.heads
    index = s - 1
    mask = ops.convert_to_tensor(np.arange(s)[None, None, :] <= index)
    x = ops.cast(keras.random.normal((b, 1, d), seed=0), dtype)
    variants = [("mha", None, None, True)]
    for k in (int(v) for v in args.shared_key_dims.split(",")):
        variants += [(f"collab K{k} auto", k, None, True),
                     (f"collab K{k} einsum core", k, None, False)]
        if args.fused:
            variants.append((f"collab K{k} fused", k, True, True))
    steps, caches, sizes, weights, launches = {}, {}, {}, {}, {}
    for name, k, flash, core in variants:
        kind = "mha" if k is None else "collab"
        decoder = Decoder(kind, args.layers, d, h, k, flash_attention=flash,
                          decode_core=core)
        caches[name] = initial_caches(kind, args.layers, b, s, d, h, k,
                                      dtype, seed=1)
        sizes[name] = cache_bytes(caches[name])
        steps[name] = make_step(decoder, x, caches[name], index, mask)
        weights[name] = weight_bytes(decoder)
        if BACKEND == "jax":
            hlo = steps[name].compiled_text(caches[name])
            launches[name] = kernel_count(hlo)
            if args.hlo:
                print(f"\n{name}: the compiled step's largest operations")
                print(big_operations(hlo))
    for name, step in steps.items():  # compile (twice for JAX) and warm up
        for _ in range(6):
            y, caches[name] = step(caches[name])
        sync(y)
    samples = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.inner):
                y, caches[name] = step(caches[name])
            sync(y)
            samples[name].append((time.perf_counter() - start) / args.inner)
    kernel = {}
    if BACKEND == "torch":
        import torch

        if torch.cuda.is_available():  # summed GPU kernel time per step
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile

            for name, step in steps.items():
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        y, caches[name] = step(caches[name])
                    torch.cuda.synchronize()
                events = [e for e in prof.key_averages()
                          if (getattr(e, "self_device_time_total", None)
                              or getattr(e, "self_cuda_time_total", 0.0))]
                total = sum(
                    getattr(e, "self_device_time_total", None)
                    or getattr(e, "self_cuda_time_total", 0.0)
                    for e in events
                )
                kernel[name] = total / 5 / 1e3
                launches[name] = sum(e.count for e in events) // 5
    info = {"backend": BACKEND, "keras": keras.__version__, "dtype": args.dtype}
    if BACKEND == "jax":
        import jax

        info["jax"], info["device"] = jax.__version__, jax.devices()[0].device_kind
    elif BACKEND == "torch":
        import torch

        info["torch"] = torch.__version__
        info["device"] = (torch.cuda.get_device_name()
                          if torch.cuda.is_available() else "cpu")
    print(json.dumps(info))
    print(f"\n## Decode step, {args.layers} layers, batch {b}, cache length {s},"
          f" d_model {d}, {h} heads, {args.dtype}, {BACKEND} on {info['device']}")
    print("| attention | step ms | vs MHA | GPU kernel ms | vs MHA | kernels "
          "per step | cache MB | cache vs MHA | bytes read / time, GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_t = statistics.median(samples["mha"])
    for name, k, flash, _ in variants:
        t = statistics.median(samples[name])
        row = dict(info, variant=name, step_ms=t * 1e3, ratio=t / base_t,
                   cache_mb=sizes[name] / 1e6,
                   cache_ratio=sizes[name] / sizes["mha"],
                   gbps=(sizes[name] + weights[name]) / t / 1e9,
                   batch=b, length=s, layers=args.layers,
                   kernels=launches.get(name))
        if name in kernel:
            row["gpu_ms"] = kernel[name]
            gpu = f"{kernel[name]:.3f} | {kernel[name] / kernel['mha']:.2f}"
        else:
            gpu = "- | -"
        log.write(json.dumps(row) + "\n")
        print(f"| {name} | {t * 1e3:.3f} | {t / base_t:.2f} | {gpu} | "
              f"{launches.get(name, '-')} | {sizes[name] / 1e6:.1f} | "
              f"{sizes[name] / sizes['mha']:.3f} | {row['gbps']:.0f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", default="2048",
                        help="cache lengths, each timed on its own")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--shared-key-dims", default="256")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--fused", action="store_true",
                        help="also time flash_attention=True")
    parser.add_argument("--log", default=None)
    parser.add_argument("--hlo", action="store_true",
                        help="JAX: list the compiled steps' largest operations")
    args = parser.parse_args(argv)
    keras.config.set_dtype_policy(args.dtype)
    log = open(args.log, "a") if args.log else open(os.devnull, "w")
    for length in (int(v) for v in args.lengths.split(",")):
        measure(args, length, log)
    log.close()


if __name__ == "__main__":
    main()
