"""The README's demo: collaborative against concatenated attention, trained.

When this version ships the pretrained translator `bible_en_de_collaborative`
(`collab_keras/presets/`, see docs/training.md), the demo first translates a
few sentences with it, exports it for TF Serving and translates them again
through the exported SavedModel in a fresh process (`collab-keras translate
--model ... --beam`). `--preset DIR` shows another translator preset;
`--no-training` stops there.

Then it trains two tiny Transformer-NMT models, English (King James) to German
(Schlachter 1951), on the offline Bible corpus: the same data, vocabulary,
seed and schedule, once with concatenated (standard multi-head) attention and
once with collaborative attention sharing D̃_k = 32 key dimensions. Prints
parameters, BLEU and chrF of beam-search translations of held-out verses,
training seconds and tokens per second side by side, exports the
collaborative model for TF Serving and translates a few sentences through the
exported SavedModel in a fresh process (`collab-keras translate`).

    ./run demo                                  # or:
    python -m collab_keras.training.demo [--steps N] [--output-dir DIR] [--no-training]
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
# The pretrained translator the demo shows first, when this version ships it.
SHIPPED = "bible_en_de_collaborative"


def main(argv=None):
    """Runs the demo (see the module doc).

    Returns:
        A dict: `"translator"`, the preset's `(in_process, served)`
        translations of SENTENCES (None when no preset is shown);
        `"results"`, each attention's metrics, and `"translated"`, SENTENCES
        through the trained collaborative model's export (empty with
        `--no-training`).
    """
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
    parser.add_argument("--preset", default=SHIPPED,
                        help="the translator preset shown first: a preset folder, or the "
                             f"shipped {SHIPPED} (the default; skipped where this version "
                             "does not ship it)")
    parser.add_argument("--no-training", dest="training", action="store_false",
                        help="show the translator preset only, without the training")
    args = parser.parse_args(argv)
    translator = translator_folder(args.preset)
    if translator is None and not args.training:
        parser.error(f"--no-training shows the translator preset only, and this version "
                     f"does not ship {SHIPPED!r}; pass --preset DIR. "
                     f"Received: preset={args.preset!r}")
    if translator is not None and not os.path.isfile(os.path.join(translator, "config.json")):
        parser.error(f"`--preset` must be a preset folder (with a config.json). "
                     f"Received: preset={args.preset!r}")

    out = args.output_dir or tempfile.mkdtemp(prefix="collab-keras-demo-")
    os.makedirs(out, exist_ok=True)
    outcome = {"translator": None, "results": {}, "translated": []}
    if translator is not None:
        outcome["translator"] = show_translator(translator, os.path.join(out, "translator"))
    if args.training:
        if translator is not None:
            print()
        outcome["results"], outcome["translated"] = compare(args, out)
    return outcome


def translator_folder(preset):
    """The folder of the demo's translator preset: a registered name's (None
    where this version does not ship it) or `preset` itself."""
    from collab_keras.models.presets import OFFLINE_PRESETS
    from collab_keras.models.presets import offline_preset_folder

    if preset in OFFLINE_PRESETS:
        return offline_preset_folder(preset)
    return preset


def translate_in_fresh_process(export, beam=False):
    """SENTENCES translated by `collab-keras translate --model export` run
    in a new Python process (`beam`: its `--beam`)."""
    return subprocess.run(
        [sys.executable, "-m", "collab_keras.training", "translate", "--model", export,
         *(["--beam"] if beam else []), *SENTENCES],
        capture_output=True, text=True, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout.splitlines()


def show_translator(folder, out):
    """Translates SENTENCES with the translator preset in `folder`, exports it
    for TF Serving to `out/export` and translates them again through the
    SavedModel in a fresh process.

    Returns:
        `(in_process, served)`: the two lists of translations.
    """
    from collab_keras.models import TransformerNMTSeq2SeqLM
    from collab_keras.training import evaluation
    from collab_keras.training import preset
    from collab_keras.training.export import export_saved_model

    results = preset.read_results(folder)
    test, scores = results["test"], results["scores"]
    print(f"The translator preset {folder}: {results['attention']} attention "
          f"(shared_key_dim={results['shared_key_dim']}), {results['parameters']:,} "
          f"parameters, {results['dtype']} weights; test BLEU {scores['bleu']:.2f}, chrF "
          f"{scores['chrf']:.2f} on {test['examples']} held-out verses ({test['beam_width']} "
          f"beams); {scores['bleu_signature']}", flush=True)
    task = TransformerNMTSeq2SeqLM.from_preset(folder)
    in_process = evaluation.beam_decode(task, list(SENTENCES), test["beam_width"])
    for source, target in zip(SENTENCES, in_process):
        print(f"  {source}\n    -> {target}")
    export = export_saved_model(task, os.path.join(out, "export"),
                                num_beams=test["beam_width"])
    print(f"\nExported for TF Serving: {export}\nThe same sentences through the "
          f"SavedModel in a fresh process (collab-keras translate --model {export} --beam):",
          flush=True)
    served = translate_in_fresh_process(export, beam=True)
    for target in served:
        print(f"    -> {target}")
    return in_process, served


def compare(args, out):
    """Trains the two tiny models side by side (see the module doc).

    Returns:
        `(results, translated)`: each attention's metrics, and SENTENCES
        translated through the collaborative model's export.
    """
    from collab_keras.training import data
    from collab_keras.training import run
    from collab_keras.training import tasks
    from collab_keras.training import vocabulary
    from collab_keras.training.config import RunConfig

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
    translated = translate_in_fresh_process(export)
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
