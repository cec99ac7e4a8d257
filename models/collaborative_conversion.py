"""Turn a concatenated zoo model into a collaborative one (reparametrize).

`to_collaborative(model, shared_key_dim)` rebuilds the model from its config
with `attention="collaborative"`, copies every weight outside the attention
layers, and fills each attention layer with
`collab_keras.reparametrization.reparametrize` of the concatenated layer:
exact when `shared_key_dim >= hidden_dim`, a CP approximation below. The
result is a plain zoo model (it saves, exports and generates like any other).

Example:

```python
model = BertEncoder.from_preset("minilm_l6")
load_bert_backbone_weights(model, backbone)
collaborative, report = to_collaborative(model, shared_key_dim=128)
```
"""

import keras

from collab_keras.reparametrization import reparametrize

# Attention sublayers of the zoo's blocks.
_ATTENTION_ATTRIBUTES = (
    "_self_attention_layer",
    "_self_attention",
    "_cross_attention",
)


def to_collaborative(model, shared_key_dim, **reparametrize_kwargs):
    """A collaborative copy of a concatenated `BertEncoder`,
    `VisionTransformer` or `TransformerNMT`.

    Args:
        model: A zoo model with `attention="concatenate"`.
        shared_key_dim: Shared query/key width of the new attention layers.
        **reparametrize_kwargs: Passed to `reparametrize` (`method`,
            `max_iterations`, `tolerance`, `seed`, `verbose`).

    Returns:
        `(collaborative_model, report)`: the new model and one dict per
        attention layer (`"name"`, `"relative_error"`, ...), as
        `reparametrize` reports them.
    """
    if getattr(model, "attention", None) != "concatenate":
        raise ValueError(
            "`model` must be a zoo model with attention='concatenate'. "
            f"Received: attention={getattr(model, 'attention', None)!r}"
        )
    config = model.get_config()
    config["attention"] = "collaborative"
    config["shared_key_dim"] = shared_key_dim
    new_model = model.__class__.from_config(config)

    # Everything but the attention layers keeps its weights (same paths).
    old_variables = {v.path: v for v in model.weights}
    for variable in new_model.weights:
        old = old_variables.get(variable.path)
        if old is not None and tuple(old.shape) == tuple(variable.shape):
            variable.assign(old)

    reparametrize_kwargs.setdefault("verbose", False)
    report = []
    for old_layer, new_layer in zip(
        _attention_layers(model), _attention_layers(new_model)
    ):
        plain = _plain_multi_head_attention(old_layer)
        converted, entries = reparametrize(
            plain, shared_key_dim, **reparametrize_kwargs
        )
        for target, source in zip(new_layer.weights, converted.weights):
            target.assign(source)
        entries[0]["name"] = old_layer.path
        report.extend(entries)
    return new_model, report


def _attention_layers(model):
    layers = []
    for block in model._flatten_layers(include_self=False, recursive=True):
        for attribute in _ATTENTION_ATTRIBUTES:
            layer = getattr(block, attribute, None)
            if isinstance(layer, keras.layers.Layer):
                layers.append(layer)
    return layers


def _plain_multi_head_attention(layer):
    """A `keras.layers.MultiHeadAttention` with the weights of `layer` (which
    may be keras-hub's cached subclass)."""
    plain = keras.layers.MultiHeadAttention.from_config(layer.get_config())
    plain.build(**layer._build_shapes_dict)
    plain.set_weights(layer.get_weights())
    return plain
