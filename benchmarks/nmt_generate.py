"""Times TransformerNMTSeq2SeqLM generation: compiled vs eager.

A benchmark, not a test. keras-hub's `generate` runs `generate_step` (the
sampler over the decoding cache) inside a `tf.function` on TensorFlow;
`compile(run_eagerly=True)` runs the same step eagerly. For each attention
and sampler: a `transformer_tiny`-sized model (random weights), a batch of
`--batch` sources of `--source-length` tokens, `--tokens` generated tokens
(no early stop); the median over `--repeats` runs after one warm-up call
(which traces and compiles), and the eager/compiled ratio. Both runs return
the same tokens (checked).

    python benchmarks/nmt_generate.py
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from collab_keras.models import TransformerNMTBackbone  # noqa: E402
from collab_keras.models import TransformerNMTSeq2SeqLM  # noqa: E402


def time_generate(model, inputs, repeats):
    model.generate(inputs, stop_token_ids=None)  # trace / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = model.generate(inputs, stop_token_ids=None)
        times.append(time.perf_counter() - start)
    return statistics.median(times), outputs["decoder_token_ids"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--source-length", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    length = args.tokens + 1  # the start token, then the generated ones
    inputs = {
        "encoder_token_ids": rng.integers(
            4, 1000, (args.batch, args.source_length)
        ).astype("int32"),
        "encoder_padding_mask": np.ones(
            (args.batch, args.source_length), "int32"
        ),
        "decoder_token_ids": np.pad(
            np.ones((args.batch, 1), "int32"), ((0, 0), (0, length - 1))
        ),
        "decoder_padding_mask": np.pad(
            np.ones((args.batch, 1), "int32"), ((0, 0), (0, length - 1))
        ),
    }
    print(
        f"transformer_tiny, batch {args.batch}, source {args.source_length}, "
        f"{args.tokens} tokens, backend {keras.config.backend()}"
    )
    print(f"{'attention':<14}{'sampler':<9}{'compiled s':>12}{'eager s':>10}"
          f"{'eager/compiled':>16}")
    for attention, shared_key_dim in (("concatenate", None),
                                      ("collaborative", 16)):
        keras.utils.set_random_seed(0)
        backbone = TransformerNMTBackbone.from_architecture(
            "transformer_tiny", attention=attention,
            shared_key_dim=shared_key_dim, dropout=0.0,
        )
        model = TransformerNMTSeq2SeqLM(backbone)
        for sampler in ("greedy", "beam"):
            model.compile(sampler=sampler)
            compiled, tokens = time_generate(model, inputs, args.repeats)
            model.compile(sampler=sampler, run_eagerly=True)
            eager, eager_tokens = time_generate(model, inputs, args.repeats)
            assert np.array_equal(tokens, eager_tokens)
            print(f"{attention:<14}{sampler:<9}{compiled:>12.3f}"
                  f"{eager:>10.3f}{eager / compiled:>16.1f}")


if __name__ == "__main__":
    main()
