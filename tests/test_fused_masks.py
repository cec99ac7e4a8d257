"""The zoo's blocks pass masks in the form the attention layers' fused paths
take (issue 24): keras' MultiHeadAttention a mask spanning the query axis
(cuDNN takes no (B, 1, S) bias), CollaborativeAttention a key padding mask
(B, 1, S) as it is. The outputs are those of the masks as they were."""

import numpy as np
import pytest

from collab_keras.models.block_utils import mask_for_attention
from collab_keras.models.block_utils import padding_attention_mask
from collab_keras.models.transformer_decoder_block import TransformerDecoderBlock
from collab_keras.models.transformer_encoder_block import TransformerEncoderBlock


def _record_masks(layer):
    """Wraps `layer.call` to record the shapes of the masks it receives."""
    shapes, call = [], layer.call

    def recording(*args, attention_mask=None, **kwargs):
        shapes.append(None if attention_mask is None else tuple(attention_mask.shape))
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
    out = np.asarray(block(x, padding_mask=padding))
    assert shapes == [expected]
    # The same mask unbroadcast gives the same outputs.
    layer = block.self_attention_layer
    layer.call = type(layer).call.__get__(layer)
    attended = layer(x, x, attention_mask=padding_attention_mask(padding))
    np.testing.assert_allclose(
        np.asarray(layer(x, x, attention_mask=mask_for_attention(layer, padding_attention_mask(padding), 5))),
        np.asarray(attended), rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("attention,expected", [("concatenate", (2, 4, 6)), ("collaborative", (2, 1, 6))])
def test_decoder_cross_attention_mask_form(attention, expected):
    rng = np.random.default_rng(1)
    target = rng.normal(size=(2, 4, 8)).astype("float32")
    source = rng.normal(size=(2, 6, 8)).astype("float32")
    source_padding = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
    block = TransformerDecoderBlock(2, 16, attention=attention)
    block.build(target.shape, source.shape)
    shapes = _record_masks(block.cross_attention_layer)
    block(target, source, encoder_padding_mask=source_padding)
    assert shapes == [expected]


def test_mask_for_attention_leaves_full_masks_and_none_alone():
    block = TransformerEncoderBlock(2, 16, attention="concatenate")
    block.build((2, 5, 8))
    layer = block.self_attention_layer
    full = np.ones((2, 5, 5), bool)
    assert mask_for_attention(layer, full, 5) is full
    assert mask_for_attention(layer, None, 5) is None
