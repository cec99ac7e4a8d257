"""Concatenated heads whose queries/keys and values differ in head size."""

import keras


@keras.saving.register_keras_serializable(package="collab_keras")
class ConcatenatedAttention(keras.layers.MultiHeadAttention):
    """`keras.layers.MultiHeadAttention` that runs with `key_dim != value_dim`
    on every backend.

    The zoo's concatenated baseline at a reduced key size (the paper's
    comparison: `key_dim = shared_key_dim // num_heads` query/key dimensions
    per head, values of the full head size) is a `MultiHeadAttention` with
    two head sizes. Without dropout, `MultiHeadAttention` computes its core
    with `keras.ops.dot_product_attention`, which takes one head size for
    keys and values: on JAX it raises ("value shape should be ..."). This
    layer takes the explicit path (the same einsums and softmax as
    `MultiHeadAttention` with dropout) whenever the two sizes differ; its
    weights, config and outputs are `MultiHeadAttention`'s.

    It takes the arguments of `keras.layers.MultiHeadAttention`.

    Example:

    ```python
    layer = ConcatenatedAttention(num_heads=4, key_dim=8, value_dim=16)
    layer(keras.random.normal((2, 5, 64)), keras.random.normal((2, 7, 64)))
    ```
    """

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        # Asking for the weights is what makes `MultiHeadAttention` take
        # its explicit path; `call` returns them only when asked.
        return super()._compute_attention(
            query,
            key,
            value,
            attention_mask=attention_mask,
            training=training,
            return_attention_scores=(
                return_attention_scores or self._key_dim != self._value_dim
            ),
            use_causal_mask=use_causal_mask,
        )
