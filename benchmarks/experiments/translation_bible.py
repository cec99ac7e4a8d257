"""Translation from scratch: concatenated against collaborative heads at equal key size.

The paper's translation claim, at small scale: a Transformer trained from
scratch with collaborative heads keeps its BLEU when the shared key size
shrinks (d, d/2, d/4, d/8), while concatenated heads with the same total key
size (each head `key size / num_heads` query/key dimensions, values
unchanged) lose it.

Data: the offline English (King James) to German (Schlachter 1951) Bible of
the training package (`collab_keras.training.data.load("nmt", split)`: 30,447
training verses, the 302 test verses held out by a hash of the reference).
Model: the zoo's `TransformerNMTSeq2SeqLM` on a `TransformerNMTBackbone`
("transformer_tiny": 2+2 layers, d 64, 4 heads), one joint WordPiece
vocabulary (`TransformerNMTTokenizer.train`) trained once on training verses
and shared by every run. Every run takes the same number of optimizer steps
with the same schedule and batch order for a given seed; the seed sets the
initialization, dropout and the batch order (a model is compiled once per
configuration and restarted from each seed's initialization). Scores:
sacrebleu BLEU and chrF (`collab_keras.training.evaluation`) of the test
split decoded greedily.

The concatenated baseline at key size D: `keras.layers.MultiHeadAttention`
with `D / num_heads` query/key dimensions per head (values unchanged) in the
encoder; in the decoder the same heads as a collaborative layer with frozen
block one-hot mixing (`_common.CachedConcatenatedHeads`), since keras-hub's
decoding cache needs keys and values of one size.

    python benchmarks/experiments/translation_bible.py           # 8 configurations x 3 seeds: about 25 min on 2 shared CPU cores
    python benchmarks/experiments/translation_bible.py --quick   # 2 key sizes, 1 seed, 40 steps: a few minutes
"""

import argparse
import os

import _common
import numpy as np

import keras
import keras_hub

