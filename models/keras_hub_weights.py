"""keras-hub BERT and ViT models as this zoo's, weights and assets kept.

The zoo's concatenated attention is `keras.layers.MultiHeadAttention`, the
layer keras-hub uses, so a copy is one `set_weights` per sublayer and the
outputs match to float rounding. `from_keras_hub` converts a whole keras-hub
object (backbone, tokenizer, image converter, preprocessor or task) to the
zoo's class of the same role; `collab_keras.reparametrize` then turns the
result collaborative in a form that saves and loads (`.keras`,
`save_to_preset`) with its tokenizer.

Example:

```python
classifier = keras_hub.models.BertTextClassifier.from_preset(
    folder, num_classes=2
)
classifier = from_keras_hub(classifier)  # collab_keras.models classes
collaborative, report = reparametrize(classifier, shared_key_dim=128)
```
"""

import inspect

import keras
import keras_hub

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


def keras_hub_parent(cls):
    """The keras-hub class that the zoo class `cls` subclasses."""
    return next(
        base
        for base in cls.__mro__[1:]
        if base.__module__.startswith("keras_hub")
    )


def zoo_class(keras_hub_cls):
    """The zoo's class of the same role as `keras_hub_cls`, or `None`.

    Found among the classes registered with Keras (the zoo registers each
    with `register_keras_serializable`): a backbone by its
    `keras_hub_backbone_cls`, any other class by the keras-hub class it
    subclasses. So this module imports none of the families (`bert`,
    `vit`): they import it.
    """
    for cls in _zoo_registered():
        if _counterpart(cls) is keras_hub_cls:
            return cls
    return None


def _zoo_registered():
    """The zoo's registered classes that have a keras-hub counterpart."""
    classes = {
        obj
        for obj in keras.saving.get_custom_objects().values()
        if inspect.isclass(obj)
        and obj.__module__.startswith(__name__.rpartition(".")[0] + ".")
        and _counterpart(obj) is not None
    }
    return sorted(classes, key=lambda cls: cls.__name__)


def _counterpart(cls):
    if issubclass(cls, keras_hub.models.Backbone):
        return getattr(cls, "keras_hub_backbone_cls", None)
    if not any(b.__module__.startswith("keras_hub") for b in cls.__mro__[1:]):
        return None
    parent = keras_hub_parent(cls)
    # Generic keras-hub bases (`Task`, `Preprocessor`) are no counterpart.
    return parent if getattr(parent, "backbone_cls", None) else None


def from_keras_hub(obj):
    """This zoo's counterpart of a keras-hub BERT or ViT object.

    Args:
        obj: A keras-hub `BertBackbone`, `BertTokenizer`,
            `BertTextClassifierPreprocessor`, `BertMaskedLMPreprocessor`,
            `BertTextClassifier`, `BertMaskedLM`, `ViTBackbone`,
            `ViTImageConverter`, `ViTImageClassifierPreprocessor` or
            `ViTImageClassifier`.

    Returns:
        A new object of the matching `collab_keras.models` class, with
        concatenated attention, the same weights (backbone and head), the
        same vocabulary and preprocessing, and the same outputs.
    """
    target_cls = zoo_class(type(obj))
    if target_cls is None:
        supported = sorted(_counterpart(c).__name__ for c in _zoo_registered())
        raise ValueError(
            f"`from_keras_hub` converts keras-hub {supported}. "
            f"Received: obj of type {type(obj).__name__}"
        )
    if isinstance(obj, keras_hub.models.Backbone):
        return target_cls.from_keras_hub(obj)
    config = obj.get_config()
    if isinstance(obj, keras_hub.tokenizers.Tokenizer):
        return target_cls.from_config(
            {**config, "vocabulary": obj.get_vocabulary()}
        )
    if isinstance(obj, keras_hub.models.Task):
        config["backbone"] = from_keras_hub(obj.backbone)
        if obj.preprocessor is not None:
            config["preprocessor"] = from_keras_hub(obj.preprocessor)
        task = target_cls.from_config(config)
        _copy_head(obj, task)
        return task
    # A preprocessor, or a layer with no assets (image converter).
    for key in ("tokenizer", "image_converter"):
        if getattr(obj, key, None) is not None:
            config[key] = from_keras_hub(getattr(obj, key))
    return target_cls.from_config(config)


def copy_bert_weights(source, target):
    """Copies a `keras_hub.models.BertBackbone` into a `BertBackbone`.

    Args:
        source: `keras_hub.models.BertBackbone`.
        target: `BertBackbone` with `attention="concatenate"` and the
            source's sizes.

    Returns:
        `target`.
    """
    for name in (
        "token_embedding",
        "position_embedding",
        "segment_embedding",
        "embeddings_layer_norm",
        "pooled_dense",
    ):
        copy_layer(source.get_layer(name), target.get_layer(name), name)
    for i, (block, target_block) in enumerate(
        zip(source.transformer_layers, target.transformer_layers)
    ):
        for attribute in _BERT_BLOCK_SUBLAYERS:
            copy_layer(
                getattr(block, attribute),
                getattr(target_block, attribute),
                f"transformer_layer_{i}.{attribute}",
            )
    return target


def copy_vit_weights(source, target):
    """Copies a `keras_hub.models.ViTBackbone` into a `ViTBackbone`.

    Args:
        source: `keras_hub.models.ViTBackbone`.
        target: `ViTBackbone` with `attention="concatenate"` and the
            source's sizes.

    Returns:
        `target`.
    """
    embedding = source.get_layer("vit_patching_and_embedding")
    patches = target.patch_embedding
    if getattr(embedding, "use_class_token", True):
        patches.class_token.assign(embedding.class_token)
    kernel, *bias = embedding.patch_embedding.get_weights()  # no bias: []
    # Conv2D kernel (ph, pw, C, d) -> Dense kernel (ph * pw * C, d).
    patches.patch_embedding.set_weights(
        [kernel.reshape(-1, kernel.shape[-1]), *bias]
    )
    copy_layer(
        embedding.position_embedding,
        patches.position_embedding,
        "position_embedding",
    )
    encoder = source.get_layer("vit_encoder")
    for i, (block, target_block) in enumerate(
        zip(encoder.encoder_layers, target.transformer_layers)
    ):
        for path, attribute in _VIT_BLOCK_SUBLAYERS:
            layer = block
            for step in path:
                layer = getattr(layer, step)
            copy_layer(layer, getattr(target_block, attribute), f"block {i}")
    copy_layer(encoder.layer_norm, target.layer_norm, "layer_norm")
    return target


def _copy_head(source, target):
    """Copies a task's weights outside its backbone, in order."""

    def head(task):
        inside = {id(v) for v in task.backbone.weights}
        return [v for v in task.weights if id(v) not in inside]

    for variable, value in zip(head(target), head(source), strict=True):
        variable.assign(value)


def copy_layer(source, target, name):
    """`target.set_weights(source.get_weights())`, or an error naming
    `name` when the shapes differ."""
    weights = source.get_weights()
    shapes = [tuple(w.shape) for w in target.get_weights()]
    if [tuple(w.shape) for w in weights] != shapes:
        raise ValueError(
            f"Cannot copy `{name}`: the checkpoint's weights have shapes "
            f"{[tuple(w.shape) for w in weights]}, the model's {shapes}. "
            "Build the model with the checkpoint's sizes."
        )
    target.set_weights(weights)
