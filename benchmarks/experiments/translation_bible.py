"""Translation from scratch: concatenated against collaborative heads at equal key size.

The paper's translation claim, at small scale: a Transformer trained from
scratch with collaborative heads keeps its BLEU when the shared key size
shrinks (d, d/2, d/4, d/8), while concatenated heads with the same total key
size (each head `key size / num_heads` query/key dimensions, values
unchanged) lose it.

Every run is one call of the training package's entry point,
`collab_keras.training.run.train(RunConfig(task="nmt", ...))`, the run that
`collab-keras train nmt` makes: the offline English (King James) to German
(Schlachter 1951) Bible (30,447 training verses; the 301 test verses held out
by a hash of the reference), the zoo's `TransformerNMTSeq2SeqLM` on a
`TransformerNMTBackbone` architecture ("transformer_tiny": 2+2 layers, d 64,
4 heads), AdamW with linear warmup and cosine decay, a seeded data order.
The concatenated baseline at key size D is `attention="concatenate",
shared_key_dim=D` (at D = d: the standard layers), the collaborative model
`attention="collaborative", shared_key_dim=D`. One joint WordPiece
vocabulary is trained once and passed to every run as `vocabulary_file`.
BLEU, chrF (sacrebleu, through `collab_keras.training.evaluation`), the test
loss, the training loss and the training time are read from the
`metrics.json` each run writes; the test split is decoded with beam search
(`--beam-width`, 1: greedy).

Each run writes its folder under `<output-dir>/runs/`; a run whose folder
already holds its `metrics.json` is read instead of trained again (the JSON
counts `runs_trained` and `runs_read`), and an interrupted one resumes from
its last checkpoint, so rerunning the command completes an interrupted grid,
or, on a finished one, prints its table and draws its figures again.

    python benchmarks/experiments/translation_bible.py                # 8 configurations x 3 seeds: about 1 h on 2 shared CPU cores
    python benchmarks/experiments/translation_bible.py --quick        # 2 key sizes, 1 seed, 20 steps: a few minutes
"""

import argparse
import json
import os

import _common

from collab_keras.models import TransformerNMTBackbone
from collab_keras.training import data
from collab_keras.training import run
from collab_keras.training import tasks
from collab_keras.training import vocabulary as vocabularies
from collab_keras.training.config import RunConfig

