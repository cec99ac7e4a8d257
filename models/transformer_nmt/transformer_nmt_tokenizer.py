"""WordPiece tokenizer over one joint source+target vocabulary."""

import re

import keras
from keras_hub.tokenizers import WordPieceTokenizer
from keras_hub.tokenizers import compute_word_piece_vocabulary

from collab_keras.argument_checks import check_integer

from .transformer_nmt_backbone import TransformerNMTBackbone

# Reserved tokens, first in every trained vocabulary: padding is id 0.
PAD, START, END, UNK = "[PAD]", "[START]", "[END]", "[UNK]"
RESERVED_TOKENS = (PAD, START, END, UNK)

# WordPiece splits punctuation off words and its detokenization joins all
# tokens with spaces ("Es werde Licht !"). These rules remove the spaces that
# normal text does not have, in this order; each is a regular expression
# that means the same to Python's `re` and to TensorFlow's RE2 (ASCII only,
# no look-around), so eager and graph detokenization agree. Like Hugging
# Face's `clean_up_tokenization`, they undo the split of the vocabulary's
# punctuation; unlike it, they know quotation marks, brackets and hyphens.
_QUOTES = '»«„“”"'
CLEAN_UP_RULES = (
    # Two consecutive quotation marks pair up (»…«, «…», „…“, “…”, "…"):
    # the words between them lose the spaces next to the marks.
    (f"([{_QUOTES}]) ([^{_QUOTES}]*) ([{_QUOTES}])", r"\1\2\3"),
    # An unpaired mark opening or closing the text, or after a colon (which
    # opens a quotation), does the same.
    (f"^([{_QUOTES}]) ", r"\1"),
    (f" ([{_QUOTES}])$", r"\1"),
    (f"(: [{_QUOTES}]) ", r"\1"),
    # An apostrophe joins a clitic (ist's, don't, we're, LORD'S) ...
    (r" ' ((?i:s|t|m|d|ll|re|ve))( |$)", r"'\1\2"),
    # ... and otherwise the word before it (sons' wives, Ahas' Sohn).
    (r" '( |$)", r"'\1"),
    # No space before closing punctuation, none after opening brackets.
    (r" ([.,;:!?)\]}])", r"\1"),
    (r"([(\[{]) ", r"\1"),
    # A hyphen joins its words (Tubal-Kain); a colon joins digits (22:8).
    (r" - ", "-"),
    (r"([0-9]): ([0-9])", r"\1:\2"),
)


