"""Preprocessor of `TransformerNMTSeq2SeqLM`: raw text pairs to token ids."""

import keras
import numpy as np
from keras_hub.models import Seq2SeqLMPreprocessor

from collab_keras.argument_checks import check_integer

from ..zoo_model import IntegerMasks
from .transformer_nmt_backbone import TransformerNMTBackbone
from .transformer_nmt_tokenizer import TransformerNMTTokenizer


@keras.saving.register_keras_serializable(package="collab_keras")
class TransformerNMTSeq2SeqLMPreprocessor(IntegerMasks, Seq2SeqLMPreprocessor):
    """Tokenizes and packs source/target sentence pairs.

    keras-hub's `Seq2SeqLMPreprocessor` with `TransformerNMTTokenizer`:
    `x={"encoder_text": ..., "decoder_text": ...}` (strings) becomes the
    four `TransformerNMTBackbone` inputs, the labels `y` (the target shifted
    left by one) and `sample_weight` (0 on padding).

    Source: `[START] tokens [END] [PAD]...`, `encoder_sequence_length` long.
    Target: `[START] tokens [END] [PAD]...`, packed to
    `decoder_sequence_length + 1` then split into decoder inputs (all but
    the last) and labels (all but the first). Long sentences are truncated.
    Padding masks are int32 (`IntegerMasks`: `fit` under `tf.distribute`).

    For generation, `generate_preprocess` packs the source and an optional
    target prompt (no end token) and `generate_postprocess` detokenizes,
    dropping special tokens (on the JAX and torch backends with numpy and
    keras-hub's pure-Python detokenization: no TensorFlow needed).

    Args:
        tokenizer: A `TransformerNMTTokenizer`.
        encoder_sequence_length: int. Packed source length.
        decoder_sequence_length: int. Packed target length.
        **kwargs: `keras_hub.models.Preprocessor` arguments (`name`, ...).

    Example:

    ```python
    preprocessor = TransformerNMTSeq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=16, decoder_sequence_length=16
    )
    x, y, sample_weight = preprocessor(
        {"encoder_text": ["the cat"], "decoder_text": ["die katze"]}
    )
    ```
    """

    backbone_cls = TransformerNMTBackbone
    tokenizer_cls = TransformerNMTTokenizer

    def __init__(
        self,
        tokenizer,
        encoder_sequence_length=1024,
        decoder_sequence_length=1024,
        **kwargs,
    ):
        if not isinstance(tokenizer, TransformerNMTTokenizer):
            raise TypeError(
                "`tokenizer` must be a TransformerNMTTokenizer. "
                f"Received: tokenizer of type {type(tokenizer).__name__}"
            )
        super().__init__(
            tokenizer=tokenizer,
            encoder_sequence_length=check_integer(
                "encoder_sequence_length", encoder_sequence_length, 2
            ),
            decoder_sequence_length=check_integer(
                "decoder_sequence_length", decoder_sequence_length, 2
            ),
            **kwargs,
        )

    def generate_postprocess(self, x):
        """Generated token ids to strings, special tokens and padding dropped.

        keras-hub drops them with a `tf.RaggedTensor`; on the JAX and torch
        backends this does it with numpy instead, so `generate` needs no
        TensorFlow there (the detokenization is keras-hub's pure-Python one,
        which gives the same strings as its TensorFlow one).

        Args:
            x: dict with `"decoder_token_ids"` and `"decoder_padding_mask"`,
                each `(batch, length)`.

        Returns:
            A list of strings (TensorFlow backend: a string tensor).
        """
        if keras.backend.backend() == "tensorflow":
            return super().generate_postprocess(x)
        ids = keras.ops.convert_to_numpy(x["decoder_token_ids"])  # (B, T)
        keep = keras.ops.convert_to_numpy(x["decoder_padding_mask"]).astype(bool)
        keep &= ~np.isin(ids, self.tokenizer.special_token_ids)  # (B, T)
        return self.tokenizer.detokenize(
            [row[mask].tolist() for row, mask in zip(ids, keep)]
        )

    def get_config(self):
        # keras-hub's `Seq2SeqLMPreprocessor` leaves the lengths out.
        config = super().get_config()
        config.update(
            {
                "encoder_sequence_length": self.encoder_sequence_length,
                "decoder_sequence_length": self.decoder_sequence_length,
            }
        )
        return config
