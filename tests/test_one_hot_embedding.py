"""OneHotEmbedding: the lookup's values, gradients, weights and masks."""

import keras
import numpy as np
import pytest
from keras import ops

from collab_keras.models.one_hot_embedding import OneHotEmbedding
from tests.reference import output_and_gradients


@pytest.mark.parametrize("rows", [2, 3, 16])
def test_values_and_gradients_are_the_lookups(rows):
    rng = np.random.default_rng(rows)
    ids = rng.integers(0, rows, (4, 33)).astype("int32")
    ids[:2] = 0  # heavily repeated, as segment ids are
    upstream = rng.normal(size=(4, 33, 8)).astype("float32")
    lookup = keras.layers.Embedding(rows, 8)
    one_hot = OneHotEmbedding(rows, 8)
    lookup.build(None)
    one_hot.build(None)
    one_hot.set_weights(lookup.get_weights())
    want, (want_grad,) = output_and_gradients(lookup, upstream, ids)
    got, (got_grad,) = output_and_gradients(one_hot, upstream, ids)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5)


def test_weights_masks_and_config_are_the_lookups():
    lookup = keras.layers.Embedding(3, 4, mask_zero=True, name="segment_embedding")
    one_hot = OneHotEmbedding.from_config(lookup.get_config())
    lookup.build(None)
    one_hot.build(None)
    assert [w.path for w in one_hot.weights] == [w.path for w in lookup.weights]
    one_hot.set_weights(lookup.get_weights())  # a lookup's checkpoint loads
    ids = np.array([[1, 2, 0]], "int32")
    np.testing.assert_array_equal(ops.convert_to_numpy(one_hot.compute_mask(ids)), [[True, True, False]])
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(one_hot))
    assert isinstance(restored, OneHotEmbedding) and restored.get_config() == one_hot.get_config()


def test_mixed_precision_output_dtype():
    layer = OneHotEmbedding(2, 4, dtype="mixed_bfloat16")
    out = layer(np.zeros((2, 3), "int32"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.embeddings.dtype == "float32"


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_gradient_benchmark_prints_equal_gradients_on_every_backend(backend):
    # benchmarks/embedding_gradient.py: the table of issue 24's check, at a
    # tiny size; each row compares both layers' gradients with the float32 lookup's.
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "embedding_gradient.py"),
         "--batch", "2", "--length", "16", "--width", "8", "--repeats", "2"],
        env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": root},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| float32")
            or line.startswith("| mixed_bfloat16")]
    assert [row[1].strip() for row in rows] == ["float32", "mixed_bfloat16"]
    assert f"backend {backend}" in result.stdout
    # Errors against the float32 lookup's gradient: the float32 one-hot
    # product computes the same gradient, the bfloat16 one within its rounding.
    assert float(rows[0][5]) == 0.0 and float(rows[0][6]) < 1e-5
    assert float(rows[1][6]) < 2e-2
