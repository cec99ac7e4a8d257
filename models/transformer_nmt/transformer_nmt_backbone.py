"""The Transformer-NMT encoder-decoder backbone, with an attention switch."""

import keras
from keras import ops
from keras_hub.layers import PositionEmbedding

from collab_keras.argument_checks import check_integer
from collab_keras.argument_checks import check_rate

from ..attention_factory import serialize_attention
from ..input_checks import check_inputs
from ..presets import TRANSFORMER_ARCHITECTURES
from ..transformer_decoder_block import TransformerDecoderBlock
from ..transformer_encoder_block import TransformerEncoderBlock
from ..zoo_model import ZooBackbone

INPUT_NAMES = (
    "encoder_token_ids",
    "encoder_padding_mask",
    "decoder_token_ids",
    "decoder_padding_mask",
)


@keras.saving.register_keras_serializable(package="collab_keras")
class TransformerNMTBackbone(ZooBackbone):
    """Transformer encoder-decoder (Vaswani et al., 2017) for translation.

    The network of ["Attention Is All You Need"](https://arxiv.org/abs/1706.03762)
    with the attention switch of this project: `attention="collaborative"`
    makes every attention (encoder self, decoder self and cross) collaborative
    ([Cordonnier et al., 2020](https://arxiv.org/abs/2006.16362)), all heads
    sharing one query/key projection of width `shared_key_dim`.

    One token embedding serves the joint source+target vocabulary of
    `TransformerNMTTokenizer` (encoder and decoder share it, as in the paper);
    with `tie_output_embeddings=True` its transpose also computes the logits
    (`TransformerNMTSeq2SeqLM`). Positions are learned, as in BART. Inputs and
    outputs follow `keras_hub.models.BartBackbone`; there is no task head.

    Masking: `encoder_padding_mask` reaches the encoder self-attention and
    every cross-attention; `decoder_padding_mask` and a causal mask reach the
    decoder self-attention. Outputs at padded positions are meaningless.

    Calls check their inputs (names, ranks, each mask shaped as its ids,
    one batch size, lengths within the position tables) and, in eager calls,
    their values (integer ids in `[0, vocabulary_size)`): a `ValueError` or
    `TypeError` names the input. Inside compiled functions (`fit`,
    `predict`, `generate`) Keras has cast the inputs to int32 and values are
    not known: an out-of-range id there raises in TensorFlow's gather on CPU
    and reads zeros on GPU.

    Args:
        vocabulary_size: int. Size of the joint source+target vocabulary.
        num_encoder_layers: int. Number of encoder blocks.
        num_decoder_layers: int. Number of decoder blocks.
        num_heads: int. Attention heads per attention layer; must divide
            `hidden_dim`.
        hidden_dim: int. Model width.
        intermediate_dim: int. Feed-forward width.
        dropout: float. Dropout rate.
        max_sequence_length: int. Size of the two position tables: the
            longest source and target sequences.
        normalize_first: bool. Pre-norm blocks with final layer norms if
            `True`; post-norm (the original Transformer) if `False`.
        tie_output_embeddings: bool. Compute the logits with the transposed
            token embedding (`True`) or a separate `(hidden_dim,
            vocabulary_size)` matrix held by the same
            `keras.layers.ReversibleEmbedding`.
        attention: `"concatenate"` (`keras.layers.MultiHeadAttention`),
            `"collaborative"` (`collab_keras.layers.CollaborativeAttention`)
            or a layer factory (see `collab_keras.models.make_attention`).
        shared_key_dim: int or `None`. Total query/key width (`None`:
            `hidden_dim`): the shared width of collaborative heads, or with
            `"concatenate"` the summed width of the heads (`shared_key_dim //
            num_heads` each, values unchanged: the reduced-key baseline; a
            multiple of `num_heads`).
        cross_attention: `None` (cross-attention follows `attention`) or an
            attention of its own, e.g. `"concatenate"` to keep ordinary heads
            there while the self-attentions are collaborative.
        attention_kwargs: dict or `None`. Extra keyword arguments of every
            attention layer built by `attention`.
        dtype: string or `keras.DTypePolicy`. Dtype policy of the model.
        **kwargs: `name` and `trainable`; anything else raises.

    Inputs (a dict):
        encoder_token_ids: int `(batch, source length)`.
        encoder_padding_mask: `(batch, source length)`, 1 on real tokens.
        decoder_token_ids: int `(batch, target length)`.
        decoder_padding_mask: `(batch, target length)`, 1 on real tokens.

    Outputs (a dict):
        encoder_sequence_output: `(batch, source length, hidden_dim)`.
        decoder_sequence_output: `(batch, target length, hidden_dim)`.

    Example:

    ```python
    backbone = TransformerNMTBackbone.from_architecture(
        "transformer_tiny", attention="collaborative", shared_key_dim=32
    )
    outputs = backbone({
        "encoder_token_ids": np.array([[1, 5, 6, 2, 0]]),
        "encoder_padding_mask": np.array([[1, 1, 1, 1, 0]]),
        "decoder_token_ids": np.array([[1, 7, 8]]),
        "decoder_padding_mask": np.array([[1, 1, 1]]),
    })
    outputs["decoder_sequence_output"].shape  # (1, 3, 64)
    ```
    """

    # Size-only configurations (random weights, for training from scratch):
    # `transformer_tiny`, `transformer_base`, `transformer_big`.
    architectures = TRANSFORMER_ARCHITECTURES
    calibration_preprocessor = "TransformerNMTSeq2SeqLMPreprocessor"

    def __init__(
        self,
        vocabulary_size,
        num_encoder_layers,
        num_decoder_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=1024,
        normalize_first=False,
        tie_output_embeddings=True,
        attention="concatenate",
        shared_key_dim=None,
        cross_attention=None,
        attention_kwargs=None,
        dtype=None,
        **kwargs,
    ):
        vocabulary_size = check_integer("vocabulary_size", vocabulary_size)
        num_encoder_layers = check_integer(
            "num_encoder_layers", num_encoder_layers
        )
        num_decoder_layers = check_integer(
            "num_decoder_layers", num_decoder_layers
        )
        num_heads = check_integer("num_heads", num_heads)
        hidden_dim = check_integer("hidden_dim", hidden_dim)
        intermediate_dim = check_integer("intermediate_dim", intermediate_dim)
        dropout = check_rate("dropout", dropout)
        max_sequence_length = check_integer(
            "max_sequence_length", max_sequence_length
        )
        attention, shared_key_dim, attention_kwargs = self._init_switch(
            attention, shared_key_dim, attention_kwargs
        )
        if hidden_dim % num_heads:
            raise ValueError(
                "`hidden_dim` must be divisible by `num_heads`. Received: "
                f"hidden_dim={hidden_dim}, num_heads={num_heads}"
            )

        # === Layers ===
        initializer = keras.initializers.RandomNormal(stddev=0.02)
        self.token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=tie_output_embeddings,
            embeddings_initializer=initializer,
            dtype=dtype,
            name="token_embedding",
        )
        self.encoder_position_embedding = PositionEmbedding(
            max_sequence_length,
            initializer=initializer,
            dtype=dtype,
            name="encoder_position_embedding",
        )
        self.decoder_position_embedding = PositionEmbedding(
            max_sequence_length,
            initializer=initializer,
            dtype=dtype,
            name="decoder_position_embedding",
        )
        self.encoder_embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="encoder_embeddings_dropout"
        )
        self.decoder_embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="decoder_embeddings_dropout"
        )
        block_kwargs = dict(
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            attention=attention,
            shared_key_dim=shared_key_dim,
            dropout=dropout,
            activation="relu",
            normalize_first=normalize_first,
            attention_kwargs=attention_kwargs,
            dtype=dtype,
        )
        self.encoder_transformer_layers = [
            TransformerEncoderBlock(
                name=f"transformer_encoder_layer_{i}", **block_kwargs
            )
            for i in range(num_encoder_layers)
        ]
        self.decoder_transformer_layers = [
            TransformerDecoderBlock(
                cross_attention=cross_attention,
                name=f"transformer_decoder_layer_{i}",
                **block_kwargs,
            )
            for i in range(num_decoder_layers)
        ]
        self.encoder_layer_norm = self.decoder_layer_norm = None
        if normalize_first:
            self.encoder_layer_norm = keras.layers.LayerNormalization(
                epsilon=1e-5, dtype=dtype, name="encoder_layer_norm"
            )
            self.decoder_layer_norm = keras.layers.LayerNormalization(
                epsilon=1e-5, dtype=dtype, name="decoder_layer_norm"
            )

        # === Functional Model ===
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in INPUT_NAMES
        }
        encoder_output = self.call_encoder(
            inputs["encoder_token_ids"], inputs["encoder_padding_mask"]
        )
        x = self._embed_decoder(inputs["decoder_token_ids"])
        for layer in self.decoder_transformer_layers:
            x = layer(
                x,
                encoder_output,
                decoder_padding_mask=inputs["decoder_padding_mask"],
                encoder_padding_mask=inputs["encoder_padding_mask"],
            )
        decoder_output = self._normalize_decoder_output(x)
        super().__init__(
            inputs=inputs,
            outputs={
                "encoder_sequence_output": encoder_output,
                "decoder_sequence_output": decoder_output,
            },
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.normalize_first = normalize_first
        self.tie_output_embeddings = tie_output_embeddings
        self.attention = attention
        self.shared_key_dim = shared_key_dim
        self.cross_attention = self.decoder_transformer_layers[0].cross_attention
        self.attention_kwargs = attention_kwargs

    # --- The pieces shared by the functional graph and cached decoding. ---

    def call_encoder(self, token_ids, padding_mask, training=None):
        """The encoder output `(batch, source length, hidden_dim)`."""
        x = self.token_embedding(token_ids)  # (batch, source length, hidden)
        x = x + self.encoder_position_embedding(x)
        x = self.encoder_embeddings_dropout(x, training=training)
        for layer in self.encoder_transformer_layers:
            x = layer(x, padding_mask=padding_mask, training=training)
        if self.encoder_layer_norm is not None:
            x = self.encoder_layer_norm(x)
        return x

    def _embed_decoder(self, token_ids, start_index=0, training=None):
        x = self.token_embedding(token_ids)  # (batch, target length, hidden)
        x = x + self.decoder_position_embedding(x, start_index=start_index)
        return self.decoder_embeddings_dropout(x, training=training)

    def _normalize_decoder_output(self, x):
        if self.decoder_layer_norm is not None:
            x = self.decoder_layer_norm(x)
        return x

    def initialize_decoder_cache(self, encoder_output, decoder_length):
        """An empty self-attention cache and a filled cross-attention cache.

        Args:
            encoder_output: `(batch, source length, hidden_dim)`, from
                `call_encoder`.
            decoder_length: Number of target positions the cache holds.

        Returns:
            `(self_attention_caches, cross_attention_caches)`: one entry per
            decoder layer. Concatenated heads hold `(batch, 2, length,
            num_heads, head_dim)` keys and values; collaborative heads a dict
            of the shared key `(batch, length, shared_key_dim)`, the content
            term `(batch, length, num_heads)` and the values `(batch, length,
            num_heads, head_dim)` (see `CachedCollaborativeAttention`).
        """
        batch_size = ops.shape(encoder_output)[0]
        self_caches = [
            layer.initial_self_attention_cache(batch_size, decoder_length)
            for layer in self.decoder_transformer_layers
        ]
        cross_caches = [
            layer.compute_cross_attention_cache(encoder_output)
            for layer in self.decoder_transformer_layers
        ]
        return self_caches, cross_caches

    def call_decoder_with_cache(
        self,
        decoder_token_ids,
        encoder_padding_mask,
        self_attention_cache,
        self_attention_cache_update_index,
        cross_attention_cache,
    ):
        """Decoder outputs of new target positions, with the updated cache.

        Args:
            decoder_token_ids: int `(batch, T)`: the tokens at positions
                `self_attention_cache_update_index ... + T - 1`.
            encoder_padding_mask: `(batch, source length)`.
            self_attention_cache: per-layer self-attention caches.
            self_attention_cache_update_index: position of the first token.
            cross_attention_cache: per-layer cross-attention caches.

        Returns:
            `(decoder_sequence_output (batch, T, hidden_dim),
            self_attention_cache)`.
        """
        x = self._embed_decoder(
            decoder_token_ids, start_index=self_attention_cache_update_index
        )
        next_caches = []
        for layer, self_cache, cross_cache in zip(
            self.decoder_transformer_layers,
            self_attention_cache,
            cross_attention_cache,
        ):
            x, self_cache, _ = layer(
                x,
                encoder_padding_mask=encoder_padding_mask,
                self_attention_cache=self_cache,
                self_attention_cache_update_index=(
                    self_attention_cache_update_index
                ),
                cross_attention_cache=cross_cache,
            )
            next_caches.append(self_cache)
        return self._normalize_decoder_output(x), next_caches

    # --- Keras plumbing. ---

    def call(self, inputs, training=None, mask=None):
        self._check_inputs(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _check_inputs(self, inputs):
        """Names, ranks, lengths and (eager) id ranges of the inputs."""
        ids = ("int", self.vocabulary_size, "vocabulary_size")
        length = (self.max_sequence_length, "max_sequence_length")
        if not isinstance(inputs, dict):
            raise ValueError(
                f"Inputs must be a dict with keys {list(INPUT_NAMES)}. "
                f"Received: inputs of type {type(inputs).__name__}"
            )
        unknown = sorted(set(inputs) - set(INPUT_NAMES))
        if unknown:
            raise ValueError(
                f"Unknown inputs {unknown}; expected keys "
                f"{list(INPUT_NAMES)}. Received: keys {sorted(inputs)}"
            )
        for part in ("encoder", "decoder"):  # each pair shares its length
            check_inputs(
                inputs,
                {
                    f"{part}_token_ids": (ids, 2, length),
                    f"{part}_padding_mask": ("mask", 2, length),
                },
            )
        encoder_batch = inputs["encoder_token_ids"].shape[0]
        decoder_batch = inputs["decoder_token_ids"].shape[0]
        if None not in (encoder_batch, decoder_batch) and (
            encoder_batch != decoder_batch
        ):
            raise ValueError(
                "The encoder and decoder inputs must have one batch size. "
                "Received: encoder_token_ids.shape="
                f"{tuple(inputs['encoder_token_ids'].shape)}, "
                "decoder_token_ids.shape="
                f"{tuple(inputs['decoder_token_ids'].shape)}"
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_encoder_layers": self.num_encoder_layers,
                "num_decoder_layers": self.num_decoder_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "max_sequence_length": self.max_sequence_length,
                "normalize_first": self.normalize_first,
                "tie_output_embeddings": self.tie_output_embeddings,
                **self._switch_config(),
                "cross_attention": serialize_attention(self.cross_attention),
            }
        )
        return config
