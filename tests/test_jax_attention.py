"""The cuDNN path of collaborative attention on JAX (`_jax_attention`): the
mask in the form cuDNN takes. cuDNN itself needs a GPU; here
`jax.nn.dot_product_attention` records what it is given and runs XLA.
Keras picks its backend once per process: under another backend
`test_in_a_jax_process` runs this file again with `KERAS_BACKEND=jax`."""

import importlib
import os
import subprocess
import sys

import pytest

jax = pytest.importorskip("jax")

import keras  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from collab_keras.ops import _jax_attention  # noqa: E402
from collab_keras.ops import _pallas_attention  # noqa: E402

UNDER_JAX = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="runs in the JAX process of test_in_a_jax_process")


def test_in_a_jax_process():
    if keras.backend.backend() == "jax":
        pytest.skip("this is the JAX process")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "6 passed, 1 skipped" in result.stdout, result.stdout[-2000:]


def _inputs(length, keys, batch=2, heads=3, key_width=24, value_width=8):
    ks = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(ks[0], (batch, length, key_width))  # (B, T, K)
    k = jax.random.normal(ks[1], (batch, keys, key_width))  # (B, S, K)
    v = jax.random.normal(ks[2], (batch, keys, heads, value_width))  # (B, S, N, V)
    m = jax.random.normal(ks[3], (heads, key_width))  # (N, K)
    c = jax.random.normal(ks[4], (batch, keys, heads))  # (B, S, N)
    return q, k, v, m, c


@pytest.fixture
def calls(monkeypatch):
    """cuDNN taken wherever its rules allow (a GPU faked, float32 counted
    as a half dtype); the calls recorded."""
    recorded = []
    original = jax.nn.dot_product_attention

    def recording(query, key, value, mask=None, implementation=None, **kwargs):
        recorded.append((None if mask is None else mask.shape, implementation))
        return original(query, key, value, mask=mask, **kwargs)

    monkeypatch.setattr(_jax_attention, "on_gpu", lambda: True)
    monkeypatch.setattr(_jax_attention, "_HALF", (jnp.float32,))
    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    return recorded


@UNDER_JAX
@pytest.mark.parametrize("is_causal", [False, True])
def test_key_padding_mask_spans_the_query_axis_for_cudnn(calls, is_causal):
    """A `(B, 1, 1, S)` key padding mask reaches cuDNN as `(B, 1, T, S)`
    (as it is, cuDNN raises "Bias must have same seq length as QKV": a
    collaborative BERT at shared_key_dim 192 failed so on an H100), with the
    same result."""
    q, k, v, m, c = _inputs(length=16, keys=16)
    mask = np.arange(16)[None, :] < np.array([16, 9])[:, None]  # (B, S)
    mask = jnp.asarray(mask)[:, None, None, :]  # (B, 1, 1, S)
    args = dict(mask=mask, scale=0.2, is_causal=is_causal)
    out = _jax_attention.attention(q, k, v, m, c, **args)
    assert calls == [((2, 1, 16, 16), "cudnn")]
    want = _pallas_attention.reference(q, k, v, m, c, **args)
    np.testing.assert_allclose(out, want, atol=1e-5)


@UNDER_JAX
@pytest.mark.parametrize("length, keys", [(15, 16), (16, 15)])
def test_odd_lengths_with_a_mask_run_xla(calls, length, keys):
    """With a mask cuDNN trains only even lengths ("Unsupported sequence
    length"): odd ones go to XLA; without a mask cuDNN takes them."""
    q, k, v, m, c = _inputs(length=length, keys=keys)
    mask = jnp.ones((2, 1, 1, keys), bool)
    out = _jax_attention.attention(q, k, v, m, c, mask=mask, scale=0.2, is_causal=False)
    _jax_attention.attention(q, k, v, m, c, mask=None, scale=0.2, is_causal=False)
    assert calls == [((2, 1, 1, keys), None), (None, "cudnn")]
    want = _pallas_attention.reference(q, k, v, m, c, mask=mask, scale=0.2)
    np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("flash", [None, True])
def test_the_dispatch_knows_odd_masked_lengths(monkeypatch, flash):
    """The odd-length rule is the dispatch's (`cudnn_applies`): with a mask
    at an odd length the automatic choice takes the explicit path, not
    XLA's fused call behind a cuDNN decision, and a forced fused call at
    shared_key_dim 192 takes the Pallas kernel (where the table of
    `_pallas_attention.PREFERRED_LENGTHS` does not take it first: emptied
    here)."""
    from collab_keras.layers import CollaborativeAttention
    from collab_keras.layers import collaborative_attention as module
    ops = importlib.import_module(
        "collab_keras.ops.collaborative_dot_product_attention")

    monkeypatch.setattr(_jax_attention, "on_gpu", lambda: True)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(_pallas_attention, "PREFERRED_LENGTHS", {})
    bf16 = jnp.bfloat16
    odd, even = jnp.zeros((2, 513, 192), bf16), jnp.zeros((2, 512, 192), bf16)
    assert ops.fused_attention_preferred(odd, 192, 64, 12, True)  # cuDNN
    assert not ops.fused_attention_preferred(
        odd, 192, 64, 12, True, masked_lengths=(513, 513))
    assert ops.fused_attention_preferred(
        even, 192, 64, 12, True, masked_lengths=(512, 512))
    assert not _jax_attention.cudnn_applies(192, 64, bf16, True, (512, None))
    value = jnp.zeros((2, 513, 12, 64), bf16)
    content = jnp.zeros((2, 513, 12), bf16)
    mask = jnp.ones((2, 1, 1, 513), bool)
    monkeypatch.setattr(_pallas_attention, "applies", lambda *a, **k: True)
    assert _pallas_attention.chosen(odd, odd, value, content, mask)
    assert not _pallas_attention.chosen(odd, odd, value, content, None)

    # The layer hands the dispatch the lengths where it has a mask.
    seen = []
    monkeypatch.setattr(module, "fused_attention_preferred",
                        lambda *args, **kwargs: seen.append(kwargs) or False)
    layer = CollaborativeAttention(12, 16, shared_key_dim=192,
                                   flash_attention=flash)
    layer.build((2, 7, 64), (2, 9, 64))
    query, key = np.zeros((2, 7, 192)), np.zeros((2, 9, 192))
    layer._use_fused_path(False, query, key, np.ones((2, 1, 7, 9), bool))
    layer._use_fused_path(False, query, key, None)
    want = [{"masked_lengths": (7, 9)}, {"masked_lengths": None}]
    assert seen == (want if flash is None else [])