METRICS = ["bleu", "chrf", "test_loss", "final_train_loss", "parameters", "query_key_parameters", "train_seconds"]
FORMATS = {
    "bleu": "{:.2f}",
    "chrf": "{:.2f}",
    "test_loss": "{:.3f}",
    "final_train_loss": "{:.3f}",
    "parameters": "{:,.0f}",
    "query_key_parameters": "{:,.0f}",
    "train_seconds": "{:.0f}",
}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="key sizes d, d/8, one seed, 20 steps, 32 test verses")
    parser.add_argument("--architecture", default="transformer_tiny")
    parser.add_argument("--key-sizes", default=None, help="default: d, d/2, d/4, d/8 of the architecture")
    parser.add_argument("--kinds", default="concatenate,collaborative")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=None, help="default: steps / 2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=4e-3)
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: steps / 10")
    parser.add_argument("--vocabulary-size", type=int, default=2000)
    parser.add_argument("--test-examples", type=int, default=301, help="test verses decoded (301: all)")
    parser.add_argument("--beam-width", type=int, default=1, help="1: greedy")
    parser.add_argument("--output-dir", default=None)
    quick = dict(seeds=1, steps=20, test_examples=32, vocabulary_size=1000)
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    architecture = TransformerNMTBackbone.architectures[args.architecture]
    d = architecture["hidden_dim"]
    if args.key_sizes is None:
        args.key_sizes = ",".join(str(d // f) for f in ((1, 8) if args.quick else (1, 2, 4, 8)))
    args.checkpoint_every = args.checkpoint_every or max(1, args.steps // 2)
    if args.warmup_steps is None:
        args.warmup_steps = args.steps // 10
    return args


def run_configs(args, vocabulary_file, runs_dir):
    """The `RunConfig` of every run: seeds x kinds x key sizes.

    The concatenated run at the full key size d is the standard model
    (`shared_key_dim=None`); its record says `shared_key_dim` d.
    """
    d = TransformerNMTBackbone.architectures[args.architecture]["hidden_dim"]
    configs = []
    # Seed by seed, so that an interrupted grid has every configuration.
    for seed in range(args.seeds):
        for kind in args.kinds.split(","):
            for size in (int(s) for s in args.key_sizes.split(",")):
                configs.append(
                    (
                        kind,
                        size,
                        RunConfig(
                            task="nmt",
                            output_dir=os.path.join(runs_dir, f"{kind}_{size}_seed{seed}"),
                            preset=args.architecture,
                            attention=kind,
                            shared_key_dim=None if (kind == "concatenate" and size == d) else size,
                            vocabulary_file=vocabulary_file,
                            sequence_length=args.sequence_length,
                            batch_size=args.batch_size,
                            steps=args.steps,
                            checkpoint_every=args.checkpoint_every,
                            learning_rate=args.learning_rate,
                            warmup_steps=args.warmup_steps,
                            seed=seed,
                            eval_examples=args.test_examples,
                            beam_width=args.beam_width,
                            export=False,
                        ),
                    )
                )
    return configs


def record(kind, size, config, metrics_file):
    """One flat record from a finished run's `metrics.json`."""
    with open(metrics_file) as f:
        saved = json.load(f)
    final, history = saved["final"], saved["history"]
    vocabulary = vocabularies.read(config.vocabulary_file)
    backbone = TransformerNMTBackbone.from_architecture(
        config.preset,
        vocabulary_size=len(vocabulary),
        attention=config.attention,
        shared_key_dim=config.shared_key_dim,
    )
    return {
        "kind": "concatenated" if kind == "concatenate" else "collaborative",
        "shared_key_dim": size,
        "seed": config.seed,
        "bleu": final["bleu"],
        "chrf": final["chrf"],
        "test_loss": final["test_loss"],
        "final_train_loss": history[-1]["loss"],
        "parameters": backbone.count_params() - sum(w.numpy().size for w in backbone.non_trainable_weights),
        "query_key_parameters": _common.query_key_parameters(backbone),
        "train_seconds": final["train_seconds"],
        "steps_per_second": final["steps_per_second"],
        "bleu_signature": final["bleu_signature"],
        "chrf_signature": final["chrf_signature"],
        "example": final["examples"][0],
        "run_dir": os.path.relpath(config.output_dir, _common.REPOSITORY),
    }


def main(argv=None):
    args = parse(argv)
    env = _common.environment()
    env["settings"] = vars(args)
    total = _common.Stopwatch()
    _common.print_header("Transformer from scratch, Bible English -> German", env)
    output_dir = args.output_dir or _common.default_output_dir()
    suffix = "_quick" if args.quick else ""
    os.makedirs(output_dir, exist_ok=True)

    # One vocabulary for every run, trained once as `collab-keras train` would.
    vocabulary_file = os.path.join(output_dir, f"vocabulary{suffix}.txt")
    watch = _common.Stopwatch()
    vocabulary = vocabularies.load_or_train(
        vocabulary_file,
        lambda: tasks.train_vocabulary("nmt", data.text_sample("nmt", data.load("nmt", "train")), args.vocabulary_size),
    )
    print(
        f"{args.architecture}, vocabulary {len(vocabulary)} tokens ({watch():.0f} s), {args.steps} steps of "
        f"{args.batch_size} pairs, length {args.sequence_length}, lr {args.learning_rate}, "
        f"{args.test_examples} test verses, beam {args.beam_width}\n",
        flush=True,
    )

    records = []
    env["runs_trained"] = env["runs_read"] = 0  # read: finished earlier
    for kind, size, config in run_configs(args, vocabulary_file, os.path.join(output_dir, f"runs{suffix}")):
        metrics_file = os.path.join(config.output_dir, "metrics.json")
        watch = _common.Stopwatch()
        if os.path.exists(metrics_file):
            env["runs_read"] += 1
        else:
            run.train(config)
            env["runs_trained"] += 1
            import keras

            keras.backend.clear_session()
        records.append(record(kind, size, config, metrics_file))
        r = records[-1]
        print(
            f"{kind} {size} seed {config.seed}: BLEU {r['bleu']:.2f} chrF {r['chrf']:.2f} "
            f"test loss {r['test_loss']:.3f} train loss {r['final_train_loss']:.3f}, "
            f"train {r['train_seconds']:.0f} s, run {watch():.0f} s",
            flush=True,
        )
        # Raw records so far, so that an interrupted grid keeps them.
        _common.save(output_dir, f"translation_bible{suffix}", {"environment": env, "records": records})

    rows = _common.summarize(records, METRICS)
    print(f"\n### Bible En->De test split ({args.test_examples} verses), {args.steps} steps, {args.seeds} seeds\n")
    print(_common.markdown_table(rows, METRICS, FORMATS))
    print(f"\n{records[0]['bleu_signature']}; {records[0]['chrf_signature']}")
    example = records[-1]["example"]
    print(f"example (last run): {example['source']!r} -> {example['translation']!r} (reference {example['reference']!r})")
    print(f"total time {total() / 60:.1f} min\n")
    for metric, label in (("bleu", "test BLEU"), ("chrf", "test chrF"), ("test_loss", "test loss (token cross-entropy)")):
        _common.plot(
            rows,
            metric,
            os.path.join(_common.FIGURES, f"results_translation_{metric}{suffix}.png"),
            f"{args.architecture} from scratch, Bible En->De, {args.steps} steps x {args.batch_size}, "
            f"{args.seeds} seeds",
            ylabel=label,
        )
    env["total_seconds"] = total()
    _common.save(output_dir, f"translation_bible{suffix}", {"environment": env, "records": records, "summary": rows})
    return records


if __name__ == "__main__":
    main()
