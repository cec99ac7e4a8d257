"""An embedding for small tables, looked up as a one-hot matrix product."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="collab_keras")
class OneHotEmbedding(keras.layers.Embedding):
    """`keras.layers.Embedding` computed as `one_hot(ids) @ embeddings`.

    For tables of a few rows whose ids repeat across the whole batch, such as
    BERT's segment (token type) embedding, where every id of a fine-tuning
    batch is usually 0. A lookup's gradient scatter-adds one row per token
    into the table: on a GPU in mixed precision that is a long chain of
    conflicting bfloat16 additions into one row. As a matrix product the
    gradient is `one_hot(ids)^T @ grad`, a reduction the matmul units run
    with float32 accumulation. The forward values are those of the lookup,
    and so are the gradients up to the order of the additions (equal in
    float32 on CPUs, see tests/test_one_hot_embedding.py).

    The weights are the lookup's (`embeddings`, `(input_dim, output_dim)`),
    so checkpoints of a `keras.layers.Embedding` load unchanged. Use it only
    for small `input_dim`: the one-hot matrix has `input_dim` columns per
    token. Ids outside `[0, input_dim)` embed to zeros.

    Args:
        input_dim: int. Number of rows of the table.
        output_dim: int. Width of the embedding.
        **kwargs: The other `keras.layers.Embedding` arguments
            (`embeddings_initializer`, `mask_zero`, `name`, `dtype`, ...).

    Call arguments:
        inputs: int tensor of ids, any shape `(...)`.

    Returns:
        The embeddings, `(..., output_dim)` in the layer's compute dtype.

    Example:

    ```python
    segments = OneHotEmbedding(2, 768, name="segment_embedding")
    segments(np.zeros((2, 12), "int32")).shape  # (2, 12, 768)
    ```
    """

    def call(self, inputs):
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = ops.cast(inputs, "int32")
        one_hot = ops.one_hot(inputs, self.input_dim, dtype=self.compute_dtype)  # (..., rows)
        table = ops.cast(self.embeddings, self.compute_dtype)  # (rows, width)
        return ops.matmul(one_hot, table)  # (..., width)
