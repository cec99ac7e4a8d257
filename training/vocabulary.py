"""WordPiece vocabularies trained with keras-hub, cached next to the run.

A run keeps its vocabulary in `vocabulary.txt` (one token a line) and the
vocabulary's fingerprint in `vocabulary.json`, written first: a
`vocabulary.txt` whose tokens are not the recorded ones (another run's,
edited by hand) is refused, even before the run's first checkpoint.
"""

import hashlib
import json
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


def record_path(path):
    """Where the fingerprint of the vocabulary file `path` is recorded."""
    return os.path.splitext(path)[0] + ".json"


def load_saved(path):
    """The run's vocabulary saved at `path`, or None when there is none.

    Raises:
        ValueError: the file's tokens are not those whose fingerprint was
            recorded beside it (or none was).
    """
    if not os.path.exists(path):
        return None
    vocabulary = read(path)
    try:
        with open(record_path(path), encoding="utf-8") as file:
            recorded = json.load(file)["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if recorded != fingerprint(vocabulary):
        raise ValueError(
            f"{path} is not the vocabulary this run wrote (its fingerprint "
            f"{fingerprint(vocabulary)} is not the one recorded in "
            f"{record_path(path)}: {recorded}). Put the run's own vocabulary "
            "back or use another --output-dir; nothing was changed. "
            f"Received: vocabulary={path!r}"
        )
    return vocabulary


def save(path, vocabulary):
    """Writes `vocabulary` to `path` and its fingerprint beside it (first)."""
    checkpoint.atomic_write_json(
        record_path(path),
        {"fingerprint": fingerprint(vocabulary), "tokens": len(vocabulary)},
    )
    checkpoint.atomic_write_text(path, "".join(f"{token}\n" for token in vocabulary))


def load_or_train(path, train_fn):
    """The vocabulary saved at `path` (checked, see `load_saved`);
    `train_fn()` makes it when there is none, and it is saved."""
    vocabulary = load_saved(path)
    if vocabulary is None:
        vocabulary = list(train_fn())
        save(path, vocabulary)
    return vocabulary


def read(path):
    """The tokens of a vocabulary file (one a line, UTF-8)."""
    try:
        with open(path, encoding="utf-8") as file:
            vocabulary = [line.rstrip("\n") for line in file]
    except UnicodeDecodeError as error:
        raise ValueError(
            f"A vocabulary file must be UTF-8 text, one token a line ({error}). "
            f"Received: vocabulary_file={path!r}"
        ) from None
    if not vocabulary:
        raise ValueError(
            f"The vocabulary file is empty. Received: vocabulary_file={path!r}"
        )
    return vocabulary


def fingerprint(vocabulary):
    """A short hash identifying a vocabulary (stored with checkpoints)."""
    return hashlib.sha256("\n".join(vocabulary).encode()).hexdigest()[:16]
