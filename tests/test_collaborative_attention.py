"""Tests of CollaborativeAttention; they run under every Keras backend."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import backend
from keras import layers
from keras import models
from keras import ops
from keras import saving
from keras.src import testing

from collab_keras import CollaborativeAttention
from tests.reference import collaborative_attention_reference
from tests.reference import copy_multi_head_attention


def _numpy(x):
    return ops.convert_to_numpy(x)


def _pair(num_heads, key_dim, value_dim=None, use_bias=True, **kwargs):
    """A MultiHeadAttention with random biases and its exact collaborative copy."""
    mha = layers.MultiHeadAttention(
        num_heads,
        key_dim,
        value_dim=value_dim,
        use_bias=use_bias,
        bias_initializer="random_normal",
        **kwargs,
    )
    collaborative = CollaborativeAttention(
        num_heads, key_dim, value_dim=value_dim, use_bias=use_bias, **kwargs
    )
    return mha, collaborative


class CollaborativeAttentionTest(testing.TestCase):
    @parameterized.named_parameters(
        ("default", {}, 8, 0),
        ("no_bias_dropout", {"use_bias": False, "dropout": 0.5}, 5, 1),
        ("value_dim_output_shape", {"value_dim": 3, "output_shape": 5}, 8, 0),
        (
            "compressed",
            {"shared_key_dim": 3, "mixing_initializer": "ones"},
            8,
            0,
        ),
    )
    def test_basics(self, extra, num_trainable, num_seeds):
        self.run_layer_test(
            CollaborativeAttention,
            init_kwargs={"num_heads": 2, "key_dim": 4, **extra},
            input_shape={"query_shape": (2, 8, 16), "value_shape": (2, 4, 16)},
            expected_output_shape=(2, 8, extra.get("output_shape", 16)),
            expected_num_trainable_weights=num_trainable,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=num_seeds,
            expected_num_losses=0,
            supports_masking=True,
            run_training_check=False,
        )

    def test_weight_shapes_and_names(self):
        layer = CollaborativeAttention(4, 8, shared_key_dim=12, value_dim=6)
        layer.build((2, 5, 16), (2, 7, 10))
        shapes = {w.path: tuple(w.shape) for w in layer.weights}
        self.assertEqual(
            shapes,
            {
                "collaborative_attention/mixing": (4, 12),
                "collaborative_attention/content_bias": (10, 4),
                "collaborative_attention/query/kernel": (16, 12),
                "collaborative_attention/key/kernel": (10, 12),
                "collaborative_attention/value/kernel": (10, 4, 6),
                "collaborative_attention/value/bias": (4, 6),
                "collaborative_attention/attention_output/kernel": (4, 6, 16),
                "collaborative_attention/attention_output/bias": (16,),
            },
        )

    @parameterized.named_parameters(
        ("self", "self", None),
        ("cross", "cross", None),
        ("attention_mask", "cross", "attention_mask"),
        ("fully_masked_rows", "cross", "fully_masked_rows"),
        ("keras_masks", "self", "keras_masks"),
        ("explicit_masks", "cross", "explicit_masks"),
        ("causal", "self", "causal"),
        ("causal_and_mask", "self", "causal_and_mask"),
    )
    def test_equals_multi_head_attention(self, kind, mask_kind):
        rng = np.random.default_rng(0)
        query = rng.normal(size=(3, 6, 16)).astype("float32")
        value = query if kind == "self" else rng.normal(size=(3, 9, 12))
        value = value.astype("float32")
        mha, collaborative = _pair(4, 8, value_dim=5)
        kwargs = {}
        mha_kwargs = None
        if mask_kind in ("attention_mask", "fully_masked_rows"):
            mask = rng.random((3, 6, value.shape[1])) > 0.4
            if mask_kind == "fully_masked_rows":
                mask[0, 2] = False
                mask[2, :] = False
            kwargs["attention_mask"] = mask
        elif mask_kind in ("keras_masks", "explicit_masks"):
            query_mask = np.arange(6)[None] < np.array([[6], [4], [1]])
            value_mask = np.arange(value.shape[1])[None] < np.array(
                [[9], [2], [5]]
            )
            if mask_kind == "keras_masks":
                query = layers.Masking()(query * query_mask[..., None])
                value = query
            else:
                kwargs.update(query_mask=query_mask, value_mask=value_mask)
                # MultiHeadAttention ignores an explicit `query_mask`: give it
                # the same masks as one attention mask.
                mha_kwargs = {
                    "attention_mask": query_mask[:, :, None]
                    & value_mask[:, None, :]
                }
        elif mask_kind == "causal":
            kwargs["use_causal_mask"] = True
        elif mask_kind == "causal_and_mask":
            kwargs["use_causal_mask"] = True
            kwargs["attention_mask"] = rng.random((3, 6, 6)) > 0.3
        mha(query, value, return_attention_scores=True)
        collaborative(query, value)
        copy_multi_head_attention(mha, collaborative)
        # MultiHeadAttention's explicit path (the one that returns the
        # scores) is the reference: its fused path attends uniformly where a
        # row is fully masked.
        expected, expected_scores = mha(
            query, value, return_attention_scores=True, **(mha_kwargs or kwargs)
        )
        output, scores = collaborative(
            query, value, return_attention_scores=True, **kwargs
        )
        fused = collaborative(query, value, **kwargs)
        self.assertAllClose(expected, output, atol=2e-6, rtol=1e-5)
        self.assertAllClose(expected_scores, scores, atol=2e-6, rtol=1e-5)
        self.assertAllClose(expected, fused, atol=2e-6, rtol=1e-5)
        self.assertTrue(np.isfinite(_numpy(fused)).all())

    @parameterized.named_parameters(
        # query shape, value shape, attention mask shape (without heads)
        ("axis_1", (1,), (2, 3, 4, 8), (2, 5, 4, 6), (2, 4, 3, 5)),
        ("axis_2", (2,), (2, 3, 4, 8), (2, 3, 5, 6), (2, 3, 4, 5)),
        ("negative", (-2,), (2, 3, 4, 8), (2, 3, 5, 6), (2, 3, 4, 5)),
        ("two_axes", (1, 2), (2, 3, 4, 8), (2, 2, 5, 6), (2, 3, 4, 2, 5)),
    )
    def test_equals_multi_head_attention_attention_axes(
        self, axes, query_shape, value_shape, mask_shape
    ):
        rng = np.random.default_rng(1)
        query = rng.normal(size=query_shape).astype("float32")
        value = rng.normal(size=value_shape).astype("float32")
        mask = rng.random(mask_shape) > 0.3
        mha, collaborative = _pair(
            3, 4, attention_axes=axes, output_shape=(2, 3)
        )
        mha(query, value, return_attention_scores=True)
        collaborative(query, value)
        copy_multi_head_attention(mha, collaborative)
        expected, expected_scores = mha(
            query, value, attention_mask=mask, return_attention_scores=True
        )
        output, scores = collaborative(
            query, value, attention_mask=mask, return_attention_scores=True
        )
        self.assertEqual(tuple(output.shape), query_shape[:-1] + (2, 3))
        self.assertAllClose(expected, output, atol=2e-6, rtol=1e-5)
        self.assertAllClose(expected_scores, scores, atol=2e-6, rtol=1e-5)
        symbolic = collaborative.compute_output_spec(
            layers.Input(query_shape[1:]),
            layers.Input(value_shape[1:]),
            return_attention_scores=True,
        )
        self.assertEqual(tuple(symbolic[1].shape)[1:], tuple(scores.shape)[1:])

    def test_equals_multi_head_attention_without_bias(self):
        rng = np.random.default_rng(2)
        query = rng.normal(size=(2, 5, 8)).astype("float32")
        mha, collaborative = _pair(2, 3, use_bias=False)
        mha(query, query)
        collaborative(query, query)
        copy_multi_head_attention(mha, collaborative)
        self.assertAllClose(
            mha(query, query), collaborative(query, query), atol=2e-6
        )

    def test_scale_is_one_over_sqrt_key_dim_after_compression(self):
        layer = CollaborativeAttention(4, 16, shared_key_dim=8)
        query = (
            np.random.default_rng(3).normal(size=(1, 3, 8)).astype("float32")
        )
        _, scores = layer(query, query, return_attention_scores=True)
        weights = {w.path.split("/", 1)[1]: w.numpy() for w in layer.weights}
        expected_scores = collaborative_attention_reference(
            query, query, weights, num_heads=4, key_dim=16
        )[1]
        self.assertAllClose(expected_scores, scores, atol=1e-6)

    def test_fully_masked_rows_are_finite(self):
        layer = CollaborativeAttention(2, 4)
        query = np.ones((2, 3, 8), "float32")
        mask = np.zeros((2, 3, 3), bool)
        for flash in (None, False):
            layer.flash_attention = flash
            output = _numpy(layer(query, query, attention_mask=mask))
            self.assertTrue(np.isfinite(output).all())

    def test_fused_path_ignores_the_content_of_masked_keys(self):
        rng = np.random.default_rng(11)
        query = rng.normal(size=(2, 5, 8)).astype("float32")
        value = query.copy()
        value[:, 3:] = 1000.0  # padding whose content term is huge
        mask = np.broadcast_to(np.arange(5) < 3, (2, 5, 5))
        layer = CollaborativeAttention(2, 4, bias_initializer="ones")
        explicit, _ = layer(
            query, value, attention_mask=mask, return_attention_scores=True
        )
        layer.flash_attention = True
        fused = layer(query, value, attention_mask=mask)
        self.assertAllClose(explicit, fused, atol=1e-4, rtol=1e-4)

    def test_padding_masks_reach_attention_and_propagate(self):
        tokens = layers.Input((None,), dtype="int32")
        embedded = layers.Embedding(10, 8, mask_zero=True)(tokens)
        attended = CollaborativeAttention(2, 4)(embedded, embedded)
        # The pooling averages the positions that the output mask keeps.
        pooled = layers.GlobalAveragePooling1D()(attended)
        model = models.Model(tokens, pooled)
        short = np.array([[1, 2, 0, 0], [3, 4, 5, 0]])
        padded = np.pad(short, [[0, 0], [0, 3]])
        self.assertAllClose(model(short), model(padded), atol=1e-6)
        unmasked = models.Model(
            tokens,
            layers.GlobalAveragePooling1D()(
                CollaborativeAttention(2, 4)(
                    layers.Embedding(10, 8)(tokens),
                    layers.Embedding(10, 8)(tokens),
                )
            ),
        )
        self.assertNotAllClose(unmasked(short), unmasked(padded))

    def test_symbolic_shapes(self):
        query = layers.Input((7, 16))
        value = layers.Input((9, 12))
        layer = CollaborativeAttention(3, 4, shared_key_dim=6, output_shape=5)
        output, scores = layer(query, value, return_attention_scores=True)
        self.assertEqual(tuple(output.shape), (None, 7, 5))
        self.assertEqual(tuple(scores.shape), (None, 3, 7, 9))
        self.assertEqual(
            layer.compute_output_shape((2, 7, 16), (2, 9, 12)), (2, 7, 5)
        )

    def test_training_updates_every_weight(self):
        rng = np.random.default_rng(4)
        query = layers.Input((6, 8))
        output = CollaborativeAttention(
            2, 4, shared_key_dim=6, mixing_initializer="random_normal"
        )(query, query)
        model = models.Model(query, output)
        before = [w.numpy().copy() for w in model.weights]
        model.compile("adam", "mse", jit_compile=backend.backend() != "torch")
        x = rng.normal(size=(4, 6, 8)).astype("float32")
        model.fit(x, rng.normal(size=(4, 6, 8)), epochs=1, verbose=0)
        for old, weight in zip(before, model.weights):
            self.assertFalse(np.allclose(old, weight.numpy()), weight.path)

    def test_dropout(self):
        layer = CollaborativeAttention(2, 4, dropout=0.5, seed=1)
        query = np.random.default_rng(5).normal(size=(2, 5, 8))
        query = query.astype("float32")
        inference = layer(query, query, training=False)
        self.assertAllClose(inference, layer(query, query))
        self.assertNotAllClose(inference, layer(query, query, training=True))

    @parameterized.named_parameters(
        ("float16", "mixed_float16"), ("bfloat16", "mixed_bfloat16")
    )
    def test_mixed_precision(self, policy):
        query = np.random.default_rng(6).normal(size=(2, 5, 8))
        query = query.astype("float32")
        reference = CollaborativeAttention(2, 4)
        mixed = CollaborativeAttention(2, 4, dtype=policy)
        expected = reference(query, query)
        mixed(query, query)
        mixed.set_weights(reference.get_weights())
        for flash in (None, False):
            mixed.flash_attention = flash
            output = mixed(query, query)
            self.assertEqual(
                backend.standardize_dtype(output.dtype), policy[6:]
            )
            output = _numpy(ops.cast(output, "float32"))
            self.assertTrue(np.isfinite(output).all())
            self.assertAllClose(expected, output, rtol=0.05, atol=0.05)

    def test_lora(self):
        query = np.random.default_rng(7).normal(size=(2, 5, 8))
        layer = CollaborativeAttention(2, 4, shared_key_dim=4)
        expected = layer(query, query)
        for dense in (layer.query_dense, layer.key_dense, layer.value_dense):
            dense.enable_lora(2)
        self.assertAllClose(expected, layer(query, query), atol=1e-6)
        # mixing, content bias, 2 LoRA factors for each of query, key and value,
        # the value bias and the output kernel and bias.
        self.assertEqual(len(layer.trainable_weights), 2 + 6 + 1 + 2)

    def test_int8_quantization(self):
        query = layers.Input((5, 8))
        model = models.Model(query, CollaborativeAttention(2, 4)(query, query))
        x = np.random.default_rng(8).normal(size=(2, 5, 8)).astype("float32")
        expected = _numpy(model(x))
        model.quantize("int8")
        layer = model.layers[-1]
        self.assertEqual(
            backend.standardize_dtype(layer.query_dense._kernel.dtype), "int8"
        )
        self.assertAllClose(expected, model(x), atol=0.1, rtol=0.1)

    def test_keras_file_round_trip(self):
        query = layers.Input((5, 8))
        layer = CollaborativeAttention(
            2, 4, shared_key_dim=6, mixing_initializer="random_normal"
        )
        model = models.Model(query, layer(query, query))
        x = np.random.default_rng(9).normal(size=(2, 5, 8)).astype("float32")
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        for safe_mode in (True, False):
            restored = saving.load_model(path, safe_mode=safe_mode)
            self.assertIsInstance(restored.layers[-1], CollaborativeAttention)
            self.assertAllClose(model(x), restored(x))

    def test_config_round_trip(self):
        layer = CollaborativeAttention(
            3,
            4,
            shared_key_dim=6,
            value_dim=5,
            dropout=0.1,
            output_shape=(2, 2),
            attention_axes=(1,),
            mixing_initializer="random_normal",
            kernel_regularizer="l2",
            seed=3,
            name="collab",
        )
        config = layer.get_config()
        restored = CollaborativeAttention.from_config(config)
        self.assertEqual(restored.get_config(), config)
        serialized = saving.serialize_keras_object(layer)
        self.assertEqual(
            saving.deserialize_keras_object(serialized).get_config(), config
        )

    @pytest.mark.skipif(
        backend.backend() != "tensorflow", reason="exports a TF SavedModel"
    )
    def test_saved_model_export_in_fresh_process(self):
        query = layers.Input((5, 8), name="tokens")
        model = models.Model(query, CollaborativeAttention(2, 4)(query, query))
        x = np.random.default_rng(10).normal(size=(2, 5, 8)).astype("float32")
        folder = os.path.join(self.get_temp_dir(), "exported")
        model.export(folder, format="tf_saved_model", verbose=False)
        np.save(os.path.join(folder, "x.npy"), x)
        script = textwrap.dedent(f"""
            import numpy as np, tensorflow as tf
            loaded = tf.saved_model.load({folder!r})
            x = np.load({os.path.join(folder, "x.npy")!r})
            np.save({os.path.join(folder, "y.npy")!r}, loaded.serve(x).numpy())
            """)
        subprocess.run([sys.executable, "-c", script], check=True)
        exported = np.load(os.path.join(folder, "y.npy"))
        self.assertAllClose(model(x), exported, atol=1e-6)

    @parameterized.named_parameters(
        ("num_heads_zero", {"num_heads": 0}, "num_heads=0"),
        ("num_heads_float", {"num_heads": 2.0}, "num_heads=2.0"),
        ("key_dim_negative", {"key_dim": -1}, "key_dim=-1"),
        ("key_dim_bool", {"key_dim": True}, "key_dim=True"),
        ("shared_key_dim", {"shared_key_dim": 0}, "shared_key_dim=0"),
        ("value_dim", {"value_dim": "4"}, "value_dim='4'"),
        ("dropout", {"dropout": 1.5}, "dropout=1.5"),
        ("output_shape", {"output_shape": (4, -1)}, "output_shape=(4, -1)"),
        ("attention_axes", {"attention_axes": "1"}, "attention_axes='1'"),
        ("mixing", {"mixing_initializer": "shuffle"}, "'shuffle'"),
        (
            "flash_dropout",
            {"flash_attention": True, "dropout": 0.1},
            "dropout=0.1",
        ),
    )
    def test_invalid_arguments(self, kwargs, message):
        arguments = {"num_heads": 2, "key_dim": 4, **kwargs}
        with self.assertRaisesRegex(
            ValueError, "Received: .*" + re.escape(message)
        ):
            CollaborativeAttention(**arguments)

    def test_concatenate_mixing(self):
        layer = CollaborativeAttention(3, 4, shared_key_dim=7)
        layer.build((1, 2, 8), (1, 2, 8))
        self.assertAllEqual(
            layer.mixing.numpy(),
            [
                [1, 1, 1, 0, 0, 0, 0],
                [0, 0, 0, 1, 1, 0, 0],
                [0, 0, 0, 0, 0, 1, 1],
            ],
        )
        with self.assertRaisesRegex(
            ValueError, r"num_heads=3.*Received: shared_key_dim=2"
        ):
            CollaborativeAttention(3, 4, shared_key_dim=2)

    @parameterized.named_parameters(
        ("rank_two", (2, 8), (2, 8), None, "query.shape=(2, 8)"),
        ("ranks_differ", (2, 3, 8), (2, 3, 4, 8), None, "same rank"),
        ("key_value", (2, 3, 8), (2, 4, 8), (2, 5, 8), "key.shape=(2, 5, 8)"),
    )
    def test_invalid_shapes(self, query_shape, value_shape, key_shape, message):
        layer = CollaborativeAttention(2, 4)
        query = np.zeros(query_shape, "float32")
        value = np.zeros(value_shape, "float32")
        key = None if key_shape is None else np.zeros(key_shape, "float32")
        with self.assertRaisesRegex(ValueError, re.escape(message)):
            layer(query, value, key=key)

    def test_invalid_attention_axes_for_rank(self):
        layer = CollaborativeAttention(2, 4, attention_axes=(3,))
        with self.assertRaisesRegex(
            ValueError, r"Received: attention_axes=\(3,\)"
        ):
            layer(np.zeros((1, 2, 8)), np.zeros((1, 2, 8)))

    def test_invalid_mask_shape(self):
        layer = CollaborativeAttention(2, 4)
        x = np.zeros((2, 3, 8), "float32")
        with self.assertRaisesRegex(
            ValueError, r"Received: attention_mask.shape=\(2, 3, 4\)"
        ):
            layer(x, x, attention_mask=np.ones((2, 3, 4), bool))

    def test_scores_with_forced_fused_path(self):
        layer = CollaborativeAttention(2, 4, flash_attention=False)
        x = np.zeros((2, 3, 8), "float32")
        layer(x, x)
        layer.flash_attention = True
        with self.assertRaisesRegex(
            ValueError, "Received: return_attention_scores=True"
        ):
            layer(x, x, return_attention_scores=True)


@settings(max_examples=12, deadline=None)
@given(
    num_heads=st.integers(1, 4),
    key_dim=st.integers(1, 6),
    shared_key_dim=st.integers(1, 12),
    # value_dim=1 is left out: on the TensorFlow backend keras.ops.add of a
    # (num_heads, 1) bias takes it for a channel bias when the sequence length
    # equals num_heads (keras 3.15 tensorflow/numpy.py `add`), which makes
    # EinsumDense's value bias, in MultiHeadAttention too, wrong there.
    value_dim=st.integers(2, 5),
    lengths=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    features=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    use_bias=st.booleans(),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_numpy_float64_reference(
    num_heads,
    key_dim,
    shared_key_dim,
    value_dim,
    lengths,
    features,
    use_bias,
    causal,
    seed,
):
    rng = np.random.default_rng(seed)
    query_length, value_length = lengths
    if causal:
        value_length = query_length
    query = rng.normal(size=(2, query_length, features[0]))
    value = rng.normal(size=(2, value_length, features[1]))
    mask = rng.random((2, query_length, value_length)) > 0.3
    layer = CollaborativeAttention(
        num_heads,
        key_dim,
        shared_key_dim=shared_key_dim,
        value_dim=value_dim,
        use_bias=use_bias,
        mixing_initializer="random_normal",
        bias_initializer="random_normal",
    )
    layer.build(query.shape, value.shape)
    weights = {w.path.split("/", 1)[1]: w.numpy() for w in layer.weights}
    expected, expected_scores = collaborative_attention_reference(
        query,
        value,
        weights,
        num_heads=num_heads,
        key_dim=key_dim,
        mask=mask,
        causal=causal,
    )
    inputs = (query.astype("float32"), value.astype("float32"))
    for flash in (None, False):
        layer.flash_attention = flash
        output = layer(*inputs, attention_mask=mask, use_causal_mask=causal)
        np.testing.assert_allclose(
            _numpy(output), expected, atol=2e-5, rtol=1e-4
        )
    _, scores = layer(
        *inputs,
        attention_mask=mask,
        use_causal_mask=causal,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(_numpy(scores), expected_scores, atol=2e-6)
