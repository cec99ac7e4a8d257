"""GPU check of the layer at the shapes of the translation runs (issue 25).

Not collected by pytest (no GPU in CI): run it on the GPU machine,

    KERAS_BACKEND=jax python3 tests/gpu_training_shapes.py

and commit its output. For the shapes of
`benchmarks/experiments/translation_recipe.py` (batch 96, T = S = 128,
d_model 256, 4 heads, key_dim 64, value_dim 64, shared_key_dim 64 / 128 /
256) and each mask kind the model uses (self-attention padding (B, T, T);
causal with a (B, 1, T) key padding mask; cross-attention (B, T, S) with
padding on both sides), it compares the output and every gradient (query and
value inputs, Wq, Wk, mixing, content bias, value and output kernels and
biases) of the layer as training runs it (mixed_bfloat16, automatic path)
with the same layer in float32 on the explicit path, with attention dropout
off and on (`training=True`, the same dropout mask). The yardstick is the
explicit path in bfloat16: a path whose error is well above it computes
something else. Exits non-zero if a case fails.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from collab_keras import CollaborativeAttention  # noqa: E402
from collab_keras.ops import fused_attention_preferred  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
B, T, S, D, N, KEY_DIM, V = 96, 128, 128, 256, 4, 64, 64
TOLERANCE = 2.0  # the automatic path's error at most this times the yardstick's (+ 1e-3)


def masks(kind, rng):
    query_valid = np.arange(T)[None] < rng.integers(8, T + 1, B)[:, None]  # (B, T)
    key_valid = np.arange(S)[None] < rng.integers(8, S + 1, B)[:, None]  # (B, S)
    if kind == "padding":  # self-attention: query and key padding
        return dict(attention_mask=query_valid[:, :, None] & query_valid[:, None, :])
    if kind == "causal":  # decoder self-attention
        return dict(attention_mask=query_valid[:, None, :], use_causal_mask=True)
    return dict(attention_mask=query_valid[:, :, None] & key_valid[:, None, :])  # cross


def layer(keys, dtype, flash, dropout):
    result = CollaborativeAttention(N, KEY_DIM, shared_key_dim=keys, value_dim=V, dropout=dropout, seed=7,
                                    flash_attention=flash, dtype=dtype)
    result.build((B, T, D), (B, S, D))
    return result


def gradients(attention, weights, query, value, grad, mask_args, training):
    names = [w.path for w in attention.trainable_variables]
    non_trainable = [w.value for w in attention.non_trainable_variables]
    causal = mask_args.get("use_causal_mask", False)

    def loss(weights, query, value, grad, mask):
        out, _ = attention.stateless_call(weights, non_trainable, query, value, attention_mask=mask,
                                          use_causal_mask=causal, training=training)
        return jnp.sum(out.astype(jnp.float32) * grad), out

    # The arrays are arguments, not constants folded into the program.
    step = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))
    (_, out), (dw, dq, dv) = step(weights, query, value, grad, jnp.asarray(mask_args["attention_mask"]))
    # Variable paths without the layer's own (numbered) name: "query/kernel", "mixing", ...
    named = {"d_" + n.split("/", 1)[1]: g for n, g in zip(names, dw)}
    return {"output": out, "d_query_input": dq, "d_value_input": dv, **named}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
    rng = np.random.default_rng(0)
    failures, lines, summary = 0, [], []
    print(f"device: {jax.devices()[0].device_kind}; keras {keras.__version__}, jax {jax.__version__}")
    for keys in (64, 128, 256):
        for dropout in (0.0, 0.1):
            reference = layer(keys, "float32", False, dropout)
            automatic = layer(keys, "mixed_bfloat16", None, dropout)
            yardstick = layer(keys, "mixed_bfloat16", False, dropout)
            # Weights as after training: a mixing matrix that is not block
            # one-hot and a content bias that is not zero.
            weights = [jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(w.shape[:-1]) or 1), w.shape), jnp.float32)
                       for w in reference.trainable_variables]
            query = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
            value = jnp.asarray(rng.normal(size=(B, S, D)), jnp.float32)
            grad = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
            for kind in ("padding", "causal", "cross"):
                mask_args = masks(kind, rng)
                training = dropout > 0
                fused = dropout == 0 and fused_attention_preferred(
                    jnp.zeros((B, T, keys), jnp.bfloat16), keys, V, N, True)
                want = gradients(reference, weights, query, value, grad, mask_args, training)
                got = gradients(automatic, weights, query, value, grad, mask_args, training)
                base = gradients(yardstick, weights, query, value, grad, mask_args, training)
                worst = 0.0
                for name in want:
                    error, bound = rel(got[name], want[name]), rel(base[name], want[name])
                    worst = max(worst, error / max(bound, 1e-12))
                    ok = np.isfinite(error) and error <= TOLERANCE * bound + 1e-3
                    failures += not ok
                    lines.append(f"| {keys} | {kind} | {dropout} | {'fused' if fused else 'explicit'} | {name} | "
                                 f"{error:.2e} | {bound:.2e} | {'ok' if ok else 'FAIL'} |")
                summary.append(f"shared_key_dim {keys}, {kind} mask, dropout {dropout}, "
                               f"{'fused' if fused else 'explicit'} path: worst error ratio to bf16 explicit {worst:.2f}")
                print(summary[-1], flush=True)
    print("| shared_key_dim | mask | dropout | automatic path | tensor | error (automatic, bf16) | "
          "error (explicit, bf16) | |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print("\n".join(summary))
    print(f"{len(lines) - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