@keras.saving.register_keras_serializable(package="collab_keras")
class TransformerNMTTokenizer(WordPieceTokenizer):
    """WordPiece tokenizer of `TransformerNMTSeq2SeqLM`.

    One vocabulary covers source and target text, as the shared embedding of
    `TransformerNMTBackbone` wants (Vaswani et al. trained one 37,000-token
    vocabulary on English and German together). Train one with
    `TransformerNMTTokenizer.train(source_texts + target_texts, size)`, which
    runs keras-hub's `compute_word_piece_vocabulary`.

    `get_config` carries the vocabulary (keras-hub stores it only as an asset
    file), so copies made from a config (`collab_keras.reparametrize`,
    `keras.models.clone_model`) keep it.

    Special tokens: `"[PAD]"` (`pad_token_id`), `"[START]"`
    (`start_token_id`), `"[END]"` (`end_token_id`) and the out-of-vocabulary
    token `"[UNK]"`; all four must be in the vocabulary.

    Args:
        vocabulary: A list of strings or the path of a one-token-per-line
            file.
        lowercase: bool. Lowercase the input before tokenizing.
        strip_accents: bool. Remove accents before tokenizing.
        **kwargs: The other `keras_hub.tokenizers.WordPieceTokenizer`
            arguments (`sequence_length`, `split`, `dtype`, ...).

    Example:

    ```python
    tokenizer = TransformerNMTTokenizer.train(
        ["the cat sleeps", "die katze schläft"], vocabulary_size=60
    )
    tokenizer("the cat")  # token ids
    ```
    """

    backbone_cls = TransformerNMTBackbone

    def __init__(
        self, vocabulary=None, lowercase=False, strip_accents=False, **kwargs
    ):
        self._add_special_token(START, "start_token")
        self._add_special_token(END, "end_token")
        self._add_special_token(PAD, "pad_token")
        kwargs.setdefault("oov_token", UNK)
        super().__init__(
            vocabulary=vocabulary,
            lowercase=lowercase,
            strip_accents=strip_accents,
            **kwargs,
        )

    def detokenize(self, inputs):
        """Token ids to text, with the spaces of normal text.

        keras-hub's WordPiece detokenization joins the tokens with spaces,
        so punctuation comes out spaced ("Es werde Licht !"); the rules of
        `CLEAN_UP_RULES` then remove the spaces normal text does not have
        ("Es werde Licht!"). Tokenizing the result gives the same ids again,
        because WordPiece splits punctuation whatever the spaces. Works in
        eager calls (Python strings) and inside a `tf.function` or
        `tf.data` pipeline (string tensors, `tf.strings.regex_replace`).
        """
        return _clean_up(super().detokenize(inputs))

    def get_config(self):
        config = super().get_config()
        if self.vocabulary is not None:
            config["vocabulary"] = self.get_vocabulary()
        return config

    @classmethod
    def train(
        cls, texts, vocabulary_size, lowercase=False, strip_accents=False
    ):
        """Trains a joint vocabulary and returns a tokenizer using it.

        Args:
            texts: Source and target sentences together: a list of strings
                or a `tf.data.Dataset` of strings (e.g. a
                `tf.data.TextLineDataset`).
            vocabulary_size: int. Largest vocabulary to train (reserved
                tokens included); the result may be smaller.
            lowercase: bool. Lowercase before training and tokenizing.
            strip_accents: bool. Remove accents before training and
                tokenizing.

        Returns:
            A `TransformerNMTTokenizer`; its vocabulary starts with
            `"[PAD]", "[START]", "[END]", "[UNK]"`.
        """
        import tensorflow as tf

        vocabulary_size = check_integer(
            "vocabulary_size", vocabulary_size, len(RESERVED_TOKENS) + 1
        )
        if isinstance(texts, str) or not isinstance(
            texts, (list, tuple, tf.data.Dataset)
        ):
            raise TypeError(
                "`texts` must be a list of strings or a tf.data.Dataset. "
                f"Received: texts of type {type(texts).__name__}"
            )
        if isinstance(texts, (list, tuple)):
            if not texts or not all(isinstance(t, str) for t in texts):
                raise ValueError(
                    "`texts` must be a non-empty list of strings. Received: "
                    f"texts={texts[:3]!r}{'...' if len(texts) > 3 else ''}"
                )
            texts = tf.data.Dataset.from_tensor_slices(list(texts))
        vocabulary = compute_word_piece_vocabulary(
            texts,
            vocabulary_size,
            lowercase=lowercase,
            strip_accents=strip_accents,
            reserved_tokens=list(RESERVED_TOKENS),
        )
        return cls(
            vocabulary=vocabulary,
            lowercase=lowercase,
            strip_accents=strip_accents,
        )


def _clean_up(text):
    """Applies `CLEAN_UP_RULES` to a string, a nested list of strings or a
    (ragged) string tensor."""
    if isinstance(text, str):
        for pattern, rewrite in CLEAN_UP_RULES:
            text = re.sub(pattern, rewrite, text)
        return text
    if isinstance(text, (list, tuple)):
        return [_clean_up(t) for t in text]
    import tensorflow as tf

    def clean_up(strings):
        for pattern, rewrite in CLEAN_UP_RULES:
            strings = tf.strings.regex_replace(strings, pattern, rewrite)
        return strings

    return tf.ragged.map_flat_values(clean_up, text)
