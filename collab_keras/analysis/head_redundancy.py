"""How redundant are the key/query projections of the heads of a model."""

import keras
import numpy as np


def head_redundancy(obj, thresholds=(0.9, 0.95, 0.99)):
    """Spectrum of the key and query projections of every attention layer.

    Trained heads learn redundant projections: the concatenation
    `[Wq_1, ..., Wq_H]` (`d x H * key_dim`) is close to low rank although
    each `Wq_h` alone is not, the observation behind collaborative
    attention. For each attention layer this computes the cumulative
    energy (squared singular values, normalized to end at 1) of the
    concatenated query and key kernels and of each head's own kernels, and
    the number of dimensions that holds each fraction in `thresholds`.

    Args:
        obj: a built `keras.layers.MultiHeadAttention` (or subclass), or a
            Keras model; every such layer in it (nested blocks included) is
            analyzed.
        thresholds: fractions of the energy in `(0, 1]`.

    Returns:
        A list with one dict per attention layer: `"name"` (its path),
        `"query_energy"` and `"key_energy"` (cumulative energy of the
        concatenated kernels, arrays of length `min(d, H * key_dim)`),
        `"query_dims"` and `"key_dims"` (dicts threshold -> dimensions),
        `"query_head_energy"` and `"key_head_energy"` (`(H, key_dim)`
        arrays, per head), `"query_head_dims"` and `"key_head_dims"`
        (dicts threshold -> array of `H` dimension counts).

    Example:

    ```python
    for layer in head_redundancy(backbone):
        print(layer["name"], layer["query_dims"][0.95])
    ```
    """
    thresholds = tuple(thresholds)
    if not thresholds or not all(0 < t <= 1 for t in thresholds):
        raise ValueError(
            "`thresholds` must be fractions in (0, 1]. "
            f"Received: thresholds={thresholds}"
        )
    if isinstance(obj, keras.layers.MultiHeadAttention):
        layers = [(obj.name, obj)]
    elif isinstance(obj, keras.Model):
        layers = _attention_layers(obj, obj.name)
    else:
        raise ValueError(
            "`obj` must be a keras.layers.MultiHeadAttention layer or a Keras "
            f"model. Received: obj={obj!r}"
        )
    if not layers:
        raise ValueError(
            "The model has no keras.layers.MultiHeadAttention layer. "
            f"Received: obj={obj.name!r}"
        )

    results = []
    for name, layer in layers:
        if not layer.built:
            raise ValueError(
                "Attention layers must be built to be analyzed. "
                f"Received: layer {name!r} with built=False"
            )
        result = {"name": name}
        for part, dense in (("query", layer._query_dense), ("key", layer._key_dense)):
            kernel = keras.ops.convert_to_numpy(dense.kernel).astype("float64")
            d, heads, key_dim = kernel.shape
            concatenated = _cumulative_energy(kernel.reshape(d, heads * key_dim))
            per_head = _cumulative_energy(kernel.transpose(1, 0, 2))  # (H, dk)
            result[f"{part}_energy"] = concatenated
            result[f"{part}_dims"] = {
                t: int(_dimensions(concatenated, t)) for t in thresholds
            }
            result[f"{part}_head_energy"] = per_head
            result[f"{part}_head_dims"] = {
                t: _dimensions(per_head, t) for t in thresholds
            }
        results.append(result)
    return results


def _attention_layers(parent, path):
    """`(path, layer)` of the MultiHeadAttention layers under `parent`."""
    found = []
    for child in parent._flatten_layers(include_self=False, recursive=False):
        child_path = f"{path}/{child.name}"
        if isinstance(child, keras.layers.MultiHeadAttention):
            found.append((child_path, child))
        else:
            found += _attention_layers(child, child_path)
    return found


def _cumulative_energy(matrices):
    """Cumulative normalized squared singular values, over the last axis."""
    energy = np.linalg.svd(matrices, compute_uv=False) ** 2
    cumulative = np.cumsum(energy, axis=-1)
    return cumulative / cumulative[..., -1:]


def _dimensions(cumulative, threshold):
    """Smallest number of dimensions whose energy reaches `threshold`."""
    # A small slack so that threshold 1.0 is reached despite rounding.
    return np.sum(cumulative < threshold - 1e-12, axis=-1) + 1
