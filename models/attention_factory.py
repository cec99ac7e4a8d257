"""The attention switch: one argument turns concatenated heads collaborative.

`attention="concatenate"` builds `keras.layers.MultiHeadAttention` (exactly the
layer keras-hub's blocks use, so keras-hub weights load unchanged);
`attention="collaborative"` builds `collab_keras.layers.CollaborativeAttention`
with a shared query/key of width `shared_key_dim`. In decoders the cached
variants are built: `keras_hub.layers.CachedMultiHeadAttention` and
`collab_keras.layers.CachedCollaborativeAttention`.

`attention="concatenate", shared_key_dim=D` is the paper's concatenated
baseline at a reduced key size: concatenated heads whose query and key
projections have `D` dimensions in total, `D // num_heads` per head (`D` must
be a multiple of `num_heads`), while the values keep `key_dim` per head:
`ConcatenatedAttention(key_dim=D // num_heads, value_dim=key_dim)` (a
`keras.layers.MultiHeadAttention` that runs with two head sizes on JAX too),
and in decoders `CachedConcatenatedAttention` (keras-hub's cached layer stacks
keys with values, so it needs them of one size). `shared_key_dim=None` is the
full size, `num_heads * key_dim`, and builds the keras-hub layers above.

`attention` may also be a callable (a layer factory) taking the keyword
arguments `num_heads, key_dim, shared_key_dim, dropout, cached,
kernel_initializer, bias_initializer, dtype, name` (plus any
`attention_kwargs`) and returning a layer with the call signature of
`keras.layers.MultiHeadAttention` (and, when `cached`, of
`keras_hub.layers.CachedMultiHeadAttention`). Register it with
`keras.saving.register_keras_serializable` so that models using it save.
"""

import keras
from keras_hub.layers import CachedMultiHeadAttention

from collab_keras.argument_checks import check_integer
from collab_keras.layers import CachedCollaborativeAttention
from collab_keras.layers import CollaborativeAttention

from .cached_concatenated_attention import CachedConcatenatedAttention
from .concatenated_attention import ConcatenatedAttention

ATTENTIONS = ("concatenate", "collaborative")


def check_attention(attention, shared_key_dim=None, num_heads=None):
    """Validates the attention switch; returns `attention` (deserialized).

    Args:
        attention: `"concatenate"`, `"collaborative"` or a layer factory
            (or its serialized form).
        shared_key_dim: Total query/key width (shared width of
            collaborative heads, summed width of concatenated ones), `None`
            for the default.
        num_heads: Optional number of heads, to check that a concatenated
            `shared_key_dim` splits evenly across them.

    Raises:
        ValueError: on an unknown name, a `shared_key_dim` that is not a
            positive integer, or (with `attention="concatenate"` and
            `num_heads` given) one that is not a multiple of `num_heads`.
    """
    if isinstance(attention, dict):
        attention = keras.saving.deserialize_keras_object(attention)
    if isinstance(attention, str):
        valid = attention in ATTENTIONS
    else:
        valid = callable(attention)
    if not valid:
        raise ValueError(
            "Argument `attention` must be one of "
            f"{ATTENTIONS} or a layer factory. "
            f"Received: attention={attention!r}"
        )
    shared_key_dim = check_integer("shared_key_dim", shared_key_dim, allow_none=True)
    if (
        attention == "concatenate"
        and shared_key_dim is not None
        and num_heads is not None
        and shared_key_dim % num_heads
    ):
        raise ValueError(
            "With attention='concatenate', `shared_key_dim` (the total "
            "query/key size of the concatenated heads) must be a multiple of "
            f"`num_heads`. Received: shared_key_dim={shared_key_dim}, "
            f"num_heads={num_heads}"
        )
    return attention


def check_attention_kwargs(attention_kwargs):
    """Validates `attention_kwargs`: `None` or a dict; returns a dict copy
    (or `None`)."""
    if attention_kwargs is None:
        return None
    if not isinstance(attention_kwargs, dict):
        raise TypeError(
            "Argument `attention_kwargs` must be a dict or None. "
            f"Received: attention_kwargs={attention_kwargs!r}"
        )
    return dict(attention_kwargs)


def serialize_attention(attention):
    """The `get_config` form of the attention switch (`None` stays `None`)."""
    if isinstance(attention, str):
        return attention
    return keras.saving.serialize_keras_object(attention)


def make_attention(
    attention,
    num_heads,
    key_dim,
    shared_key_dim=None,
    dropout=0.0,
    cached=False,
    kernel_initializer="glorot_uniform",
    bias_initializer="zeros",
    attention_kwargs=None,
    dtype=None,
    name=None,
):
    """Builds one attention layer.

    Args:
        attention: `"concatenate"`, `"collaborative"` or a layer factory.
        num_heads: Number of heads.
        key_dim: Per-head query/key size (sets the score scale).
        shared_key_dim: Total query/key width: the shared width of
            collaborative heads, or the summed width of concatenated heads
            (`shared_key_dim // num_heads` each; values keep `key_dim`);
            `None` means `num_heads * key_dim`.
        dropout: Dropout on the attention weights.
        cached: Whether to build the variant with a decoding cache.
        kernel_initializer: Initializer of the projection kernels.
        bias_initializer: Initializer of the biases.
        attention_kwargs: Extra keyword arguments for the layer (e.g.
            `{"mixing_initializer": "random_normal"}`).
        dtype: Layer dtype policy.
        name: Layer name.

    Returns:
        A Keras layer with the call signature of
        `keras.layers.MultiHeadAttention`.

    Example:

    ```python
    layer = make_attention("collaborative", num_heads=8, key_dim=64,
                           shared_key_dim=128)
    # Concatenated heads of 16 query/key and 64 value dimensions each:
    baseline = make_attention("concatenate", num_heads=8, key_dim=64,
                              shared_key_dim=128)
    ```
    """
    attention = check_attention(attention, shared_key_dim, num_heads)
    kwargs = dict(
        num_heads=num_heads,
        key_dim=key_dim,
        dropout=dropout,
        kernel_initializer=clone_initializer(kernel_initializer),
        bias_initializer=clone_initializer(bias_initializer),
        dtype=dtype,
        name=name,
        **(attention_kwargs or {}),
    )
    if attention == "concatenate":
        if shared_key_dim is None:  # keras-hub's layers: its weights load
            layer_class = (
                CachedMultiHeadAttention if cached else keras.layers.MultiHeadAttention
            )
            return layer_class(**kwargs)
        # Reduced key size: (B, T, N, D / N) queries and keys, (B, S, N, key_dim) values.
        kwargs.update(key_dim=int(shared_key_dim) // num_heads, value_dim=key_dim)
        layer_class = (
            CachedConcatenatedAttention if cached else ConcatenatedAttention
        )
        return layer_class(**kwargs)
    if attention == "collaborative":
        layer_class = (
            CachedCollaborativeAttention if cached else CollaborativeAttention
        )
        if shared_key_dim is not None:
            shared_key_dim = int(shared_key_dim)
        return layer_class(shared_key_dim=shared_key_dim, **kwargs)
    return attention(shared_key_dim=shared_key_dim, cached=cached, **kwargs)


def clone_initializer(initializer):
    """A fresh initializer (from an identifier or an initializer), so that
    layers do not draw the same values (as MultiHeadAttention clones its
    own; keras-hub's `clone_initializer` is private)."""
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())
