"""Demo: collaborative attention in place of multi-head attention.

Builds a small text classifier twice, once with keras.layers.MultiHeadAttention
and once with CollaborativeAttention at several shared key widths, prints the
parameter counts of the attention layers and checks that the collaborative
layer with the full width and concatenate mixing computes what the multi-head
layer computes.

    python -m collab_keras.training.demo
"""

import argparse

import keras
import numpy as np

from collab_keras import CollaborativeAttention


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
    for shared_key_dim in (heads * key_dim, heads * key_dim // 2, heads * key_dim // 4):
        layer = CollaborativeAttention(
            heads, key_dim, shared_key_dim=shared_key_dim
        )
        model = build_classifier(layer)
        name = f"CollaborativeAttention(Dk={shared_key_dim})"
        print(
            f"{name:<34} {layer.count_params():>16,} "
            f"{model.count_params():>13,}"
        )

    # Exactness: copy the multi-head weights into a full-width layer.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, heads * key_dim)).astype("float32")
    collaborative = CollaborativeAttention(heads, key_dim)
    expected = mha(x, x)
    collaborative(x, x)
    query_kernel = np.asarray(mha.query_dense.kernel)  # (d, heads, key_dim)
    key_kernel = np.asarray(mha.key_dense.kernel)
    collaborative.query_dense.kernel.assign(query_kernel.reshape(len(query_kernel), -1))
    collaborative.key_dense.kernel.assign(key_kernel.reshape(len(key_kernel), -1))
    collaborative.content_bias.assign(
        np.einsum("dnk,nk->dn", key_kernel, np.asarray(mha.query_dense.bias))
    )
    collaborative.value_dense.set_weights(mha.value_dense.get_weights())
    collaborative.output_dense.set_weights(mha.output_dense.get_weights())
    error = np.abs(np.asarray(collaborative(x, x)) - np.asarray(expected)).max()
    print(f"max |collaborative - multi-head| at full width: {error:.2e}")


if __name__ == "__main__":
    main()
