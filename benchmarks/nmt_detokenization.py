"""How often `TransformerNMTTokenizer` gives back the exact text it tokenized.

Trains a joint WordPiece vocabulary on Bible training verses (English KJV and
German Schlachter 1951, `collab_keras.training.bible`), then tokenizes every
test verse of both languages and detokenizes it twice: with keras-hub's
WordPiece detokenization alone (tokens joined by spaces) and with the
tokenizer's own `detokenize` (the same, then `CLEAN_UP_RULES`). Prints the
share of verses that come back character for character, and the verses that
still differ.

    python benchmarks/nmt_detokenization.py [--train-verses 8000]
        [--split test|validation|train]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from keras_hub.tokenizers import WordPieceTokenizer  # noqa: E402

from collab_keras.models import TransformerNMTTokenizer  # noqa: E402
from collab_keras.training import bible  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-verses", type=int, default=8000)
    parser.add_argument("--vocabulary-size", type=int, default=8000)
    parser.add_argument("--split", default="test", choices=bible.SPLITS,
                        help="the verses to detokenize")
    parser.add_argument("--show", type=int, default=8)
    args = parser.parse_args()
    english, german = bible.load_pairs("train")
    n = args.train_verses
    tokenizer = TransformerNMTTokenizer.train(
        list(english[:n]) + list(german[:n]), args.vocabulary_size
    )
    print(f"vocabulary: {tokenizer.vocabulary_size()} tokens, trained on "
          f"{n} + {n} training verses")
    english, german = bible.load_pairs(args.split)
    print(f"{args.split + ' verses':<22}{'count':>6}{'with [UNK]':>11}"
          f"{'exact, WordPiece':>18}{'exact, detokenize':>19}")
    for name, texts in (("English (KJV)", english), ("German (Schlachter)",
                                                     german)):
        ids = tokenizer(list(texts))
        plain = WordPieceTokenizer.detokenize(tokenizer, ids)
        clean = tokenizer.detokenize(ids)
        unk = tokenizer.token_to_id(tokenizer.oov_token)
        unknown = [unk in np.asarray(i) for i in ids]
        known = [i for i, u in enumerate(unknown) if not u]
        exact_plain = sum(plain[i] == texts[i] for i in known)
        exact_clean = sum(clean[i] == texts[i] for i in known)
        print(f"{name:<22}{len(texts):>6}{sum(unknown):>11}"
              f"{exact_plain / len(known):>18.1%}"
              f"{exact_clean / len(known):>19.1%}")
        shown = [i for i in known if clean[i] != texts[i]][: args.show]
        for i in shown:
            print(f"    text:        {texts[i]}\n    detokenized: {clean[i]}")


if __name__ == "__main__":
    main()
