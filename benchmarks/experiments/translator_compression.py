"""A trained collaborative translator compressed to smaller shared keys, no training.

Each row is `collab-keras preset --from-preset SOURCE --shared-key-dim R
--calibration-examples N` (`collab_keras.training.preset.compress_preset`):
every attention layer of the source translator is reparametrized to key width
R (a CP decomposition of its heads, fitted to the attention logits of the first
N training pairs, or to the weights alone for N = 0), and the result is scored
on the source's test split (beam search, sacrebleu). The record of each row is
the preset's `results.json` (its weights are not kept), written to
`OUTPUT_DIR/key<R>_calibration<N>.json`; a row whose record exists is read, not
computed again. The table goes to stdout, with the source's own row first.

    # the d/2 translator that shipped before the d/4 one (commit 69cb1c5):
    git archive 69cb1c5 collab_keras/presets/bible_en_de_collaborative | tar -x -C /tmp/d2
    python benchmarks/experiments/translator_compression.py \\
        --source /tmp/d2/collab_keras/presets/bible_en_de_collaborative \\
        --key-sizes 64,32,16 --calibration-examples 0,256 --output-dir OUT
    python benchmarks/experiments/translator_compression.py --quick --source PRESET --output-dir OUT

Needs TensorFlow (the data and the tokenizer); run on the TensorFlow backend,
as the shipped preset's scores are. `--quick` scores the first 8 test verses
with 2 beams at key widths 16 and 8 (for tests and a first look).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

from collab_keras.models.presets import resolve_preset  # noqa: E402
from collab_keras.training import preset  # noqa: E402

QUICK = {"key_sizes": "16,8", "calibration_examples": "0,64", "eval_examples": 8, "beam_width": 2}


def _integers(text):
    return [int(x) for x in text.split(",") if x.strip()]


def record_name(key_size, calibration_examples):
    return f"key{key_size}_calibration{calibration_examples}"


def row(results):
    """One table row of a preset's `results.json`."""
    layers = (results.get("conversion") or {}).get("layers") or []
    errors = [layer["relative_error"] for layer in layers]
    return {
        "shared_key_dim": results["shared_key_dim"],
        "calibration": (results.get("conversion") or {}).get("calibration_examples"),
        "bleu": results["scores"]["bleu"],
        "chrf": results["scores"]["chrf"],
        "parameters": results["parameters"],
        "relative_error": (min(errors), max(errors)) if errors else None,
    }


def table(rows):
    lines = [
        "| shared_key_dim | calibration pairs | BLEU | chrF | parameters | relative error of the heads (min-max) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        calibration = "source" if r["calibration"] is None else r["calibration"]
        error = "-" if r["relative_error"] is None else "{:.3f}-{:.3f}".format(*r["relative_error"])
        lines.append(
            f"| {r['shared_key_dim']} | {calibration} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
            f"{r['parameters']:,} | {error} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="a collaborative translator preset (folder or name)")
    parser.add_argument("--key-sizes", default="64,32,16", help="comma-separated shared key widths")
    parser.add_argument("--calibration-examples", default="0,256",
                        help="comma-separated numbers of training pairs to calibrate on (0: weights alone)")
    parser.add_argument("--eval-examples", type=int, help="test verses (default: the source's)")
    parser.add_argument("--beam-width", type=int, help="beams (default: the source's)")
    parser.add_argument("--output-dir", required=True, help="where the records go (read again on a rerun)")
    parser.add_argument("--quick", action="store_true", help=f"a small setting: {QUICK}")
    args = _common.parse_args(parser, QUICK, argv)
    env = _common.environment()
    _common.print_header("A collaborative translator compressed after training", env)
    os.makedirs(args.output_dir, exist_ok=True)
    source = preset.read_results(resolve_preset(args.source), args.source)
    rows = [{**row(source), "calibration": None, "relative_error": None}]  # the source itself
    for key_size in _integers(args.key_sizes):
        for count in _integers(args.calibration_examples):
            path = os.path.join(args.output_dir, record_name(key_size, count) + ".json")
            if not os.path.exists(path):
                scratch = tempfile.mkdtemp(prefix="compressed-")
                try:
                    results = preset.compress_preset(
                        args.source, os.path.join(scratch, "preset"), key_size,
                        calibration_examples=count, eval_examples=args.eval_examples,
                        beam_width=args.beam_width)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                with open(path, "w", encoding="utf-8") as file:
                    json.dump({"results": results, "environment": env}, file, indent=1)
            with open(path, encoding="utf-8") as file:
                rows.append(row(json.load(file)["results"]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
