"""Demo: collaborative attention in place of multi-head attention.

Builds a small text classifier twice, once with keras.layers.MultiHeadAttention
and once with CollaborativeAttention at several shared key widths, prints the
parameter counts, then reparametrizes the multi-head layer into collaborative
ones: exact at the full width, an approximation below it.

    python -m collab_keras.training.demo
"""

import argparse

import keras
import numpy as np

from collab_keras import CollaborativeAttention
from collab_keras import reparametrize


def build_classifier(attention, vocabulary_size=1000, length=64, width=256):
    """A one-block attention classifier around the given attention layer."""
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocabulary_size, width, mask_zero=True)(tokens)
    x = keras.layers.LayerNormalization()(x + attention(x, x))
    x = keras.layers.GlobalAveragePooling1D()(x)
    logits = keras.layers.Dense(2, name="logits")(x)
    return keras.Model(tokens, logits)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--key-dim", type=int, default=32)
    args = parser.parse_args(argv)
    heads, key_dim = args.heads, args.key_dim

    mha = keras.layers.MultiHeadAttention(heads, key_dim)
    baseline = build_classifier(mha)
    print(f"{'attention':<34} {'attention params':>16} {'model params':>13}")
    print(
        f"{'MultiHeadAttention':<34} {mha.count_params():>16,} "
        f"{baseline.count_params():>13,}"
    )
    widths = (heads * key_dim, heads * key_dim // 2, heads * key_dim // 4)
    for shared_key_dim in widths:
        layer = CollaborativeAttention(
            heads, key_dim, shared_key_dim=shared_key_dim
        )
        model = build_classifier(layer)
        name = f"CollaborativeAttention(Dk={shared_key_dim})"
        print(
            f"{name:<34} {layer.count_params():>16,} "
            f"{model.count_params():>13,}"
        )

    # Reparametrize the multi-head layer: exact at full width, a rank-Dk
    # approximation of every head's Wq_h Wk_h^T below it.
    x = np.random.default_rng(0).normal(size=(2, 16, 256))  # model width
    x = x.astype("float32")
    expected = keras.ops.convert_to_numpy(mha(x, x))
    print(
        f"\n{'reparametrized to':<34} {'error of T':>16} {'max |y - y_mha|':>16}"
    )
    for shared_key_dim in (heads * key_dim, heads * key_dim // 2):
        layer, report = reparametrize(mha, shared_key_dim, seed=0)
        error = np.abs(keras.ops.convert_to_numpy(layer(x, x)) - expected)
        print(
            f"{'Dk=' + str(shared_key_dim):<34} "
            f"{report[0]['relative_error']:>16.2e} {error.max():>16.2e}"
        )
    print(
        "(random weights are not low rank; trained heads are: see "
        "docs/reparametrization.md)"
    )


if __name__ == "__main__":
    main()
