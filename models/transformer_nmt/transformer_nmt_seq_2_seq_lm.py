"""Translation task: `fit` on raw text pairs, `generate` text."""

import keras
import keras_hub
from keras import ops
from keras_hub.models import Seq2SeqLM

from collab_keras.argument_checks import check_integer

from ..zoo_model import ZooTask
from .transformer_nmt_backbone import TransformerNMTBackbone
from .transformer_nmt_seq_2_seq_lm_preprocessor import (
    TransformerNMTSeq2SeqLMPreprocessor,
)


@keras.saving.register_keras_serializable(package="collab_keras")
class TransformerNMTSeq2SeqLM(ZooTask, Seq2SeqLM):
    """A Transformer translation model: encoder-decoder plus a tied LM head.

    `keras_hub.models.Seq2SeqLM` on a `TransformerNMTBackbone`: the logits
    are the decoder output times the transposed token embedding (or the
    backbone's untied output matrix). With a preprocessor, `fit` takes raw
    pairs `x={"encoder_text": sources, "decoder_text": targets}` and
    `generate("a sentence")` returns the translation as text.

    `compile()` has keras-hub's defaults (Adam(2e-5), sparse categorical
    cross-entropy from logits, weighted accuracy; pass a larger learning
    rate to train from scratch) and a `sampler` (`"greedy"`, `"top_k"`
    (default), `"beam"` or a `keras_hub.samplers.Sampler`). Generation is
    compiled as keras-hub compiles it: `generate_step` runs the sampler over
    a decoding cache inside a `tf.function` (XLA when `jit_compile`) on
    TensorFlow, `jax.jit` on JAX, eagerly with `run_eagerly=True`.
    `generate_step` uses token ids only (no tensorflow-text ops), so it can
    be exported as a TF Serving signature.

    Decoding cache: concatenated heads cache keys and values per head
    (`keras_hub.layers.CachedMultiHeadAttention`); collaborative heads cache
    the shared key `(batch, length, shared_key_dim)`, the content term and
    the values (`collab_keras.layers.CachedCollaborativeAttention`). The
    cross-attention cache is computed once from the encoder output.

    Args:
        backbone: A `TransformerNMTBackbone`.
        preprocessor: A `TransformerNMTSeq2SeqLMPreprocessor` or `None` (then
            inputs are the backbone's token-id dicts).
        **kwargs: `name`, `trainable` and `dtype`; others raise.

    Example:

    ```python
    model = TransformerNMTSeq2SeqLM(backbone, preprocessor)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), sampler="greedy")
    model.fit({"encoder_text": sources, "decoder_text": targets}, epochs=5)
    model.generate("the cat sleeps")  # a string
    ```
    """

    backbone_cls = TransformerNMTBackbone
    preprocessor_cls = TransformerNMTSeq2SeqLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        if not isinstance(backbone, TransformerNMTBackbone):
            raise TypeError(
                "`backbone` must be a TransformerNMTBackbone. "
                f"Received: backbone of type {type(backbone).__name__}"
            )
        if preprocessor is not None:
            _check_preprocessor(preprocessor, backbone)

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional Model ===
        inputs = backbone.input
        hidden_states = backbone(inputs)["decoder_sequence_output"]
        outputs = backbone.token_embedding(hidden_states, reverse=True)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    def compile(self, *args, sampler="top_k", **kwargs):
        super().compile(*args, sampler=sampler, **kwargs)
        if isinstance(self.sampler, keras_hub.samplers.BeamSampler):
            check_integer("num_beams", self.sampler.num_beams)
        if isinstance(self.sampler, keras_hub.samplers.TopKSampler):
            check_integer("k", self.sampler.k)

    # --- Generation (keras-hub's `generate_step` contract). ---

    def _build_cache(
        self, encoder_token_ids, encoder_padding_mask, decoder_token_ids
    ):
        """Encodes once, then runs the decoder over the whole prompt."""
        encoder_output = self.backbone.call_encoder(
            encoder_token_ids, encoder_padding_mask
        )
        self_cache, cross_cache = self.backbone.initialize_decoder_cache(
            encoder_output, ops.shape(decoder_token_ids)[1]
        )
        hidden_states, self_cache = self.backbone.call_decoder_with_cache(
            decoder_token_ids, encoder_padding_mask, self_cache, 0, cross_cache
        )
        return hidden_states, (self_cache, cross_cache, encoder_padding_mask)

    def generate_step(self, inputs, stop_token_ids=None):
        """A compilable generation function for one batch of token ids.

        Args:
            inputs: dict with `"encoder_token_ids"`, `"encoder_padding_mask"`,
                `"decoder_token_ids"` and `"decoder_padding_mask"`: the
                source and the target prompt (at least the start token),
                padded to the target length to generate.
            stop_token_ids: Tuple of token ids ending a sequence, or `None`.

        Returns:
            dict with `"decoder_token_ids"` and `"decoder_padding_mask"`
            (`False` after each sequence's first stop token).
        """
        encoder_token_ids = ops.cast(inputs["encoder_token_ids"], "int32")
        encoder_padding_mask = inputs["encoder_padding_mask"]
        decoder_token_ids = ops.cast(inputs["decoder_token_ids"], "int32")
        decoder_padding_mask = ops.cast(inputs["decoder_padding_mask"], "bool")
        hidden_states, cache = self._build_cache(
            encoder_token_ids, encoder_padding_mask, decoder_token_ids
        )
        # Generation starts after the shortest prompt.
        row_lengths = ops.sum(ops.cast(decoder_padding_mask, "int32"), axis=-1)
        index = ops.min(row_lengths)

        def next(prompt, cache, index):
            # Feed the token at `index - 1`, predict the one at `index`.
            self_cache, cross_cache, encoder_padding_mask = cache
            batch_size = ops.shape(prompt)[0]
            token = ops.slice(prompt, [0, index - 1], [batch_size, 1])
            hidden_states, self_cache = self.backbone.call_decoder_with_cache(
                token, encoder_padding_mask, self_cache, index - 1, cross_cache
            )
            logits = self.backbone.token_embedding(hidden_states, reverse=True)
            return (
                ops.squeeze(logits, axis=1),  # (batch, vocabulary)
                ops.squeeze(hidden_states, axis=1),  # (batch, hidden)
                (self_cache, cross_cache, encoder_padding_mask),
            )

        decoder_token_ids = self.sampler(
            next=next,
            prompt=decoder_token_ids,
            cache=cache,
            index=index,
            mask=decoder_padding_mask,
            stop_token_ids=stop_token_ids,
            hidden_states=hidden_states,
            model=self,
        )
        if stop_token_ids is None:
            decoder_padding_mask = ops.ones_like(decoder_token_ids, "bool")
        else:
            # Mask everything after each sequence's first generated stop.
            is_stop = ops.zeros_like(decoder_token_ids, "bool")
            for stop in stop_token_ids:
                is_stop = ops.logical_or(
                    is_stop, ops.equal(decoder_token_ids, stop)
                )
            is_stop = ops.logical_and(
                is_stop, ops.logical_not(decoder_padding_mask)
            )
            is_stop = ops.cast(is_stop, "int32")
            stops_before = ops.cumsum(is_stop, axis=-1) - is_stop
            decoder_padding_mask = ops.equal(stops_before, 0)
        return {
            "decoder_token_ids": decoder_token_ids,
            "decoder_padding_mask": decoder_padding_mask,
        }

    def generate(
        self, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False
    ):
        """Translates: text in, text out (token ids without preprocessor).

        Args:
            inputs: A string, a list of strings, a dict with
                `"encoder_text"` and `"decoder_text"` (a target prompt), or a
                `tf.data.Dataset` of these; without a preprocessor, a dict of
                the four backbone inputs, the decoder ones padded to the
                length to generate.
            max_length: Optional int. Target length, start token included
                (default: the preprocessor's `decoder_sequence_length`); at
                most the backbone's `max_sequence_length`.
            stop_token_ids: `"auto"` (the tokenizer's end token), `None` or a
                tuple of token ids.
            strip_prompt: bool. Return only the generated continuation.

        Returns:
            Strings with a preprocessor, else a dict of token ids and mask.
        """
        if max_length is not None:
            max_length = check_integer("max_length", max_length)
            if max_length > self.backbone.max_sequence_length:
                raise ValueError(
                    "`max_length` must be at most the backbone's "
                    "`max_sequence_length="
                    f"{self.backbone.max_sequence_length}`. "
                    f"Received: max_length={max_length}"
                )
        if stop_token_ids is not None and stop_token_ids != "auto":
            if not isinstance(stop_token_ids, (list, tuple)):
                raise TypeError(
                    "`stop_token_ids` must be 'auto', None or a tuple of "
                    f"token ids. Received: stop_token_ids={stop_token_ids!r}"
                )
            stop_token_ids = tuple(
                check_integer("stop_token_ids", i, 0) for i in stop_token_ids
            )
        if self.preprocessor is None and isinstance(inputs, dict):
            self.backbone._check_inputs(inputs)
        return super().generate(
            inputs,
            max_length=max_length,
            stop_token_ids=stop_token_ids,
            strip_prompt=strip_prompt,
        )


def _check_preprocessor(preprocessor, backbone):
    if not isinstance(preprocessor, TransformerNMTSeq2SeqLMPreprocessor):
        raise TypeError(
            "`preprocessor` must be a TransformerNMTSeq2SeqLMPreprocessor or "
            f"None. Received: preprocessor of type {type(preprocessor).__name__}"
        )
    # A tokenizer being loaded gets its vocabulary after this (assets).
    vocabulary = preprocessor.tokenizer.vocabulary
    size = 0 if vocabulary is None else len(vocabulary)
    if size > backbone.vocabulary_size:
        raise ValueError(
            "The tokenizer's vocabulary is larger than the backbone's "
            f"`vocabulary_size={backbone.vocabulary_size}`. "
            f"Received: preprocessor.tokenizer.vocabulary_size()={size}"
        )
    for name in ("encoder_sequence_length", "decoder_sequence_length"):
        length = getattr(preprocessor, name)
        if length > backbone.max_sequence_length:
            raise ValueError(
                f"`preprocessor.{name}` exceeds the backbone's "
                f"`max_sequence_length={backbone.max_sequence_length}`. "
                f"Received: preprocessor.{name}={length}"
            )
