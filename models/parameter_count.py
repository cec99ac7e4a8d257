"""Closed-form parameter counts of the zoo models.

Per attention layer with width `d`, `N` heads of size `d_k = d / N`:

- concatenated (`keras.layers.MultiHeadAttention`, biases everywhere):
  query, key, value and output `4 (d^2 + d)`;
- collaborative with shared width `K`: shared query and key `2 d K` (no
  bias), mixing `N K`, content bias `d N`, value and output `2 (d^2 + d)`.

Example:

```python
count_parameters("bert", "bert_base_cased")  # 108_310_272
count_parameters("bert", "bert_base_cased", attention="collaborative",
                 shared_key_dim=384)  # 101_379_840
```
"""

from .presets import BERT_ARCHITECTURES
from .presets import TRANSFORMER_ARCHITECTURES
from .presets import VIT_ARCHITECTURES

def attention_parameters(hidden_dim, num_heads, attention, shared_key_dim=None):
    """Parameters of one self- or cross-attention layer of width
    `hidden_dim`."""
    d = hidden_dim
    values_and_output = 2 * (d * d + d)
    k = shared_key_dim or d
    if attention == "concatenate":  # query and key: d -> k, with biases
        return 2 * (d * k + k) + values_and_output
    return 2 * d * k + num_heads * k + d * num_heads + values_and_output


def block_parameters(
    hidden_dim, intermediate_dim, num_heads, attention, shared_key_dim=None
):
    """One encoder block: self-attention, feed-forward net, two layer norms
    (a decoder block adds a cross-attention and its layer norm)."""
    d, i = hidden_dim, intermediate_dim
    attention = attention_parameters(d, num_heads, attention, shared_key_dim)
    layer_norms = 2 * 2 * d
    feedforward = d * i + i + i * d + d
    return attention + layer_norms + feedforward


def bert_parameters(
    vocabulary_size,
    num_layers,
    num_heads,
    hidden_dim,
    intermediate_dim,
    max_sequence_length=512,
    num_segments=2,
    attention="concatenate",
    shared_key_dim=None,
    num_classes=None,
    **unused,
):
    """`BertBackbone` (pooler included), plus a `BertTextClassifier` head
    when `num_classes` is set."""
    d = hidden_dim
    embeddings = (vocabulary_size + max_sequence_length + num_segments) * d
    embeddings += 2 * d  # layer norm
    blocks = num_layers * block_parameters(
        d, intermediate_dim, num_heads, attention, shared_key_dim
    )
    pooler = d * d + d
    head = 0 if num_classes is None else d * num_classes + num_classes
    return embeddings + blocks + pooler + head


def vit_parameters(
    image_shape,
    patch_size,
    num_layers,
    num_heads,
    hidden_dim,
    mlp_dim,
    num_classes=None,
    attention="concatenate",
    shared_key_dim=None,
    **unused,
):
    """`ViTBackbone`, plus a `ViTImageClassifier` head when `num_classes`
    is set."""
    d = hidden_dim
    if isinstance(patch_size, int):
        patch_size = (patch_size, patch_size)
    height, width, channels = image_shape
    num_patches = (height // patch_size[0]) * (width // patch_size[1])
    patches = patch_size[0] * patch_size[1] * channels * d + d
    embeddings = patches + d + (num_patches + 1) * d  # + class token, positions
    blocks = num_layers * block_parameters(
        d, mlp_dim, num_heads, attention, shared_key_dim
    )
    final_norm = 2 * d
    head = 0 if num_classes is None else d * num_classes + num_classes
    return embeddings + blocks + final_norm + head


def transformer_parameters(
    vocabulary_size,
    num_encoder_layers,
    num_decoder_layers,
    num_heads,
    hidden_dim,
    intermediate_dim,
    max_sequence_length=1024,
    normalize_first=False,
    tie_output_embeddings=True,
    attention="concatenate",
    shared_key_dim=None,
    cross_attention=None,
    **unused,
):
    """The Transformer-NMT encoder-decoder (`TransformerNMTBackbone`): one
    token embedding for the joint vocabulary (source, target and, tied, the
    output)."""
    d = hidden_dim
    embeddings = vocabulary_size * d + 2 * max_sequence_length * d
    blocks = (num_encoder_layers + num_decoder_layers) * block_parameters(
        d, intermediate_dim, num_heads, attention, shared_key_dim
    )
    cross_attention = cross_attention or attention
    cross_key_dim = shared_key_dim if cross_attention == attention else None
    blocks += num_decoder_layers * (
        attention_parameters(d, num_heads, cross_attention, cross_key_dim)
        + 2 * d  # its layer norm
    )
    final_norms = 4 * d if normalize_first else 0
    output = 0 if tie_output_embeddings else d * vocabulary_size
    return embeddings + blocks + final_norms + output


# Family name -> (presets, closed-form counter).
_FAMILIES = {
    "transformer": (TRANSFORMER_ARCHITECTURES, transformer_parameters),
    "bert": (BERT_ARCHITECTURES, bert_parameters),
    "vit": (VIT_ARCHITECTURES, vit_parameters),
}


def count_parameters(family, architecture, **kwargs):
    """Closed-form parameter count of a named architecture.

    Args:
        family: `"transformer"`, `"bert"` or `"vit"`.
        architecture: An architecture name of that family (a key of
            `<Backbone>.architectures`).
        **kwargs: Constructor arguments overriding it (e.g. `attention`,
            `shared_key_dim`), and `num_classes` for a classifier head.

    Returns:
        The number of parameters `model.count_params()` reports.
    """
    if family not in _FAMILIES:
        raise ValueError(
            f"Argument `family` must be one of {sorted(_FAMILIES)}. "
            f"Received: family={family!r}"
        )
    architectures, counter = _FAMILIES[family]
    config = _architecture(architectures, architecture)
    config.update(kwargs)
    return counter(**config)


def _architecture(architectures, name):
    if name not in architectures:
        raise ValueError(
            f"Argument `architecture` must be one of {sorted(architectures)}. "
            f"Received: architecture={name!r}"
        )
    return dict(architectures[name])


def cache_bytes_per_token(
    architecture,
    attention="concatenate",
    shared_key_dim=None,
    bytes_per_number=4,
    **kwargs,
):
    """Decoder self-attention cache of a Transformer-NMT architecture, in bytes
    per target position (all decoder layers).

    Concatenated heads cache a key and a value per head: `2 d` numbers per
    layer (`K + d` at a reduced key size `K`). Collaborative heads cache the shared key, the content term and
    the values: `K + N + d` numbers per layer (`K + d` without biases).

    Args:
        architecture: A `TRANSFORMER_ARCHITECTURES` name.
        attention: `"concatenate"` or `"collaborative"`.
        shared_key_dim: Shared key width (`None`: `hidden_dim`).
        bytes_per_number: 4 for float32, 2 for (b)float16.
        **kwargs: Constructor arguments overriding the architecture.

    Returns:
        Bytes per generated token.
    """
    config = _architecture(TRANSFORMER_ARCHITECTURES, architecture)
    config.update(kwargs)
    d, heads = config["hidden_dim"], config["num_heads"]
    if attention == "concatenate":  # keys (k in all) and values
        numbers = (shared_key_dim or d) + d
    else:
        numbers = (shared_key_dim or d) + heads + d
    return config["num_decoder_layers"] * numbers * bytes_per_number
