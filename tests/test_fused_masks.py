"""The zoo's blocks pass masks in the form the attention layers' fused paths
take (issue 24): keras' MultiHeadAttention a mask spanning the query axis
(cuDNN takes no (B, 1, S) bias), CollaborativeAttention a key padding mask
(B, 1, S) as it is, and in causal self-attention `use_causal_mask=True` next
to it. The outputs and gradients are those of the masks as they were."""

import numpy as np
import pytest
from keras import ops

from collab_keras.models import transformer_decoder_block
from collab_keras.models.block_utils import mask_for_attention
from collab_keras.models.block_utils import padding_attention_mask
from collab_keras.models.transformer_decoder_block import TransformerDecoderBlock
from collab_keras.models.transformer_encoder_block import TransformerEncoderBlock
from tests.reference import output_and_gradients


def _record_masks(layer, causal=None):
    """Wraps `layer.call` to record the shapes of the masks it receives
    (and, in the list `causal`, its `use_causal_mask` arguments)."""
    shapes, call = [], layer.call

    def recording(*args, attention_mask=None, **kwargs):
        shapes.append(None if attention_mask is None else tuple(attention_mask.shape))
        if causal is not None:
            causal.append(kwargs.get("use_causal_mask", False))
        return call(*args, attention_mask=attention_mask, **kwargs)

    layer.call = recording
    return shapes


@pytest.mark.parametrize("attention,expected", [("concatenate", (2, 5, 5)), ("collaborative", (2, 1, 5))])
def test_encoder_block_mask_form(attention, expected):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    padding = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    block = TransformerEncoderBlock(2, 16, attention=attention)
    block.build(x.shape)
    shapes = _record_masks(block.self_attention_layer)
    out = ops.convert_to_numpy(block(x, padding_mask=padding))
    assert shapes == [expected]
    # The same mask unbroadcast gives the same outputs.
    layer = block.self_attention_layer
    layer.call = type(layer).call.__get__(layer)
    attended = layer(x, x, attention_mask=padding_attention_mask(padding))
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x, x, attention_mask=mask_for_attention(layer, padding_attention_mask(padding), 5))),
        ops.convert_to_numpy(attended), rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("attention,expected", [("concatenate", (2, 3, 6)), ("collaborative", (2, 1, 6))])
def test_decoder_cross_attention_mask_form(attention, expected):
    """Also in a decoding call over several positions (a prompt)."""
    rng = np.random.default_rng(1)
    target = rng.normal(size=(2, 3, 8)).astype("float32")
    source = rng.normal(size=(2, 6, 8)).astype("float32")
    source_padding = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
    block = TransformerDecoderBlock(2, 16, attention=attention)
    block.build(target.shape, source.shape)
    shapes = _record_masks(block.cross_attention_layer)
    uncached = block(target, source, encoder_padding_mask=source_padding)
    cached, _, _ = block(
        target,
        encoder_padding_mask=source_padding,
        self_attention_cache=block.initial_self_attention_cache(2, 3),
        self_attention_cache_update_index=0,
        cross_attention_cache=block.compute_cross_attention_cache(source),
    )
    assert shapes == [expected, expected]
    np.testing.assert_allclose(ops.convert_to_numpy(cached), ops.convert_to_numpy(uncached), rtol=1e-5, atol=1e-5)


def test_mask_for_attention_leaves_full_masks_and_none_alone():
    block = TransformerEncoderBlock(2, 16, attention="concatenate")
    block.build((2, 5, 8))
    layer = block.self_attention_layer
    full = np.ones((2, 5, 5), bool)
    assert mask_for_attention(layer, full, 5) is full
    assert mask_for_attention(layer, None, 5) is None


# Target padding: a right-padded row and a left-padded one (its first query
# has no key to attend to).
TARGET_PADDING = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], bool)


@pytest.mark.parametrize(
    "attention,shared_key_dim,expected,causal",
    [
        ("concatenate", None, (2, 4, 4), False),  # keras-hub's cached MHA
        ("concatenate", 4, (2, 4, 4), False),  # CachedConcatenatedAttention
        ("collaborative", None, (2, 1, 4), True),
    ],
)
def test_decoder_self_attention_mask_form(attention, shared_key_dim, expected, causal):
    rng = np.random.default_rng(2)
    target = rng.normal(size=(2, 4, 8)).astype("float32")
    source = rng.normal(size=(2, 6, 8)).astype("float32")
    block = TransformerDecoderBlock(2, 16, attention=attention, shared_key_dim=shared_key_dim)
    block.build(target.shape, source.shape)
    flags = []
    shapes = _record_masks(block.self_attention_layer, flags)
    block(target, source, decoder_padding_mask=TARGET_PADDING)
    assert shapes == [expected] and flags == [causal]
    # Without a padding mask keras' layer gets the causal mask alone.
    block(target, source)
    assert shapes[-1] == (None if causal else (1, 4, 4)) and flags[-1] == causal


def _merged_causal_arguments(attention_layer, padding_mask, length):
    """The decoder's self-attention masks as they were: causal and padding
    merged into one (B, T, T) mask for every layer."""
    mask = ops.logical_and(
        transformer_decoder_block.causal_mask(length, length),
        padding_attention_mask(padding_mask),
    )
    return {"attention_mask": mask}


@pytest.mark.parametrize("flash_attention", [None, True, False])
def test_decoder_causal_flag_gives_the_merged_masks_results(flash_attention, monkeypatch):
    rng = np.random.default_rng(3)
    target = rng.normal(size=(2, 4, 8)).astype("float32")
    source = rng.normal(size=(2, 6, 8)).astype("float32")
    upstream = rng.normal(size=(2, 4, 8)).astype("float32")
    block = TransformerDecoderBlock(
        2, 16, attention="collaborative", shared_key_dim=6,
        attention_kwargs={"flash_attention": flash_attention},
    )
    block.build(target.shape, source.shape)
    got, got_grads = output_and_gradients(
        block, upstream, target, source, decoder_padding_mask=TARGET_PADDING
    )
    monkeypatch.setattr(
        transformer_decoder_block, "causal_attention_arguments", _merged_causal_arguments
    )
    want, want_grads = output_and_gradients(
        block, upstream, target, source, decoder_padding_mask=TARGET_PADDING
    )
    np.testing.assert_array_equal(got, want)
    assert len(got_grads) == len(want_grads) == len(block.trainable_variables)
    for got_grad, want_grad in zip(got_grads, want_grads):
        np.testing.assert_array_equal(got_grad, want_grad)