from collab_keras.models import TransformerNMTBackbone
from collab_keras.models import TransformerNMTSeq2SeqLM
from collab_keras.models import TransformerNMTSeq2SeqLMPreprocessor
from collab_keras.models import TransformerNMTTokenizer
from collab_keras.training import data
from collab_keras.training import evaluation


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="key sizes d, d/8, one seed, 40 steps, 64 test verses")
    parser.add_argument("--architecture", default="transformer_tiny")
    parser.add_argument("--key-sizes", default=None, help="default: d, d/2, d/4, d/8 of the architecture")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--vocabulary-size", type=int, default=4000)
    parser.add_argument("--vocabulary-verses", type=int, default=10000, help="training verses the vocabulary sees")
    parser.add_argument("--test-examples", type=int, default=302, help="test verses decoded (302: all)")
    parser.add_argument("--beam-width", type=int, default=1, help="1: greedy")
    parser.add_argument("--output-dir", default=None)
    args = _common.parse_args(parser, dict(seeds=1, steps=40, test_examples=64))
    architecture = TransformerNMTBackbone.architectures[args.architecture]
    d = architecture["hidden_dim"]
    num_heads = architecture["num_heads"]
    if args.key_sizes is None:
        args.key_sizes = ",".join(str(d // f) for f in ((1, 8) if args.quick else (1, 2, 4, 8)))
    sizes = [int(s) for s in args.key_sizes.split(",")]
    env = _common.environment()
    env["settings"] = vars(args)
    total = _common.Stopwatch()
    _common.print_header("Transformer from scratch, Bible English -> German", env)

    train = data.load("nmt", "train")
    test_pairs = list(data.load("nmt", "test").take(args.test_examples).as_numpy_iterator())
    sources = [s.decode() for s, _ in test_pairs]
    references = [t.decode() for _, t in test_pairs]
    sample = list(train.take(args.vocabulary_verses).as_numpy_iterator())
    watch = _common.Stopwatch()
    tokenizer = TransformerNMTTokenizer.train(
        [s.decode() for pair in sample for s in pair], args.vocabulary_size
    )
    print(
        f"{args.architecture} (d {d}, {num_heads} heads), vocabulary {tokenizer.vocabulary_size()} "
        f"(trained on {len(sample)} verse pairs in {watch():.0f} s), {args.steps} steps of "
        f"{args.batch_size} pairs, length {args.sequence_length}, {len(sources)} test verses, "
        f"beam {args.beam_width}\n",
        flush=True,
    )
    preprocessor = TransformerNMTSeq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=args.sequence_length, decoder_sequence_length=args.sequence_length
    )
    # Tokenized once for every run: the training pairs that `steps` batches
    # need, shuffled per seed below.
    pairs = list(train.take(args.steps * args.batch_size).as_numpy_iterator())
    x_train, y_train, w_train = preprocessor(
        {"encoder_text": [s for s, _ in pairs], "decoder_text": [t for _, t in pairs]}
    )
    x_train, y_train, w_train = keras.tree.map_structure(np.asarray, (x_train, y_train, w_train))

    def backbone(kind, size):
        return TransformerNMTBackbone.from_architecture(
            args.architecture,
            vocabulary_size=tokenizer.vocabulary_size(),
            max_sequence_length=args.sequence_length,
            attention=kind if kind == "collaborative" else _common.reduced_key_attention,
            shared_key_dim=size,
        )

    suffix = "_quick" if args.quick else ""
    output_dir = args.output_dir or _common.default_output_dir()
    records = []
    for kind in ("concatenate", "collaborative"):
        for size in sizes:
            # Compiled once per configuration (training on token ids, and
            # generation from text on the same backbone); each seed restarts
            # it from that seed's initialization (see `_common.Restarter`).
            shared = backbone(kind, size)
            model = TransformerNMTSeq2SeqLM(shared, preprocessor=None)
            warmup = max(1, args.steps // 10)
            schedule = keras.optimizers.schedules.CosineDecay(
                0.0, args.steps - warmup, alpha=0.1, warmup_target=args.learning_rate, warmup_steps=warmup
            )
            model.compile(optimizer=keras.optimizers.AdamW(schedule, clipnorm=1.0))
            restarter = _common.Restarter(model)
            translator = TransformerNMTSeq2SeqLM(shared, preprocessor)
            translator.compile(
                sampler="greedy" if args.beam_width == 1 else keras_hub.samplers.BeamSampler(args.beam_width)
            )
            for seed in range(args.seeds):
                keras.utils.set_random_seed(seed)
                restarter.restart(TransformerNMTSeq2SeqLM(backbone(kind, size), preprocessor=None))
                order = np.random.default_rng(seed).permutation(len(y_train))
                take = lambda tree: keras.tree.map_structure(lambda a: a[order], tree)  # noqa: E731
                watch = _common.Stopwatch()
                history = model.fit(
                    take(x_train), take(y_train), sample_weight=take(w_train),
                    batch_size=args.batch_size, epochs=1, verbose=0,
                )
                train_seconds = watch()
                watch = _common.Stopwatch()
                hypotheses = []
                for start in range(0, len(sources), 64):
                    decoded = translator.generate(sources[start : start + 64])
                    hypotheses += [str(text).strip() for text in np.asarray(decoded).reshape(-1)]
                decode_seconds = watch()
                scores = evaluation.translation_scores(hypotheses, references)
                records.append(
                    {
                        "kind": "concatenated" if kind == "concatenate" else "collaborative",
                        "shared_key_dim": size,
                        "seed": seed,
                        "bleu": scores["bleu"],
                        "chrf": scores["chrf"],
                        "final_train_loss": float(history.history["loss"][-1]),
                        "parameters": int(model.count_params()),
                        "query_key_parameters": _common.query_key_parameters(model),
                        "train_seconds": train_seconds,
                        "decode_seconds": decode_seconds,
                        "bleu_signature": scores["bleu_signature"],
                        "chrf_signature": scores["chrf_signature"],
                        "example": {"source": sources[0], "reference": references[0], "translation": hypotheses[0]},
                    }
                )
                print(
                    f"seed {seed} {kind} {size}: BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f} "
                    f"loss {records[-1]['final_train_loss']:.3f}, train {train_seconds:.0f} s, "
                    f"decode {decode_seconds:.0f} s",
                    flush=True,
                )
            keras.backend.clear_session()
            # Raw records so far, so that an interrupted run keeps them.
            _common.save(output_dir, f"translation_bible{suffix}", {"environment": env, "records": records})
    metrics = ["bleu", "chrf", "final_train_loss", "parameters", "query_key_parameters", "train_seconds"]
    rows = _common.summarize(records, metrics)
    print(f"\n### Bible En->De test split ({len(sources)} verses), {args.steps} steps, {args.seeds} seeds\n")
    print(
        _common.markdown_table(
            rows,
            metrics,
            {
                "bleu": "{:.2f}",
                "chrf": "{:.2f}",
                "final_train_loss": "{:.3f}",
                "parameters": "{:,.0f}",
                "query_key_parameters": "{:,.0f}",
                "train_seconds": "{:.0f}",
            },
        )
    )
    print(f"\n{records[0]['bleu_signature']}; {records[0]['chrf_signature']}")
    example = records[-1]["example"]
    print(f"example (last run): {example['source']!r} -> {example['translation']!r} (reference {example['reference']!r})")
    print(f"total time {total() / 60:.1f} min\n")
    for metric in ("bleu", "chrf"):
        _common.plot(
            rows,
            metric,
            os.path.join(_common.FIGURES, f"results_translation_{metric}{suffix}.png"),
            f"{args.architecture} from scratch, Bible En->De, {args.steps} steps, {args.seeds} seeds",
            ylabel=f"test {metric.upper() if metric == 'bleu' else 'chrF'}",
        )
    env["total_seconds"] = total()
    _common.save(
        output_dir,
        f"translation_bible{suffix}",
        {"environment": env, "records": records, "summary": rows},
    )


if __name__ == "__main__":
    main()
