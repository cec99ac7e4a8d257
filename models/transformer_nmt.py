"""Transformer encoder-decoder for translation, with an attention switch."""

import keras
from keras import ops
from keras_hub.layers import PositionEmbedding

from .attention_factory import check_attention
from .attention_factory import serialize_attention
from .generation import generate
from .input_checks import check_inputs
from .presets import TRANSFORMER_PRESETS
from .transformer_decoder_block import TransformerDecoderBlock
from .transformer_encoder_block import TransformerEncoderBlock
from .zoo_model import ZooModel


@keras.saving.register_keras_serializable(package="collab_keras")
class TransformerNMT(ZooModel):
    """Transformer encoder-decoder (Vaswani et al., 2017) for translation.

    Token embeddings plus learned positions, `num_encoder_layers`
    `TransformerEncoderBlock`s, `num_decoder_layers` `TransformerDecoderBlock`s
    (causal self-attention, cross-attention) and logits over the target
    vocabulary. `attention="collaborative"` makes every attention (encoder
    self, decoder self, cross) collaborative with shared query/key width
    `shared_key_dim`.

    The logits are float32 and unnormalized: train with e.g.
    `keras.losses.CategoricalCrossentropy(from_logits=True,
    label_smoothing=0.1)` on one-hot targets, masking padded target
    positions with `sample_weight`.

    Decoding: `generate()` runs greedy or beam search with keras-hub's
    samplers and an incremental cache (see `TransformerDecoderBlock`);
    collaborative self-attention caches one shared key per position.

    Masking: `encoder_padding_mask` reaches the encoder self-attention and
    every cross-attention; `decoder_padding_mask` and a causal mask reach the
    decoder self-attention.

    Args:
        vocabulary_size: Target vocabulary size.
        num_encoder_layers: Number of encoder blocks.
        num_decoder_layers: Number of decoder blocks.
        num_heads: Attention heads per attention layer.
        hidden_dim: Model width.
        intermediate_dim: Feed-forward width.
        source_vocabulary_size: Source vocabulary size; defaults to
            `vocabulary_size`.
        dropout: Dropout rate.
        max_sequence_length: Size of both position tables.
        normalize_first: Pre-norm blocks (with final layer norms) if `True`,
            post-norm (the original Transformer) if `False`.
        share_embeddings: One token embedding for source and target (needs
            one vocabulary).
        tie_output_embeddings: Compute the logits with the transposed target
            token embedding instead of a separate projection.
        attention: `"concatenate"`, `"collaborative"` or a layer factory.
        shared_key_dim: Shared query/key width of collaborative attention
            (`None`: `hidden_dim`). Must be `None` for `"concatenate"`.
        cross_attention: `None` (cross-attention follows `attention`) or
            `"concatenate"` to keep ordinary heads in the cross-attention
            while the self-attentions are collaborative.
        attention_kwargs: Extra keyword arguments for the attention layers.
        dtype: Dtype policy of the model.
        **kwargs: `keras.Model` keyword arguments (`name`, `trainable`).

    Inputs (a dict):
        encoder_token_ids: int `(batch, source length)`.
        encoder_padding_mask: `(batch, source length)`, 1 on real tokens.
        decoder_token_ids: int `(batch, target length)` (shifted right).
        decoder_padding_mask: `(batch, target length)`, 1 on real tokens.

    Outputs (a dict):
        logits: float32 `(batch, target length, vocabulary_size)`.

    Example:

    ```python
    model = TransformerNMT.from_preset("transformer_tiny",
                                       attention="collaborative",
                                       shared_key_dim=32)
    source = np.array([[5, 6, 7, 8, 0, 0]], "int32")
    tokens = model.generate(source, source != 0, max_length=10,
                            start_token_id=1, end_token_id=2)
    ```
    """

    presets = TRANSFORMER_PRESETS

    def __init__(
        self,
        vocabulary_size,
        num_encoder_layers,
        num_decoder_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        source_vocabulary_size=None,
        dropout=0.1,
        max_sequence_length=1024,
        normalize_first=False,
        share_embeddings=False,
        tie_output_embeddings=True,
        attention="concatenate",
        shared_key_dim=None,
        cross_attention=None,
        attention_kwargs=None,
        dtype=None,
        **kwargs,
    ):
        attention = check_attention(attention, shared_key_dim)
        if cross_attention is not None:
            cross_attention = check_attention(cross_attention)
        source_vocabulary_size = source_vocabulary_size or vocabulary_size
        if share_embeddings and source_vocabulary_size != vocabulary_size:
            raise ValueError(
                "Argument `share_embeddings=True` needs one vocabulary. "
                f"Received: source_vocabulary_size={source_vocabulary_size}, "
                f"vocabulary_size={vocabulary_size}"
            )

        # === Layers ===
        initializer = keras.initializers.RandomNormal(stddev=0.02)
        self.decoder_token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=True,
            embeddings_initializer=initializer,
            dtype=dtype,
            name="decoder_token_embedding",
        )
        if share_embeddings:
            self.encoder_token_embedding = self.decoder_token_embedding
        else:
            self.encoder_token_embedding = keras.layers.Embedding(
                source_vocabulary_size,
                hidden_dim,
                embeddings_initializer=initializer,
                dtype=dtype,
                name="encoder_token_embedding",
            )
        self.encoder_position_embedding = PositionEmbedding(
            max_sequence_length, dtype=dtype, name="encoder_position_embedding"
        )
        self.decoder_position_embedding = PositionEmbedding(
            max_sequence_length, dtype=dtype, name="decoder_position_embedding"
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
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
        self.encoder_layers = [
            TransformerEncoderBlock(name=f"encoder_layer_{i}", **block_kwargs)
            for i in range(num_encoder_layers)
        ]
        self.decoder_layers = [
            TransformerDecoderBlock(
                name=f"decoder_layer_{i}",
                cross_attention=cross_attention,
                **block_kwargs,
            )
            for i in range(num_decoder_layers)
        ]
        self.encoder_layer_norm = self.decoder_layer_norm = None
        if normalize_first:
            self.encoder_layer_norm = keras.layers.LayerNormalization(
                dtype=dtype, name="encoder_layer_norm"
            )
            self.decoder_layer_norm = keras.layers.LayerNormalization(
                dtype=dtype, name="decoder_layer_norm"
            )
        self.output_projection = None
        if not tie_output_embeddings:
            self.output_projection = keras.layers.Dense(
                vocabulary_size, dtype=dtype, name="output_projection"
            )

        # === Functional model ===
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in (
                "encoder_token_ids",
                "encoder_padding_mask",
                "decoder_token_ids",
                "decoder_padding_mask",
            )
        }
        # Layers are built here, so the config below is set after.
        encoder_output = self._encode(
            inputs["encoder_token_ids"], inputs["encoder_padding_mask"]
        )
        x = self._embed(
            self.decoder_token_embedding,
            self.decoder_position_embedding,
            inputs["decoder_token_ids"],
        )
        for block in self.decoder_layers:
            x = block(
                x,
                encoder_output,
                decoder_padding_mask=inputs["decoder_padding_mask"],
                encoder_padding_mask=inputs["encoder_padding_mask"],
            )
        logits = self._logits(x)
        super().__init__(
            inputs=inputs, outputs={"logits": logits}, dtype=dtype, **kwargs
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.source_vocabulary_size = source_vocabulary_size
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.normalize_first = normalize_first
        self.share_embeddings = share_embeddings
        self.tie_output_embeddings = tie_output_embeddings
        self.attention = attention
        self.shared_key_dim = shared_key_dim
        self.cross_attention = cross_attention
        self.attention_kwargs = attention_kwargs

    # --- Pieces shared by the functional graph and cached decoding. ---

    def _embed(self, token_embedding, position_embedding, token_ids, index=0):
        x = token_embedding(token_ids)  # (batch, length, hidden)
        x = x + position_embedding(x, start_index=index)
        return self.embeddings_dropout(x)

    def _encode(self, token_ids, padding_mask, training=None):
        x = self._embed(
            self.encoder_token_embedding,
            self.encoder_position_embedding,
            token_ids,
        )
        for block in self.encoder_layers:
            x = block(x, padding_mask=padding_mask, training=training)
        if self.encoder_layer_norm is not None:
            x = self.encoder_layer_norm(x)
        return x  # (batch, source length, hidden)

    def _logits(self, x):
        if self.decoder_layer_norm is not None:
            x = self.decoder_layer_norm(x)
        if self.output_projection is not None:
            logits = self.output_projection(x)
        else:
            logits = self.decoder_token_embedding(x, reverse=True)
        return ops.cast(logits, "float32")  # (batch, length, vocabulary)

    # --- Incremental decoding. ---

    def encode(self, encoder_token_ids, encoder_padding_mask=None):
        """Encoder output `(batch, source length, hidden_dim)`."""
        encoder_token_ids = ops.convert_to_tensor(encoder_token_ids)
        if encoder_padding_mask is None:
            encoder_padding_mask = ops.ones_like(encoder_token_ids)
        encoder_padding_mask = ops.convert_to_tensor(encoder_padding_mask)
        check_inputs(
            {"encoder_token_ids": encoder_token_ids,
             "encoder_padding_mask": encoder_padding_mask},
            self._input_specs()[0],
        )
        return self._encode(encoder_token_ids, encoder_padding_mask)

    def build_cache(self, encoder_token_ids, encoder_padding_mask, max_length):
        """Decoding cache for `max_length` target positions.

        Runs the encoder once and projects its output into every layer's
        cross-attention keys and values once.

        Returns:
            dict: `"self"` (one zero self-attention cache per decoder layer),
            `"cross"` (one cross-attention cache per layer),
            `"encoder_padding_mask"` `(batch, source length)`. Every leaf has
            the batch first, as keras-hub's beam sampler needs.
        """
        if encoder_padding_mask is None:
            encoder_padding_mask = ops.ones_like(encoder_token_ids)
        encoder_padding_mask = ops.cast(encoder_padding_mask, "int32")
        encoder_output = self.encode(encoder_token_ids, encoder_padding_mask)
        batch_size = ops.shape(encoder_output)[0]
        return {
            "self": [
                block.initial_self_attention_cache(batch_size, max_length)
                for block in self.decoder_layers
            ],
            "cross": [
                block.compute_cross_attention_cache(encoder_output)
                for block in self.decoder_layers
            ],
            "encoder_padding_mask": encoder_padding_mask,
        }

    def call_with_cache(self, decoder_token_ids, cache, cache_update_index):
        """Logits of the new target positions, and the updated cache.

        Args:
            decoder_token_ids: int `(batch, T)`, the tokens at positions
                `cache_update_index .. cache_update_index + T - 1`.
            cache: from `build_cache` (or a previous call).
            cache_update_index: position of the first new token.

        Returns:
            `(logits (batch, T, vocabulary_size), cache)`.
        """
        x = self._embed(
            self.decoder_token_embedding,
            self.decoder_position_embedding,
            decoder_token_ids,
            index=cache_update_index,
        )
        self_caches, cross_caches = [], []
        for block, self_cache, cross_cache in zip(
            self.decoder_layers, cache["self"], cache["cross"]
        ):
            x, self_cache, cross_cache = block(
                x,
                encoder_padding_mask=cache["encoder_padding_mask"],
                self_attention_cache=self_cache,
                self_attention_cache_update_index=cache_update_index,
                cross_attention_cache=cross_cache,
            )
            self_caches.append(self_cache)
            cross_caches.append(cross_cache)
        cache = {
            "self": self_caches,
            "cross": cross_caches,
            "encoder_padding_mask": cache["encoder_padding_mask"],
        }
        return self._logits(x), cache

    def generate(
        self,
        encoder_token_ids,
        encoder_padding_mask=None,
        max_length=None,
        start_token_id=1,
        end_token_id=2,
        pad_token_id=0,
        sampler="greedy",
        num_beams=4,
    ):
        """Translates: greedy or beam search with an incremental cache.

        Args:
            encoder_token_ids: int `(batch, source length)`.
            encoder_padding_mask: `(batch, source length)`; defaults to all
                ones.
            max_length: Target length including the start token; defaults to
                `max_sequence_length`.
            start_token_id: First decoder token.
            end_token_id: Generation stops once every sequence emitted it;
                `None` never stops early.
            pad_token_id: Written after each sequence's end token.
            sampler: `"greedy"`, `"beam"` or a `keras_hub.samplers.Sampler`.
            num_beams: Beams of `sampler="beam"`.

        Returns:
            int32 `(batch, max_length)`: the start token, then the
            generated tokens, padded after the end token.
        """
        return generate(
            self,
            encoder_token_ids,
            encoder_padding_mask,
            max_length=max_length or self.max_sequence_length,
            start_token_id=start_token_id,
            end_token_id=end_token_id,
            pad_token_id=pad_token_id,
            sampler=sampler,
            num_beams=num_beams,
        )

    def cache_bytes_per_token(self):
        """Bytes of decoder self-attention cache per target position (all
        layers), and of cross-attention cache per source position."""
        itemsize = keras.backend.standardize_dtype(self.compute_dtype)
        itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}.get(itemsize, 4)
        total = {"self": 0, "cross": 0}
        for block in self.decoder_layers:
            for kind in total:
                layer = getattr(block, f"{kind}_attention_layer")
                if hasattr(layer, "cache_size_per_position"):
                    numbers = layer.cache_size_per_position()
                else:  # keys and values per head
                    numbers = 2 * layer.num_heads * layer.key_dim
                total[kind] += numbers * itemsize
        return total

    # --- Keras plumbing. ---

    def _input_specs(self):
        length = (self.max_sequence_length, "max_sequence_length")
        encoder = {
            "encoder_token_ids": ("int", 2, length),
            "encoder_padding_mask": ("mask", 2, length),
        }
        decoder = {
            "decoder_token_ids": ("int", 2, length),
            "decoder_padding_mask": ("mask", 2, length),
        }
        return encoder, decoder

    def call(self, inputs, training=None, mask=None):
        encoder, decoder = self._input_specs()
        check_inputs(inputs, {**encoder, **decoder})
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {
            **self._base_config(),
            "vocabulary_size": self.vocabulary_size,
            "num_encoder_layers": self.num_encoder_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "source_vocabulary_size": self.source_vocabulary_size,
            "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "normalize_first": self.normalize_first,
            "share_embeddings": self.share_embeddings,
            "tie_output_embeddings": self.tie_output_embeddings,
            "attention": serialize_attention(self.attention),
            "shared_key_dim": self.shared_key_dim,
            "cross_attention": serialize_attention(self.cross_attention),
            "attention_kwargs": self.attention_kwargs,
        }
