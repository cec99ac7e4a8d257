"""The fused collaborative attention core equals the explicit path.

Keras picks its backend once per process, so each backend's checks run in
a subprocess (`KERAS_BACKEND=...`); a backend that is not installed is
skipped. The GPU kernels (cuDNN through JAX and torch) are checked by
`benchmarks/gpu_attention.py` on the GPU machine.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = textwrap.dedent(
    r"""
    import itertools
    import numpy as np
    import keras
    from keras import ops
    from collab_keras import CollaborativeAttention
    from collab_keras.ops import collaborative_dot_product_attention as op

    backend = keras.backend.backend()


    def grads_of(layer, x, y, w, mask):
        kw = {"attention_mask": mask}
        if isinstance(mask, str):  # "causal": the causal flag, no mask
            kw = {"use_causal_mask": True}
        # Output and gradients of sum(output * w) w.r.t. x and the weights.
        if backend == "jax":
            import jax
            import jax.numpy as jnp
            tv = [v.value for v in layer.trainable_variables]
            ntv = [v.value for v in layer.non_trainable_variables]
            def loss(tv, x):
                out, _ = layer.stateless_call(tv, ntv, x, y, **kw)
                return jnp.sum(out.astype("float32") * w), out
            (_, out), (gv, gx) = jax.value_and_grad(
                loss, argnums=(0, 1), has_aux=True)(tv, x)
            return [out, gx] + list(gv)
        if backend == "torch":
            import torch
            xt = torch.tensor(x, requires_grad=True)
            params = [v.value for v in layer.trainable_variables]
            out = layer(xt, y, **kw)
            loss = (out.float() * torch.tensor(w)).sum()
            g = torch.autograd.grad(loss, [xt] + params)
            return [out.detach()] + list(g)
        import tensorflow as tf
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = layer(xt, y, **kw)
            loss = tf.reduce_sum(tf.cast(out, "float32") * w)
        g = tape.gradient(loss, [xt] + layer.trainable_variables)
        return [out] + list(g)


    def rel(a, b):
        a = np.asarray(ops.convert_to_numpy(a), np.float64)
        b = np.asarray(ops.convert_to_numpy(b), np.float64)
        assert np.isfinite(a).all(), "non-finite values"
        return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


    def layer_pair(policy, flash, **kwargs):
        keras.config.set_dtype_policy(policy)
        layer = CollaborativeAttention(flash_attention=flash, **kwargs)
        return layer


    rng = np.random.default_rng(0)
    worst = 0.0
    cases = itertools.product(
        [(16, 8, 8), (12, 24, 12)],  # (shared_key_dim, key_dim, value_dim)
        [True, False],  # use_bias
        ["none", "padding", "causal", "causal_flag", "empty_row", "per_head"],
    )
    for (shared, key_dim, value_dim), use_bias, mask_kind in cases:
        b, t, s, d = 2, 7, 9, 20
        x = rng.normal(size=(b, t, d)).astype("float32")
        y = rng.normal(size=(b, s, d)).astype("float32")
        w = rng.normal(size=(b, t, d)).astype("float32")
        mask = None
        if mask_kind == "padding":
            mask = np.broadcast_to(rng.random((b, 1, s)) > 0.3, (b, t, s)).copy()
            mask[:, :, 0] = True
        elif mask_kind == "causal":
            mask = np.tril(np.ones((t, s), bool))[None]
        elif mask_kind == "causal_flag":
            mask = "causal"
        elif mask_kind == "per_head":
            mask = rng.random((b, 3, t, s)) > 0.4
            mask[1, 2, 4] = False  # a query that attends to nothing in head 2
        elif mask_kind == "empty_row":
            mask = rng.random((b, t, s)) > 0.4
            mask[0, 2] = False  # a query that attends to nothing
        results = {}
        for flash in (False, True):
            layer = layer_pair(
                "float32", flash, num_heads=3, key_dim=key_dim,
                shared_key_dim=shared, value_dim=value_dim, use_bias=use_bias,
                mixing_initializer="random_normal",
                bias_initializer="random_normal",
            )
            layer.build(x.shape, y.shape)
            init = np.random.default_rng(1)
            for v in layer.weights:
                v.assign(init.normal(scale=0.4, size=v.shape).astype("float32"))
            results[flash] = grads_of(layer, x, y, w, mask)
        for fused, explicit in zip(results[True], results[False]):
            err = rel(fused, explicit)
            worst = max(worst, err)
            assert err < 1e-5, (shared, use_bias, mask_kind, err)

    # The automatic choice on a CPU: explicit, but fused on TensorFlow.
    keras.config.set_dtype_policy("float32")
    layer = CollaborativeAttention(num_heads=2, key_dim=4, shared_key_dim=8)
    layer.build((1, 32, 8), (1, 32, 8))
    q = ops.zeros((1, 32, 8))
    assert layer._use_fused_path(False, q) == (backend == "tensorflow")
    forced = CollaborativeAttention(2, 4, flash_attention=True)
    forced.build((1, 32, 8), (1, 32, 8))
    assert forced._use_fused_path(False, q)

    # bfloat16 fused against float32 explicit.
    x = rng.normal(size=(2, 16, 32)).astype("float32")
    outs = {}
    for policy, flash in (("float32", False), ("mixed_bfloat16", True)):
        layer = layer_pair(policy, flash, num_heads=4, key_dim=8,
                           shared_key_dim=16, mixing_initializer="random_normal",
                           bias_initializer="random_normal")
        layer.build(x.shape, x.shape)
        init = np.random.default_rng(2)
        for v in layer.weights:
            v.assign(init.normal(scale=0.3, size=v.shape).astype("float32"))
        outs[policy] = layer(x, x)
    bf16 = rel(outs["mixed_bfloat16"], outs["float32"])
    assert bf16 < 2e-2, bf16
    print(f"OK {backend}: float32 worst relative error {worst:.1e}, "
          f"bfloat16 {bf16:.1e}")
    """
)


def _installed(module):
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize(
    "keras_backend,module",
    [("tensorflow", "tensorflow"), ("jax", "jax"), ("torch", "torch")],
)
def test_fused_equals_explicit(keras_backend, module):
    """Outputs and gradients (input and weights), all mask kinds."""
    if not _installed(module):
        pytest.skip(f"{module} is not installed")
    env = dict(
        os.environ,
        KERAS_BACKEND=keras_backend,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    print(proc.stdout.strip().splitlines()[-1:] if proc.stdout else "")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK " + keras_backend in proc.stdout


OPS = os.path.join(ROOT, "collab_keras", "ops")


def test_ops_package_has_no_import_cycle():
    """Kernels import only the leaf helpers; only the dispatch imports them."""
    import ast

    imported = {}
    for name in os.listdir(OPS):
        if name.endswith(".py"):
            with open(os.path.join(OPS, name)) as file:
                tree = ast.parse(file.read())
            imported[name[:-3]] = {
                node.module.rsplit(".", 1)[-1]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("collab_keras.ops")
            } | {
                alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
                and node.module == "collab_keras.ops"
                for alias in node.names
            }
    assert imported["_attention_utils"] == set()
    for name, modules in imported.items():
        if name.startswith("_") and name not in ("_attention_utils", "__init__"):
            assert "collaborative_dot_product_attention" not in modules, name
