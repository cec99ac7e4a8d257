"""BERT-style encoder backbone with an attention switch."""

import keras
import keras_hub
import numpy as np
from keras import ops
from keras_hub.layers import PositionEmbedding

from collab_keras.argument_checks import check_integer
from collab_keras.argument_checks import check_rate

from ..input_checks import check_inputs
from ..keras_hub_weights import copy_bert_weights
from ..one_hot_embedding import OneHotEmbedding
from ..presets import BERT_ARCHITECTURES
from ..transformer_encoder_block import TransformerEncoderBlock
from ..zoo_model import ZooBackbone


@keras.saving.register_keras_serializable(package="collab_keras")
class BertBackbone(ZooBackbone):
    """BERT encoder (Devlin et al., 2019) with concatenated or collaborative
    heads.

    Token, segment and learned position embeddings, a stack of post-norm
    `TransformerEncoderBlock`s and a tanh pooler on the first token: the
    architecture, layer names and outputs of `keras_hub.models.BertBackbone`
    (so keras-hub's BERT and MiniLM checkpoints load, see `from_preset`),
    with the attention switch: `attention="collaborative"` builds every
    self-attention as `CollaborativeAttention` with shared query/key width
    `shared_key_dim` (Cordonnier et al., 2020).

    Masking: `padding_mask` (1 on real tokens) reaches every attention
    layer; padded keys get no attention weight, so padding does not change
    the outputs at unpadded positions. With length 0 the outputs are empty
    and `pooled_output` is the pooler applied to zeros.

    Args:
        vocabulary_size: Token vocabulary size.
        num_layers: Number of encoder blocks.
        num_heads: Attention heads per block.
        hidden_dim: Model width.
        intermediate_dim: Feed-forward width.
        dropout: Dropout rate (embeddings, attention, blocks).
        max_sequence_length: Size of the position table.
        num_segments: Number of segment (token type) ids.
        attention: `"concatenate"` (`keras.layers.MultiHeadAttention`),
            `"collaborative"` (`collab_keras.layers.CollaborativeAttention`)
            or a registered layer factory (see `attention_factory`).
        shared_key_dim: Total query/key width (`None`: `hidden_dim`): the
            shared width of collaborative heads, or with `"concatenate"` the
            summed width of the heads (`shared_key_dim // num_heads` each,
            values unchanged; a multiple of `num_heads`).
        attention_kwargs: Extra keyword arguments for the attention layers.
        dtype: Dtype policy of the model.
        **kwargs: `keras.Model` keyword arguments (`name`, `trainable`);
            unknown names raise.

    Inputs (a dict):
        token_ids: int `(batch, length)`, ids in `[0, vocabulary_size)`,
            `length <= max_sequence_length`.
        segment_ids: int `(batch, length)`, ids in `[0, num_segments)`.
        padding_mask: `(batch, length)`, 1 on real tokens, 0 on padding.

    Ids are checked in eager calls; inside compiled graphs they are not
    (see docs/models.md).

    Outputs (a dict):
        sequence_output: `(batch, length, hidden_dim)`.
        pooled_output: `(batch, hidden_dim)`.

    Example:

    ```python
    backbone = BertBackbone.from_architecture(
        "bert_tiny", attention="collaborative", shared_key_dim=64
    )
    outputs = backbone({
        "token_ids": np.ones((2, 12), "int32"),
        "segment_ids": np.zeros((2, 12), "int32"),
        "padding_mask": np.ones((2, 12), "int32"),
    })
    outputs["pooled_output"].shape  # (2, 128)
    ```
    """

    architectures = BERT_ARCHITECTURES
    keras_hub_backbone_cls = keras_hub.models.BertBackbone
    calibration_preprocessor = "BertTextClassifierPreprocessor"

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        attention="concatenate",
        shared_key_dim=None,
        attention_kwargs=None,
        dtype=None,
        **kwargs,
    ):
        vocabulary_size = check_integer("vocabulary_size", vocabulary_size)
        num_layers = check_integer("num_layers", num_layers)
        num_heads = check_integer("num_heads", num_heads)
        hidden_dim = check_integer("hidden_dim", hidden_dim)
        intermediate_dim = check_integer("intermediate_dim", intermediate_dim)
        dropout = check_rate("dropout", dropout)
        max_sequence_length = check_integer(
            "max_sequence_length", max_sequence_length
        )
        num_segments = check_integer("num_segments", num_segments)
        attention, shared_key_dim, attention_kwargs = self._init_switch(
            attention, shared_key_dim, attention_kwargs
        )

        # === Layers ===
        initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=initializer,
            dtype=dtype,
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(
            sequence_length=max_sequence_length,
            initializer=initializer,
            dtype=dtype,
            name="position_embedding",
        )
        # A one-hot product, not a lookup: its gradient is a float32-accumulated
        # matmul instead of a bfloat16 scatter of every token into one row.
        self.segment_embedding = OneHotEmbedding(
            num_segments,
            hidden_dim,
            embeddings_initializer=initializer,
            dtype=dtype,
            name="segment_embedding",
        )
        self.embeddings_add = keras.layers.Add(
            dtype=dtype, name="embeddings_add"
        )
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-12, dtype=dtype, name="embeddings_layer_norm"
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
        )
        self.transformer_layers = [
            TransformerEncoderBlock(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                attention=attention,
                shared_key_dim=shared_key_dim,
                dropout=dropout,
                activation="gelu_approximate",
                layer_norm_epsilon=1e-12,
                normalize_first=False,
                kernel_initializer=initializer,
                attention_kwargs=attention_kwargs,
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.pooled_dense = keras.layers.Dense(
            hidden_dim,
            activation="tanh",
            kernel_initializer=initializer,
            dtype=dtype,
            name="pooled_dense",
        )

        # === Functional model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        segment_ids = keras.Input(
            shape=(None,), dtype="int32", name="segment_ids"
        )
        padding_mask = keras.Input(
            shape=(None,), dtype="int32", name="padding_mask"
        )
        tokens = self.token_embedding(token_ids)  # (batch, length, hidden)
        positions = self.position_embedding(tokens)
        segments = self.segment_embedding(segment_ids)
        x = self.embeddings_add((tokens, positions, segments))
        x = self.embeddings_layer_norm(x)
        x = self.embeddings_dropout(x)
        for block in self.transformer_layers:
            x = block(x, padding_mask=padding_mask)
        # The first token, or zeros when the length is 0: (batch, hidden).
        first = ops.sum(x[:, :1, :], axis=1)
        pooled = self.pooled_dense(first)
        super().__init__(
            inputs={
                "token_ids": token_ids,
                "segment_ids": segment_ids,
                "padding_mask": padding_mask,
            },
            outputs={"sequence_output": x, "pooled_output": pooled},
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.attention = attention
        self.shared_key_dim = shared_key_dim
        self.attention_kwargs = attention_kwargs
        self.cls_token_index = 0

    def call(self, inputs, training=None, mask=None):
        self._check_inputs(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _check_inputs(self, inputs):
        """Names, ranks, lengths and (concrete) id ranges of the inputs."""
        length = (self.max_sequence_length, "max_sequence_length")
        check_inputs(
            inputs,
            {
                "token_ids": (
                    ("int", self.vocabulary_size, "vocabulary_size"),
                    2,
                    length,
                ),
                "segment_ids": (
                    ("int", self.num_segments, "num_segments"),
                    2,
                    length,
                ),
                "padding_mask": ("mask", 2, length),
            },
        )

    def synthetic_inputs(self, num_sequences=32, sequence_length=32, seed=0):
        """Random token sequences: data-free calibration inputs.

        `reparametrize(..., calibration_data="synthetic")` and
        `from_preset(..., calibration_data="synthetic")` record the
        activations these produce: tokens drawn uniformly from the
        vocabulary (`[PAD]`, id 0, left out) pass through the real
        embeddings, layer norms and blocks, so every attention layer sees
        the directions its inputs actually occupy, which the weights alone
        do not say. The default, 32 sequences of 32 tokens (a quarter held
        out), is the least that `reparametrize` takes without a
        too-little-data warning and records in under a second for
        all-MiniLM-L6-v2.

        Args:
            num_sequences: Number of sequences.
            sequence_length: Tokens per sequence (at most
                `max_sequence_length`).
            seed: Seed of the random tokens.

        Returns:
            A dict of `token_ids`, `segment_ids` (zeros) and `padding_mask`
            (ones), int32 arrays of shape `(num_sequences, length)`.
        """
        num_sequences = check_integer("num_sequences", num_sequences)
        length = min(
            check_integer("sequence_length", sequence_length),
            self.max_sequence_length,
        )
        rng = np.random.default_rng(seed)
        token_ids = rng.integers(
            min(1, self.vocabulary_size - 1),
            self.vocabulary_size,
            (num_sequences, length),
        ).astype("int32")
        return {
            "token_ids": token_ids,
            "segment_ids": np.zeros_like(token_ids),
            "padding_mask": np.ones_like(token_ids),
        }

    @classmethod
    def from_keras_hub(cls, backbone, **kwargs):
        """A concatenated `BertBackbone` with the weights of a
        `keras_hub.models.BertBackbone` (outputs equal to float rounding).

        Args:
            backbone: A `keras_hub.models.BertBackbone`.
            **kwargs: Constructor arguments overriding its config (`dtype`).
        """
        config = {**backbone.get_config(), **kwargs}
        return copy_bert_weights(backbone, cls.from_config(config))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "max_sequence_length": self.max_sequence_length,
                "num_segments": self.num_segments,
                **self._switch_config(),
            }
        )
        return config
