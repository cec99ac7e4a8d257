"""Keras 3.15's own MultiHeadAttention tests, run against CollaborativeAttention.

`keras/src/layers/attention/multi_head_attention_test.py` (installed with
keras) builds every layer it tests as `layers.MultiHeadAttention(...)`; here
that name is `CollaborativeAttention` while each test runs, so every test of
the suite is a test of the layer as a drop-in replacement. The cases that
cannot apply by design are deselected in `BY_DESIGN`, each with its reason;
three whose inputs apply but whose regex matches keras' own wording are run
here with the same inputs and this package's wording (`REWORDED`).
"""

import unittest

import keras
import numpy as np
import pytest

from collab_keras import CollaborativeAttention

keras_test = pytest.importorskip(
    "keras.src.layers.attention.multi_head_attention_test",
    reason="keras' own tests ship with keras 3.15",
)


class _Layers:
    """keras.src.layers with MultiHeadAttention replaced by the layer."""

    MultiHeadAttention = CollaborativeAttention

    def __getattr__(self, name):
        return getattr(KERAS_LAYERS, name)


KERAS_LAYERS = keras_test.layers


MIXING = (
    "the layer has one more weight than MultiHeadAttention: the (num_heads, "
    "shared_key_dim) mixing matrix (and a content bias in place of the "
    "query/key biases), so keras' weight counts differ"
)
HOOK = (
    "calls or overrides `_compute_attention`, MultiHeadAttention's per-head hook; "
    "the collaborative heads share one query and key, and the layer's hook is "
    "`_compute_collaborative_attention` (a subclass defining the old hook is "
    "refused with a TypeError saying so)"
)
# name -> why the case cannot apply to CollaborativeAttention.
BY_DESIGN = {
    "test_basics": MIXING,
    "test_lora": MIXING,
    "test_mha_constraints": (
        "reads `_query_dense.bias` and `_key_dense.bias`: the collaborative "
        "query and key have no bias (a per-head content bias replaces them)"),
    "test_correctness_disable_flash_attention": (
        "sets MultiHeadAttention's per-head (dim, num_heads, key_dim) query and "
        "key kernels; the layer's are (dim, shared_key_dim), see "
        "tests/test_multi_head_attention_parity.py for the exact copy"),
    "test_correctness_enable_flash_attention": "as test_correctness_disable_flash_attention",
    "test_causal_only_skipped_for_subclass": HOOK,
    "test_compute_attention_combines_causal_and_explicit_mask_fused_fallback": HOOK,
    "test_compute_attention_combines_causal_and_explicit_mask_manual_path": HOOK,
    "test_sliding_window_serialization": (
        "reads the private `_sliding_window`; the layer keeps the value as its "
        "public `sliding_window` (the config round trip is test_basics' and "
        "tests/test_collaborative_attention.py's)"),
}
# Cases whose inputs apply but whose regex is keras' wording ("Received an
# invalid value for argument `num_heads`", "Invalid `output_shape`", "must be
# equal"): rerun below with the same inputs and this package's messages.
REWORDED = (
    "test_invalid_scalar_args_rejected",
    "test_multi_head_attention_output_shape_error",
    "test_shape_mismatch_error_query_value_dim_mismatch",
)


class TestKerasMultiHeadAttentionSuite(keras_test.MultiHeadAttentionTest):
    def setUp(self):
        super().setUp()
        keras_test.layers = _Layers()

    def tearDown(self):
        keras_test.layers = KERAS_LAYERS
        keras.config.set_dtype_policy("float32")
        super().tearDown()

    def test_invalid_scalar_args_rejected(self):
        for bad in (0, -2, 1.5):
            for name, kwargs in [("num_heads", dict(num_heads=bad, key_dim=4)),
                                 ("key_dim", dict(num_heads=4, key_dim=bad)),
                                 ("value_dim", dict(num_heads=4, key_dim=4, value_dim=bad))]:
                with self.assertRaisesRegex(ValueError, f"Argument `{name}`.*Received: {name}="):
                    CollaborativeAttention(**kwargs)
        CollaborativeAttention(num_heads=4, key_dim=4, value_dim=None)

    def test_multi_head_attention_output_shape_error(self):
        with self.assertRaisesRegex(ValueError, "Received: output_shape=8.0"):
            CollaborativeAttention(num_heads=2, key_dim=16, output_shape=8.0)

    def test_shape_mismatch_error_query_value_dim_mismatch(self):
        layer = CollaborativeAttention(num_heads=4, key_dim=2, value_dim=2)
        for args in [((2, 4, 8), (2, 2, 7), (2,))]:
            with self.assertRaisesRegex(ValueError, "Received: key.shape=.2,."):
                layer.compute_output_shape(*args)
            with self.assertRaisesRegex(ValueError, "Received: key.shape=.2,."):
                layer(*(np.ones(shape) for shape in args))


for _name, _reason in BY_DESIGN.items():
    setattr(TestKerasMultiHeadAttentionSuite, _name, unittest.skip(_reason)(
        getattr(keras_test.MultiHeadAttentionTest, _name)))
