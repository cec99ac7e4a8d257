"""Copy keras-hub checkpoints (BertBackbone, ViTBackbone) into the zoo models.

The zoo's concatenated attention is `keras.layers.MultiHeadAttention`, the
layer keras-hub uses, so the copy is one `set_weights` per sublayer and the
outputs match to float32 rounding. For a collaborative model, load into the
concatenated one first, then reparametrize (`collab_keras.reparametrization`).

Example:

```python
backbone = keras_hub.models.BertBackbone.from_preset(folder)
model = BertEncoder.from_preset("minilm_l6", dropout=0.0)
load_bert_backbone_weights(model, backbone)
```
"""

# Sublayers of keras-hub's TransformerEncoder -> ours (same attribute names).
_BERT_BLOCK_SUBLAYERS = (
    "_self_attention_layer",
    "_self_attention_layer_norm",
    "_feedforward_layer_norm",
    "_feedforward_intermediate_dense",
    "_feedforward_output_dense",
)

# keras-hub ViTEncoderBlock sublayer -> our TransformerEncoderBlock sublayer.
_VIT_BLOCK_SUBLAYERS = (
    (("layer_norm_1",), "_self_attention_layer_norm"),
    (("mha",), "_self_attention_layer"),
    (("layer_norm_2",), "_feedforward_layer_norm"),
    (("mlp", "dense_1"), "_feedforward_intermediate_dense"),
    (("mlp", "dense_2"), "_feedforward_output_dense"),
)


def load_bert_backbone_weights(model, backbone):
    """Copies a `keras_hub.models.BertBackbone` into a `BertEncoder`.

    Args:
        model: `BertEncoder` with `attention="concatenate"` and the
            backbone's sizes.
        backbone: `keras_hub.models.BertBackbone`.

    Returns:
        `model`, with the backbone's weights.
    """
    _check_concatenate(model)
    for name in (
        "token_embedding",
        "position_embedding",
        "segment_embedding",
        "embeddings_layer_norm",
        "pooled_dense",
    ):
        _copy(backbone.get_layer(name), model.get_layer(name), name)
    _check_num_layers(model, len(backbone.transformer_layers))
    for i, (source, target) in enumerate(
        zip(backbone.transformer_layers, model.transformer_layers)
    ):
        for attribute in _BERT_BLOCK_SUBLAYERS:
            _copy(
                getattr(source, attribute),
                getattr(target, attribute),
                f"transformer_layer_{i}.{attribute}",
            )
    return model


def load_vit_backbone_weights(model, backbone):
    """Copies a `keras_hub.models.ViTBackbone` into a `VisionTransformer`.

    Args:
        model: `VisionTransformer` with `attention="concatenate"` and the
            backbone's sizes (channels-last images, class token).
        backbone: `keras_hub.models.ViTBackbone`.

    Returns:
        `model`, with the backbone's weights (the head is left as it is).
    """
    _check_concatenate(model)
    embedding = backbone.get_layer("vit_patching_and_embedding")
    target = model.patch_embedding
    target.class_token.assign(embedding.class_token)
    _copy(embedding.patch_embedding, target.patch_embedding, "patch_embedding")
    _copy(
        embedding.position_embedding,
        target.position_embedding,
        "position_embedding",
    )
    encoder = backbone.get_layer("vit_encoder")
    _check_num_layers(model, len(encoder.encoder_layers))
    for i, (source, block) in enumerate(
        zip(encoder.encoder_layers, model.transformer_layers)
    ):
        for path, attribute in _VIT_BLOCK_SUBLAYERS:
            layer = source
            for step in path:
                layer = getattr(layer, step)
            _copy(layer, getattr(block, attribute), f"block {i}: {attribute}")
    _copy(encoder.layer_norm, model.layer_norm, "layer_norm")
    return model


def _copy(source, target, name):
    weights = source.get_weights()
    shapes = [tuple(w.shape) for w in target.get_weights()]
    if [tuple(w.shape) for w in weights] != shapes:
        raise ValueError(
            f"Cannot copy `{name}`: the checkpoint's weights have shapes "
            f"{[tuple(w.shape) for w in weights]}, the model's {shapes}. "
            "Build the model with the checkpoint's sizes."
        )
    target.set_weights(weights)


def _check_concatenate(model):
    if model.attention != "concatenate":
        raise ValueError(
            "keras-hub weights load into attention='concatenate' models; "
            "reparametrize afterwards for collaborative heads. Received: "
            f"attention={model.attention!r}"
        )


def _check_num_layers(model, num_layers):
    if len(model.transformer_layers) != num_layers:
        raise ValueError(
            f"The checkpoint has {num_layers} layers, the model "
            f"{len(model.transformer_layers)}. Received: "
            f"num_layers={len(model.transformer_layers)}"
        )
