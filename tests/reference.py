"""Independent references the tests compare the layers against."""

import numpy as np


def collaborative_attention_reference(
    query, value, weights, num_heads, key_dim, mask=None, causal=False
):
    """Collaborative attention in NumPy float64, from the paper's formula.

    Args:
        query: `(B, T, F)` array.
        value: `(B, S, F')` array, also the key.
        weights: dict of the layer's weights keyed by their path below the
            layer: "mixing", "content_bias", "query/kernel", "key/kernel",
            "value/kernel", "value/bias", "attention_output/kernel",
            "attention_output/bias" (biases optional).
        num_heads: number of heads.
        key_dim: per-head key size; the scores are scaled by its inverse
            square root.
        mask: optional boolean `(B, T, S)` array.
        causal: whether to add a causal mask.

    Returns:
        The output `(B, T, E)` and the attention weights `(B, N, T, S)`.
    """
    w = {name: np.asarray(array, "float64") for name, array in weights.items()}
    x, y = np.asarray(query, "float64"), np.asarray(value, "float64")
    q = x @ w["query/kernel"]  # (B, T, K)
    k = y @ w["key/kernel"]  # (B, S, K)
    scores = np.einsum("btk,hk,bsk->bhts", q, w["mixing"], k)
    if "content_bias" in w:
        scores += np.einsum("bsf,fh->bhs", y, w["content_bias"])[:, :, None]
    scores /= np.sqrt(key_dim)
    allowed = np.ones(scores.shape[:1] + scores.shape[2:], bool)  # (B, T, S)
    if mask is not None:
        allowed &= mask
    if causal:
        allowed &= np.tril(np.ones(allowed.shape[1:], bool))
    allowed = allowed[:, None]  # (B, 1, T, S)
    scores = np.where(allowed, scores, -np.inf)
    peak = np.max(scores, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    probabilities = np.exp(scores - peak)
    total = probabilities.sum(-1, keepdims=True)
    probabilities = np.divide(
        probabilities, total, out=np.zeros_like(probabilities), where=total > 0
    )
    values = np.einsum("bsf,fhv->bshv", y, w["value/kernel"])
    values = values + w.get("value/bias", 0.0)
    heads = np.einsum("bhts,bshv->bthv", probabilities, values)
    output = np.einsum("bthv,hve->bte", heads, w["attention_output/kernel"])
    output = output + w.get("attention_output/bias", 0.0)
    return output, probabilities


def copy_multi_head_attention(mha, collaborative):
    """Copies a built MultiHeadAttention into a built CollaborativeAttention.

    The collaborative layer must have `shared_key_dim == num_heads * key_dim`
    and concatenate mixing. Head h's query/key columns become columns
    h * key_dim .. (h + 1) * key_dim - 1 of the shared projections; the query
    bias becomes the content bias `c_h = Wk_h bq_h`, and the key bias, which
    the softmax cancels, is dropped. Values, the output projection and the
    gate (`use_gate`) are copied.
    """
    query_kernel = np.asarray(mha.query_dense.kernel)  # (F, N, D)
    key_kernel = np.asarray(mha.key_dense.kernel)  # (F', N, D)
    collaborative.query_dense.kernel.assign(
        query_kernel.reshape(query_kernel.shape[0], -1)
    )
    collaborative.key_dense.kernel.assign(
        key_kernel.reshape(key_kernel.shape[0], -1)
    )
    if mha.use_bias:
        query_bias = np.asarray(mha.query_dense.bias)  # (N, D)
        collaborative.content_bias.assign(
            np.einsum("fnd,nd->fn", key_kernel, query_bias)
        )
    pairs = [
        (mha.value_dense, collaborative.value_dense),
        (mha.output_dense, collaborative.output_dense),
    ]
    if getattr(mha, "_use_gate", False):
        pairs.append((mha._gate_dense, collaborative.gate_dense))
    for source, target in pairs:
        for source_weight, target_weight in zip(source.weights, target.weights):
            target_weight.assign(source_weight)


def output_and_gradients(layer, upstream, *args, **kwargs):
    """`layer(*args, **kwargs)` and the gradients of `sum(output * upstream)`
    with respect to `layer.trainable_variables`, on the current backend.

    Returns:
        The output and the list of gradients, as NumPy arrays.
    """
    import keras
    from keras import ops

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def loss(trainable):
            out, _ = layer.stateless_call(
                trainable, [v.value for v in layer.non_trainable_variables],
                *args, **kwargs,
            )
            return ops.sum(out * upstream), out

        trainable = [v.value for v in layer.trainable_variables]
        (_, out), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
        return np.asarray(out), [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = layer(*args, **kwargs)
            loss = tf.reduce_sum(out * upstream)
        grads = tape.gradient(loss, [v.value for v in layer.trainable_variables])
        return out.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]
    import torch

    for variable in layer.trainable_variables:
        variable.value.grad = None
    out = layer(*args, **kwargs)
    torch.sum(out * torch.as_tensor(upstream)).backward()
    grads = [v.value.grad.cpu().numpy() for v in layer.trainable_variables]
    return out.detach().cpu().numpy(), grads
