"""The README's demo: collaborative against concatenated attention, trained.

Trains two tiny Transformer-NMT models, English (King James) to German
(Schlachter 1951), on the offline Bible corpus: the same data, vocabulary,
seed and schedule, once with concatenated (standard multi-head) attention and
once with collaborative attention sharing D̃_k = 32 key dimensions. Prints
parameters, BLEU and chrF of beam-search translations of held-out verses,
training seconds and tokens per second side by side, exports the
collaborative model for TF Serving and translates a few sentences through the
exported SavedModel in a fresh process (`collab-keras translate`).

    ./run demo                                  # or:
    python -m collab_keras.training.demo [--steps N] [--output-dir DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

SENTENCES = (
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "Blessed are the meek: for they shall inherit the earth.",
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", help="default: a new temporary folder")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--vocabulary-size", type=int, default=4000)
    parser.add_argument("--vocabulary-examples", type=int, default=4000,
                        help="verse pairs the vocabulary is trained on")
    parser.add_argument("--shared-key-dim", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from collab_keras.training import data
    from collab_keras.training import run
    from collab_keras.training import tasks
    from collab_keras.training import vocabulary
    from collab_keras.training.config import RunConfig

    out = args.output_dir or tempfile.mkdtemp(prefix="collab-keras-demo-")
    os.makedirs(out, exist_ok=True)
    vocabulary_file = os.path.join(out, "vocabulary.txt")
    print(f"Training a {args.vocabulary_size}-token WordPiece vocabulary on "
          f"{args.vocabulary_examples} English-German verse pairs...", flush=True)
    vocabulary.load_or_train(
        vocabulary_file,
        lambda: tasks.train_vocabulary(
            "nmt",
            data.text_sample("nmt", data.load("nmt", "train"), args.vocabulary_examples),
            args.vocabulary_size,
        ),
    )
    results = {}
    for attention in ("concatenate", "collaborative"):
        print(f"\nTraining transformer_tiny with {attention} attention "
              f"({args.steps} steps of {args.batch_size} verse pairs)...", flush=True)
        config = RunConfig(
            task="nmt",
            output_dir=os.path.join(out, attention),
            preset="transformer_tiny",
            attention=attention,
            shared_key_dim=args.shared_key_dim if attention == "collaborative" else None,
            vocabulary_file=vocabulary_file,
            sequence_length=args.sequence_length,
            batch_size=args.batch_size,
            steps=args.steps,
            checkpoint_every=max(1, args.steps // 3) if args.steps % 3 == 0 else args.steps,
            learning_rate=2e-3,
            warmup_steps=min(100, args.steps // 5),
            seed=args.seed,
            deterministic=True,
            eval_examples=args.eval_examples,
            export=attention == "collaborative",
        )
        results[attention] = run.train(config)

    first = results["concatenate"]
    print(f"\nEnglish -> German, {args.eval_examples} held-out verses, beam search "
          f"(4 beams); {first['bleu_signature']}")
    header = f"{'attention':<15}{'parameters':>12}{'BLEU':>8}{'chrF':>8}{'seconds':>10}{'tokens/s':>10}"
    print(header)
    print("-" * len(header))
    for attention, m in results.items():
        print(f"{attention:<15}{m['parameters']:>12,}{m['bleu']:>8.2f}{m['chrf']:>8.2f}"
              f"{m['train_seconds']:>10.1f}{m['tokens_per_second']:>10,.0f}")

    export = results["collaborative"]["export"]
    print(f"\nThe collaborative model, exported for TF Serving: {export}")
    print("Translating through the SavedModel in a fresh process "
          f"(collab-keras translate --model {export}):")
    translated = subprocess.run(
        [sys.executable, "-m", "collab_keras.training", "translate", "--model", export,
         *SENTENCES],
        capture_output=True, text=True, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout.splitlines()
    for source, target in zip(SENTENCES, translated):
        print(f"  {source}\n    -> {target}")
    summary = {a: {k: v for k, v in m.items() if k != "examples"} for a, m in results.items()}
    with open(os.path.join(out, "demo.json"), "w") as file:
        json.dump(summary, file, indent=2)
    print(f"\nRun folders (config.json, metrics.json, learning_curves.png, "
          f"TensorBoard logs, checkpoints, model): {out}")
    return results, translated


if __name__ == "__main__":
    main()
