"""The block one-hot mixing matrix of concatenated multi-head attention."""

import numpy as np
from keras import initializers
from keras import ops
from keras.saving import register_keras_serializable


@register_keras_serializable(package="collab_keras")
class ConcatenateMixing(initializers.Initializer):
    """Initializes a `(num_heads, shared_key_dim)` mixing matrix block one-hot.

    Head `h` owns a contiguous block of the shared query/key dimensions:
    columns `floor(h * K / N) .. floor((h + 1) * K / N) - 1` for `N` heads and
    `K = shared_key_dim`, so blocks differ in size by at most one. With
    `shared_key_dim == num_heads * key_dim` each head owns `key_dim` columns
    and `CollaborativeAttention` is exactly concatenated multi-head attention
    (Cordonnier et al., 2020, section 3).

    Example:

    ```python
    ConcatenateMixing()((2, 4))  # [[1, 1, 0, 0], [0, 0, 1, 1]]
    ```
    """

    def __call__(self, shape, dtype=None):
        if len(shape) != 2 or not 0 < shape[0] <= shape[1]:
            raise ValueError(
                "`ConcatenateMixing` needs a shape (num_heads, shared_key_dim) "
                "with shared_key_dim >= num_heads, so that every head owns a "
                f"dimension. Received: shape={tuple(shape)}"
            )
        num_heads, shared_key_dim = shape
        owner = np.arange(shared_key_dim) * num_heads // shared_key_dim  # (K,)
        blocks = owner[None, :] == np.arange(num_heads)[:, None]  # (N, K)
        return ops.cast(blocks, dtype or "float32")
