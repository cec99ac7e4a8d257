"""WordPiece vocabularies trained with keras-hub, cached next to the run."""

import hashlib
import os

from collab_keras.argument_checks import check_integer
from collab_keras.training import checkpoint


def train(texts, vocabulary_size, reserved_tokens, lowercase=False):
    """A WordPiece vocabulary (list of tokens) trained on `texts`.

    keras-hub's `compute_word_piece_vocabulary` does the training; the reserved
    tokens come first, in the order given.
    """
    import keras_hub
    import tensorflow as tf

    # At least one token besides the reserved ones.
    minimum = len(reserved_tokens) + 1
    vocabulary_size = check_integer("vocabulary_size", vocabulary_size, minimum)
    if not texts:
        raise ValueError("Cannot train a vocabulary on no text. Received: texts=[]")
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(list(texts)).batch(1000),
        vocabulary_size,
        lowercase=lowercase,
        reserved_tokens=list(reserved_tokens),
    )


def load_or_train(path, train_fn):
    """The vocabulary cached at `path`; `train_fn()` makes it on a cache miss.

    The file (one token per line) is written atomically.
    """
    if os.path.exists(path):
        return read(path)
    vocabulary = list(train_fn())
    checkpoint.atomic_write_text(path, "".join(f"{token}\n" for token in vocabulary))
    return vocabulary


def read(path):
    with open(path, encoding="utf-8") as file:
        return [line.rstrip("\n") for line in file]


def fingerprint(vocabulary):
    """A short hash identifying a vocabulary (stored with checkpoints)."""
    return hashlib.sha256("\n".join(vocabulary).encode()).hexdigest()[:16]
