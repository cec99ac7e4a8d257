"""The segment embedding's gradient: a lookup against `OneHotEmbedding`, per backend.

Issue 24, item 1: BERT's segment (token type) embedding has 2 rows, and in a
fine-tuning batch every id is 0. A lookup's gradient then scatter-adds every
token's gradient row into one table row; on JAX on an H100 in bfloat16 that
took 12.4 ms for a (32, 512, 768) batch against 0.2 ms in float32.
`OneHotEmbedding` computes the same embedding as a one-hot matrix product,
whose gradient is a matmul reduction. This script times forward + backward
(the gradient with respect to the table) of both layers on the backend that
`KERAS_BACKEND` names, in float32 and in mixed bfloat16, and prints one table:

    KERAS_BACKEND=jax python3 benchmarks/embedding_gradient.py
    KERAS_BACKEND=torch python3 benchmarks/embedding_gradient.py
    KERAS_BACKEND=tensorflow python3 benchmarks/embedding_gradient.py

Times are medians of `--repeats` calls after warm-up, with the device
synchronized around each call (a compiled function on JAX and TensorFlow,
eager autograd on torch, as each backend's training step runs it). Each
layer's gradient is compared with the float32 lookup's (largest difference
relative to its largest entry): a faster path that changed the result would
show, and so does the rounding of a bfloat16 scatter-add.
"""

import argparse
import os
import time

import keras
import numpy as np

from collab_keras.models.one_hot_embedding import OneHotEmbedding


def gradient_function(layer, ids, upstream):
    """A function of no arguments that returns the table's gradient of
    `sum(layer(ids) * upstream)`, compiled where the backend compiles."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def loss(table, ids, upstream):
            outputs, _ = layer.stateless_call([table], [], ids)
            return (outputs.astype("float32") * upstream).sum()

        # Everything as an argument: a gradient that does not depend on the
        # table would otherwise be folded into a constant at compile time.
        grad = jax.jit(jax.grad(loss))
        table = layer.embeddings.value
        return lambda: grad(table, ids, upstream).block_until_ready()
    if backend == "torch":
        import torch

        table = layer.embeddings.value
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

        def run():
            table.grad = None
            (layer(ids).float() * upstream).sum().backward()
            sync()
            return table.grad

        return run
    import tensorflow as tf

    @tf.function(jit_compile=False)
    def grad():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(ids), "float32") * upstream)
        return tape.gradient(loss, layer.embeddings.value)

    return lambda: tf.convert_to_tensor(grad()).numpy()


def to_numpy(x):
    """A gradient as a float32 numpy array (torch's through `.detach()`)."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype="float32")


def measure(cls, policy, ids, upstream, repeats):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    layer = cls(2, upstream.shape[-1], name="segment_embedding")
    layer.build(ids.shape)
    run = gradient_function(layer, keras.ops.convert_to_tensor(ids), keras.ops.convert_to_tensor(upstream))
    gradient = to_numpy(run())  # compiles
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    keras.config.set_dtype_policy("float32")
    return float(np.median(times)) * 1e3, gradient


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    for name in ("batch", "length", "width", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1. Received: {name}={getattr(args, name)}")

    ids = np.zeros((args.batch, args.length), "int32")  # every segment id 0, as in fine-tuning
    upstream = np.random.default_rng(0).normal(size=(args.batch, args.length, args.width)).astype("float32")
    backend = keras.backend.backend()
    device = os.environ.get("DEVICE_NAME") or _device_name(backend)
    lines = [
        f"segment embedding gradient, ids ({args.batch}, {args.length}) all 0, width {args.width}; "
        f"backend {backend}, {device}, keras {keras.__version__}",
        "",
        "| dtype policy | lookup (keras.layers.Embedding) ms | OneHotEmbedding ms | ratio "
        "| lookup gradient error | OneHotEmbedding gradient error |",
        "|---|---|---|---|---|---|",
    ]
    reference = None  # the float32 lookup's gradient
    for policy in ("float32", "mixed_bfloat16"):
        lookup_ms, lookup_grad = measure(keras.layers.Embedding, policy, ids, upstream, args.repeats)
        one_hot_ms, one_hot_grad = measure(OneHotEmbedding, policy, ids, upstream, args.repeats)
        if reference is None:
            reference = lookup_grad
        scale = float(np.abs(reference).max()) or 1.0
        errors = [float(np.abs(g - reference).max()) / scale for g in (lookup_grad, one_hot_grad)]
        lines.append(f"| {policy} | {lookup_ms:.3f} | {one_hot_ms:.3f} | {one_hot_ms / lookup_ms:.2f} "
                     f"| {errors[0]:.2e} | {errors[1]:.2e} |")
    print("\n".join(lines))


def _device_name(backend):
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return "gpu" if gpus else "cpu"


if __name__ == "__main__":
    main()
