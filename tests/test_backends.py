"""Runs the layer's tests under the JAX and PyTorch backends too.

Keras picks its backend once per process, so each backend gets a pytest
subprocess; the tests themselves run in this process under TensorFlow.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

BACKEND_TESTS = [
    "tests/test_cached_collaborative_attention.py",
    "tests/test_collaborative_attention.py",
    "tests/test_fused_masks.py",
    "tests/test_multi_head_attention_parity.py",
    "tests/test_one_hot_embedding.py",
]


@pytest.mark.parametrize(
    "backend,package", [("jax", "jax"), ("torch", "torch")]
)
def test_layer_tests_pass_on_backend(backend, package):
    if importlib.util.find_spec(package) is None:
        pytest.fail(f"{package} is not installed: `pip install '.[{backend}]'`")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + BACKEND_TESTS,
        cwd=root,
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
