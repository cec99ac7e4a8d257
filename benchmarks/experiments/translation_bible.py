"""Translation from scratch: concatenated against collaborative heads at equal key size.

The paper's translation claim, at small scale: a Transformer trained from
scratch with collaborative heads keeps its BLEU when the shared key size
shrinks (d/2, d/4, d/8, d/16), while concatenated heads with the same total
key size (each head `key size / num_heads` query/key dimensions, values
unchanged) lose it. Rows: concatenated heads at the full key size d (the
baseline), then both kinds at every `--key-sizes`; `--seeds` seeds each.

Every run is the run `collab-keras train nmt` makes: the offline English
(King James) to German (Schlachter 1951) Bible (30,447 training verses; the
301 test verses held out by a hash of the reference), the zoo's
`TransformerNMTSeq2SeqLM` on a `TransformerNMTBackbone` architecture
(`--architecture`: "transformer_tiny", 2+2 layers, d 64, on the CPU;
"transformer_small", 4+4 layers, d 256, sized to this data, on a GPU),
AdamW with linear warmup and cosine decay, a seeded data order. The
concatenated baseline at key size D is `attention="concatenate",
shared_key_dim=D` (at D = d: the standard layers), the collaborative model
`attention="collaborative", shared_key_dim=D`. Every run uses one joint
WordPiece vocabulary, and the test split is decoded with beam search
(`--beam-width`).

Two ways to run:

- Without `--data` (TensorFlow installed: the CPU): each run is
  `collab_keras.training.run.train(RunConfig(...))` in this process, one
  after the other, the vocabulary trained once into the output folder.
- With `--data DIR`, a folder written by `collab-keras prepare nmt` (its
  manifest decides the architecture, the vocabulary, the sequence length
  and the training verses): each run is a `collab-keras train nmt --data
  DIR ...` subprocess, `--parallel` of them at a time sharing the one card
  (each with `XLA_PYTHON_CLIENT_MEM_FRACTION` = `--memory-share` / parallel). TensorFlow
  is not needed: the GPU machine's JAX.

Each run writes its folder `<output-dir>/runs/<kind>_<size>_seed<k>/`; a
run whose folder holds its `metrics.json` is read instead of trained again,
an interrupted one resumes from its last checkpoint, and no run starts after
`--deadline` seconds: rerunning the command completes the grid, and on a
finished grid prints its table again. A `transformer_small` run's checkpoint
(weights and AdamW moments) is 115 MB (101 MB collaborative at d/4) and its `model/` 39 MB, too
large to carry to and from a GPU machine that takes 64 MiB a call: there
the unit is a run that finishes within one call, and `--archive FILE`
writes (again after every finished run) a .tar.gz of the output folder
without `checkpoints/`, `model/` and the learning curves' figures: the
records to carry back.

The table (mean ± std over seeds), printed last and written to
`translation_bible.json` with every run's record: BLEU and chrF with
sacrebleu's signatures, the test loss, parameters, training seconds, and the
step and seconds at which a run's validation loss first reached the
baseline's final one (mean over its seeds; read from each run's learning
curves; NaN where a seed never did); before it, sacrebleu's paired bootstrap
test (`sacrebleu.significance.PairedTest`, 1,000 resamples) of each
collaborative run against the concatenated run of the same key size and
seed, on the test translations every run saves (`test_translations.jsonl`).

    python benchmarks/experiments/translation_bible.py                # 9 configurations x 3 seeds on the CPU
    python benchmarks/experiments/translation_bible.py --quick        # d and d/8, 1 seed, 20 steps: a few minutes
    collab-keras prepare nmt --output-dir DATA --preset transformer_small --vocabulary-size 8000 --sequence-length 128
    KERAS_BACKEND=jax python benchmarks/experiments/translation_bible.py --data DATA --parallel 4 \\
        --deadline 300 --mixed-precision --label-smoothing 0.1 --archive records.tar.gz   # the GPU
"""

import argparse
import json
import math
import os
import statistics
import time

import _common

from collab_keras.models import TransformerNMTBackbone
from collab_keras.training import data
from collab_keras.training import prepared
from collab_keras.training import tasks
from collab_keras.training import vocabulary as vocabularies
from collab_keras.training.config import RunConfig

METRICS = ["bleu", "chrf", "test_loss", "parameters", "query_key_parameters", "train_seconds",
           "steps_to_baseline", "seconds_to_baseline"]
