"""BERT-style encoder with an attention switch, MLM and classification heads."""

import keras
from keras_hub.layers import MaskedLMHead
from keras_hub.layers import PositionEmbedding

from .attention_factory import check_attention
from .attention_factory import serialize_attention
from .input_checks import check_inputs
from .presets import BERT_PRESETS
from .transformer_encoder_block import TransformerEncoderBlock
from .zoo_model import ZooModel


@keras.saving.register_keras_serializable(package="collab_keras")
class BertEncoder(ZooModel):
    """BERT encoder (Devlin et al., 2019) with concatenated or collaborative
    heads.

    Token, segment and learned position embeddings, a stack of post-norm
    `TransformerEncoderBlock`s and a tanh pooler on the first token: the
    architecture and weight layout of `keras_hub.models.BertBackbone`, so
    its checkpoints load with `keras_hub_weights.load_bert_backbone_weights`.
    `attention="collaborative"` swaps every self-attention for
    `CollaborativeAttention` with shared query/key width `shared_key_dim`.

    Masking: `padding_mask` (1 on real tokens) reaches every attention
    layer; padded keys get no attention weight, so padding does not change
    the outputs at unpadded positions.

    Args:
        vocabulary_size: Token vocabulary size.
        num_layers: Number of encoder blocks.
        num_heads: Attention heads per block.
        hidden_dim: Model width.
        intermediate_dim: Feed-forward width.
        dropout: Dropout rate (embeddings, attention, blocks).
        max_sequence_length: Size of the position table.
        num_segments: Number of segment (token type) ids.
        attention: `"concatenate"`, `"collaborative"` or a layer factory.
        shared_key_dim: Shared query/key width of collaborative attention
            (`None`: `hidden_dim`). Must be `None` for `"concatenate"`.
        attention_kwargs: Extra keyword arguments for the attention layers.
        masked_lm_head: Whether to add keras-hub's `MaskedLMHead` (tied to
            the token embedding), an input `mask_positions` `(batch, P)` and
            an output `mlm_logits` `(batch, P, vocabulary_size)`.
        num_classes: If set, a classification head on the pooled output and
            an output `logits` `(batch, num_classes)`.
        dtype: Dtype policy of the model.
        **kwargs: `keras.Model` keyword arguments (`name`, `trainable`).

    Inputs (a dict):
        token_ids: int `(batch, length)`, `length <= max_sequence_length`.
        segment_ids: int `(batch, length)`.
        padding_mask: `(batch, length)`, 1 on real tokens, 0 on padding.
        mask_positions: int `(batch, P)` (only with `masked_lm_head`).

    Outputs (a dict):
        sequence_output: `(batch, length, hidden_dim)`.
        pooled_output: `(batch, hidden_dim)`.
        mlm_logits, logits: float32 logits of the heads, when present.

    Example:

    ```python
    model = BertEncoder.from_preset("bert_tiny", attention="collaborative",
                                    shared_key_dim=64, num_classes=2)
    outputs = model({
        "token_ids": np.ones((2, 12), "int32"),
        "segment_ids": np.zeros((2, 12), "int32"),
        "padding_mask": np.ones((2, 12), "int32"),
    })
    outputs["logits"].shape  # (2, 2)
    ```
    """

    presets = BERT_PRESETS

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
        masked_lm_head=False,
        num_classes=None,
        dtype=None,
        **kwargs,
    ):
        attention = check_attention(attention, shared_key_dim)

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
        self.segment_embedding = keras.layers.Embedding(
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
        inputs = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": padding_mask,
        }
        tokens = self.token_embedding(token_ids)  # (batch, length, hidden)
        positions = self.position_embedding(tokens)
        segments = self.segment_embedding(segment_ids)
        x = self.embeddings_add((tokens, positions, segments))
        x = self.embeddings_layer_norm(x)
        x = self.embeddings_dropout(x)
        for block in self.transformer_layers:
            x = block(x, padding_mask=padding_mask)
        pooled = self.pooled_dense(x[:, 0, :])  # (batch, hidden)
        outputs = {"sequence_output": x, "pooled_output": pooled}
        if masked_lm_head:
            mask_positions = keras.Input(
                shape=(None,), dtype="int32", name="mask_positions"
            )
            inputs["mask_positions"] = mask_positions
            self.mlm_head = MaskedLMHead(
                vocabulary_size=vocabulary_size,
                token_embedding=self.token_embedding,
                intermediate_activation=keras.activations.gelu,
                kernel_initializer=initializer,
                layer_norm_epsilon=1e-12,
                dtype=dtype,
                name="mlm_head",
            )
            outputs["mlm_logits"] = self.mlm_head(x, mask_positions)
        if num_classes is not None:
            self.classifier_dropout = keras.layers.Dropout(
                dropout, dtype=dtype, name="classifier_dropout"
            )
            self.classifier = keras.layers.Dense(
                num_classes,
                kernel_initializer=initializer,
                dtype="float32",
                name="classifier",
            )
            outputs["logits"] = self.classifier(
                self.classifier_dropout(pooled)
            )
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

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
        self.masked_lm_head = masked_lm_head
        self.num_classes = num_classes

    def call(self, inputs, training=None, mask=None):
        length = (self.max_sequence_length, "max_sequence_length")
        specs = {
            "token_ids": ("int", 2, length),
            "segment_ids": ("int", 2, length),
            "padding_mask": ("mask", 2, length),
        }
        if self.masked_lm_head:
            specs["mask_positions"] = ("int", 2, None)
        check_inputs(inputs, specs)
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {
            **self._base_config(),
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments,
            "attention": serialize_attention(self.attention),
            "shared_key_dim": self.shared_key_dim,
            "attention_kwargs": self.attention_kwargs,
            "masked_lm_head": self.masked_lm_head,
            "num_classes": self.num_classes,
        }