# The table's columns: `reached_baseline` counts the seeds whose validation
# loss reached the baseline's (`summarize_time_to_baseline`).
TABLE_METRICS = METRICS[:-2] + ["reached_baseline"] + METRICS[-2:]
FORMATS = {
    "bleu": "{:.2f}",
    "chrf": "{:.2f}",
    "test_loss": "{:.3f}",
    "parameters": "{:,.0f}",
    "query_key_parameters": "{:,.0f}",
    "train_seconds": "{:.0f}",
    "steps_to_baseline": "{:.0f}",
    "seconds_to_baseline": "{:.0f}",
    "reached_baseline": "{:.0f}",
}
# The data options a prepared folder's manifest decides, besides the
# architecture and the sequence length (RunConfig fields).
DATA_OPTIONS = ("dataset", "source", "target", "max_train_examples", "vocabulary_size")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="key sizes d, d/8, one seed, 20 steps, 32 test verses")
    _common.add_grid_arguments(parser, "nmt")  # --data: architecture, vocabulary, length and verses from it
    parser.add_argument("--architecture", default="transformer_tiny", help="without --data")
    parser.add_argument("--key-sizes", default=None,
                        help="default: d/2, d/4, d/8, d/16 of the architecture (the baseline d always runs)")
    parser.add_argument("--kinds", default="concatenate,collaborative")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=None, help="default: steps / 2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=48, help="without --data")
    parser.add_argument("--learning-rate", type=float, default=4e-3)
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: steps / 10")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    parser.add_argument("--vocabulary-size", type=int, default=2000, help="without --data")
    parser.add_argument("--test-examples", type=int, default=301, help="test verses decoded (301: all)")
    parser.add_argument("--beam-width", type=int, default=4, help="1: greedy")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--figures", default=_common.FIGURES, help="where the figures go")
    quick = dict(seeds=1, steps=20, test_examples=32, vocabulary_size=1000)
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    _common.check_grid_arguments(args)
    if args.data is not None:
        options = prepared.read_manifest(args.data)["options"]
        if options["preset"] not in TransformerNMTBackbone.architectures:
            raise ValueError(
                "`--data` must be prepared for an architecture of TransformerNMTBackbone "
                f"({', '.join(sorted(TransformerNMTBackbone.architectures))}). "
                f"Received: data={args.data!r} with preset={options['preset']!r}"
            )
        for name, value in (("architecture", options["preset"]), ("sequence_length", options["sequence_length"]),
                            ("vocabulary_size", options["vocabulary_size"])):
            given = getattr(args, name)
            if given != parser.get_default(name) and given != value:
                raise ValueError(
                    f"With --data, `{name}` is the prepared folder's ({value!r}); leave it out or prepare "
                    f"another folder. Received: {name}={given!r}, data={args.data!r}"
                )
            setattr(args, name, value)
    d = TransformerNMTBackbone.architectures[args.architecture]["hidden_dim"]
    if args.key_sizes is None:
        args.key_sizes = ",".join(str(d // f) for f in ((8,) if args.quick else (2, 4, 8, 16)))
    args.checkpoint_every = args.checkpoint_every or max(1, args.steps // 2)
    if args.warmup_steps is None:
        args.warmup_steps = args.steps // 10
    return args


def run_configs(args, vocabulary_file, runs_dir):
    """The `(kind, key size, RunConfig)` of every run: the concatenated
    baseline at d, then every kind at every key size, seed after seed.

    The concatenated run at the full key size d is the standard model
    (`shared_key_dim=None`); its record says `shared_key_dim` d. With
    `args.data` the runs train from that prepared folder, with the data
    options of its manifest.
    """
    d = TransformerNMTBackbone.architectures[args.architecture]["hidden_dim"]
    rows = [("concatenate", d)]
    for size in (int(s) for s in args.key_sizes.split(",")):
        rows += [(kind, size) for kind in args.kinds.split(",") if (kind, size) not in rows]
    options = {} if args.data is None else {
        k: v for k, v in prepared.read_manifest(args.data)["options"].items() if k in DATA_OPTIONS}
    configs = []
    # Seed by seed, so that an interrupted grid has every configuration.
    for seed in range(args.seeds):
        for kind, size in rows:
            config = RunConfig(
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
                label_smoothing=args.label_smoothing,
                mixed_precision=args.mixed_precision,
                seed=seed,
                data=args.data,
                eval_examples=args.test_examples,
                beam_width=args.beam_width,
                export=False,
                **options,
            )
            configs.append((kind, size, config))
    return configs


def record(kind, size, config):
    """One flat record from a finished run's folder (`metrics.json`, its
    history, `vocabulary.txt`)."""
    final, history = _common.run_metrics(config)
    vocabulary = vocabularies.read(os.path.join(config.output_dir, "vocabulary.txt"))
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
        "final_validation_loss": history[-1].get("val_loss"),
        "parameters": backbone.count_params() - sum(w.numpy().size for w in backbone.non_trainable_weights),
        "query_key_parameters": _common.query_key_parameters(backbone),
        # All training seconds (over resumes) where the history has them.
        "train_seconds": history[-1].get("seconds", final["train_seconds"]),
        "steps_per_second": final["steps_per_second"],
        "tokens_per_second": final.get("tokens_per_second"),
        "bleu_signature": final["bleu_signature"],
        "chrf_signature": final["chrf_signature"],
        "example": final["examples"][0],
        "history": [{k: h.get(k) for k in ("step", "seconds", "loss", "val_loss")} for h in history],
        "run_dir": config.output_dir,
    }


def add_time_to_baseline(records, baseline_dim):
    """Sets each record's `steps_to_baseline` / `seconds_to_baseline`: the
    first checkpoint whose validation loss is at most the concatenated
    full-width baseline's final one (mean over its seeds); NaN if none.
    Returns that target loss (None without finished baseline runs)."""
    finals = [r["final_validation_loss"] for r in records
              if (r["kind"], r["shared_key_dim"]) == ("concatenated", baseline_dim)
              and r["final_validation_loss"] is not None]
    target = sum(finals) / len(finals) if finals else None
    for r in records:
        reached = [h for h in r["history"] if target is not None and h["val_loss"] is not None
                   and h["val_loss"] <= target]
        r["steps_to_baseline"] = reached[0]["step"] if reached else math.nan
        seconds = reached[0]["seconds"] if reached else None
        r["seconds_to_baseline"] = math.nan if seconds is None else seconds
    return target


def summarize_time_to_baseline(rows, records):
    """Sets each summary row's `reached_baseline` (how many of its seeds
    reached the baseline's validation loss) and its `steps_to_baseline` /
    `seconds_to_baseline` as mean and standard deviation over those seeds
    (NaN where none did), so that one seed that does not reach it leaves
    the others' times in the table."""
    for row in rows:
        group = [r for r in records
                 if (r["kind"], r["shared_key_dim"]) == (row["kind"], row["shared_key_dim"])]
        reached = [r for r in group if not math.isnan(r["steps_to_baseline"])]
        row["reached_baseline"], row["reached_baseline_std"] = len(reached), 0.0
        for metric in ("steps_to_baseline", "seconds_to_baseline"):
            values = [r[metric] for r in reached]
            row[metric] = statistics.mean(values) if values else math.nan
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return rows


def translations(run_dir):
    with open(os.path.join(run_dir, "test_translations.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def paired_bootstrap(records, samples=1000):
    """sacrebleu's paired bootstrap test of every collaborative run against
    the concatenated run of the same key size and seed, on their test
    translations: one dict per pair (BLEU and chrF of both, p-values) and
    the test's signatures."""
    import sacrebleu
    from sacrebleu.significance import PairedTest

    by_key = {(r["kind"], r["shared_key_dim"], r["seed"]): r for r in records}
    results, signatures = [], {}
    for (kind, dim, seed), collaborative in sorted(by_key.items()):
        concatenated = by_key.get(("concatenated", dim, seed))
        if kind != "collaborative" or concatenated is None:
            continue
        baseline, system = translations(concatenated["run_dir"]), translations(collaborative["run_dir"])
        references = [t["reference"] for t in baseline]
        if references != [t["reference"] for t in system]:
            raise ValueError(
                "Paired runs must translate the same test verses (same --test-examples). "
                f"Received: {concatenated['run_dir']!r} and {collaborative['run_dir']!r}")
        test = PairedTest(
            [("concatenated", [t["translation"] for t in baseline]),
             ("collaborative", [t["translation"] for t in system])],
            {"BLEU": sacrebleu.BLEU(), "chrF": sacrebleu.CHRF()},
            references=[references], test_type="bs", n_samples=samples)
        signatures, scores = test()
        (bleu_name, bleu), (chrf_name, chrf) = [(k, v) for k, v in scores.items() if k != "System"]
        results.append({
            "shared_key_dim": dim, "seed": seed,
            "bleu_concatenated": bleu[0].score, "bleu_collaborative": bleu[1].score, "p_bleu": bleu[1].p_value,
            "chrf_concatenated": chrf[0].score, "chrf_collaborative": chrf[1].score, "p_chrf": chrf[1].p_value,
        })
    return results, {name: str(signature) for name, signature in signatures.items()}


def bootstrap_table(results):
    lines = ["| shared_key_dim | seed | BLEU concatenated | BLEU collaborative | p | chrF concatenated | "
             "chrF collaborative | p |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['shared_key_dim']} | {r['seed']} | {r['bleu_concatenated']:.2f} | "
                     f"{r['bleu_collaborative']:.2f} | {r['p_bleu']:.4f} | {r['chrf_concatenated']:.2f} | "
                     f"{r['chrf_collaborative']:.2f} | {r['p_chrf']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    env = _common.environment()
    env["settings"] = vars(args)
    total = _common.Stopwatch()
    started = time.time()
    _common.print_header("Transformer from scratch, Bible English -> German", env)
    output_dir = os.path.abspath(args.output_dir or _common.default_output_dir())
    suffix = "_quick" if args.quick else ""
    os.makedirs(output_dir, exist_ok=True)
    _common.check_archive(args, output_dir)

    vocabulary_file = None
    if args.data is None:
        # One vocabulary for every run, trained once as `collab-keras train` would.
        vocabulary_file = os.path.join(output_dir, f"vocabulary{suffix}.txt")
        watch = _common.Stopwatch()
        vocabularies.load_or_train(
            vocabulary_file,
            lambda: tasks.train_vocabulary(
                "nmt", data.text_sample("nmt", data.load("nmt", "train")), args.vocabulary_size),
        )
        print(f"vocabulary trained or read in {watch():.0f} s", flush=True)
    print(
        f"{args.architecture}, vocabulary {args.vocabulary_size} tokens, {args.steps} steps of "
        f"{args.batch_size} pairs, length {args.sequence_length}, lr {args.learning_rate}, warmup "
        f"{args.warmup_steps}, label smoothing {args.label_smoothing}, {args.test_examples} test verses, "
        f"beam {args.beam_width}" + (f", from {args.data}, {args.parallel} at a time" if args.data else "") + "\n",
        flush=True,
    )

    configs = run_configs(args, vocabulary_file, os.path.join(output_dir, f"runs{suffix}"))
    not_started = _common.run_grid([c for _, _, c in configs], args, output_dir, started, env)

    records = [record(kind, size, config) for kind, size, config in configs if _common.finished(config)]
    if not records:
        print("no finished runs yet")
        return records
    d = TransformerNMTBackbone.architectures[args.architecture]["hidden_dim"]
    target = add_time_to_baseline(records, d)
    for r in records:
        print(f"{r['kind']} {r['shared_key_dim']} seed {r['seed']}: BLEU {r['bleu']:.2f} chrF {r['chrf']:.2f} "
              f"test loss {r['test_loss']:.3f} validation loss {r['final_validation_loss'] or math.nan:.3f}, "
              f"train {r['train_seconds']:.0f} s")
    bootstrap, bootstrap_signatures = paired_bootstrap(records)
    rows = summarize_time_to_baseline(_common.summarize(records, METRICS), records)
    for metric, label in (("bleu", "test BLEU"), ("chrf", "test chrF"), ("test_loss", "test loss (token cross-entropy)")):
        _common.plot(
            rows,
            metric,
            os.path.join(args.figures, f"results_translation_{metric}{suffix}.png"),
            f"{args.architecture} from scratch, Bible En->De, {args.steps} steps x {args.batch_size}, "
            f"{args.seeds} seeds",
            ylabel=label,
        )
    env["total_seconds"] = total()
    _common.save(output_dir, f"translation_bible{suffix}",
                 {"environment": env, "records": records, "summary": rows, "baseline_validation_loss": target,
                  "paired_bootstrap": bootstrap, "paired_bootstrap_signatures": bootstrap_signatures})
    if args.archive is not None:
        _common.write_archive(output_dir, args.archive)
    example = records[-1]["example"]
    print(f"\nexample (last run): {example['source']!r} -> {example['translation']!r} "
          f"(reference {example['reference']!r})")
    print(f"total time {total() / 60:.1f} min, {env['runs_trained']} runs trained, {env['runs_read']} read, "
          f"{env['runs_failed']} failed, {len(not_started)} not started")
    if bootstrap:
        print("\n### Paired bootstrap: collaborative against concatenated at the same key size and seed\n")
        print(bootstrap_table(bootstrap))
        print("\n" + "; ".join(bootstrap_signatures.values()))
    print(f"\n### Bible En->De test split ({args.test_examples} verses), {args.architecture}, {args.steps} steps, "
          f"{args.seeds} seeds; baseline validation loss {target if target is None else round(target, 3)}\n")
    print(_common.markdown_table(rows, TABLE_METRICS, FORMATS))
    print(f"\n{records[0]['bleu_signature']}; {records[0]['chrf_signature']}")
    return records


if __name__ == "__main__":
    main()
