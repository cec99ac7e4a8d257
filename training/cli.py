"""The `collab-keras` command (also `python -m collab_keras.training`).

    collab-keras train TASK --output-dir DIR [options]   train, or resume DIR
    collab-keras prepare TASK --output-dir DATA [data options]   token arrays for --data
    collab-keras train TASK --data DATA --output-dir DIR [options]   train from them (no TensorFlow)
    collab-keras train --config DIR/config.json          repeat / resume a run
    collab-keras preset --run DIR --output-dir PRESET [--dtype float16]   a finished nmt run as a translator preset
    collab-keras preset --from-preset NAME --shared-key-dim R --output-dir PRESET   ... with a smaller shared key
    collab-keras translate --model DIR | --server HOST:PORT | --preset NAME ...   text in, text out
    collab-keras demo                                    the README's comparison

TASK is nmt, bert-mlm, bert-classify or vit. See docs/training.md.
"""

import argparse
import dataclasses
import os
import signal
import sys

from collab_keras.training import data
from collab_keras.training import prepared
from collab_keras.training import tasks
from collab_keras.training.config import CALIBRATIONS
from collab_keras.training.config import STRATEGIES
from collab_keras.training.config import RunConfig


def _data_arguments(p, defaults):
    """The flags that decide a task's data (shared by train and prepare)."""
    p.add_argument("--preset", help="architecture name (random init) or pretrained preset")
    p.add_argument("--dataset", help="a dataset name (default: the offline one)")
    p.add_argument("--data-dir", help="tensorflow-datasets data folder")
    p.add_argument("--source", help="bible.db source version (default k, English KJV)")
    p.add_argument("--target", help="bible.db target version (default s, German Schlachter)")
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--vocabulary-file",
                   help="use this vocabulary (one token a line) instead of training one")
    p.add_argument("--vocabulary-size", type=int, default=defaults.vocabulary_size)
    p.add_argument("--sequence-length", type=int, default=defaults.sequence_length)


def _prepare_parser(subparsers):
    p = subparsers.add_parser(
        "prepare",
        help="tokenize a task's splits once into arrays for `train --data` (needs TensorFlow)",
        description="Write a task's splits as token arrays, its vocabulary and a "
                    "manifest into a new or empty folder (see docs/training.md).",
    )
    p.add_argument("task", choices=prepared.TASKS, help="whose data")
    p.add_argument("--output-dir", required=True, help="a new or empty folder")
    _data_arguments(p, RunConfig(task="nmt", output_dir="-"))
    return p


def _preset_parser(subparsers):
    p = subparsers.add_parser(
        "preset",
        help="a finished nmt run, or a translator preset with a smaller shared key, as a "
             "translator preset (keras-hub preset folder)",
        description="Save a finished `train nmt` run's model as a keras-hub preset folder, "
                    "or compress a collaborative translator preset to a smaller "
                    "--shared-key-dim (no training); scored on the test split of the "
                    "run or source preset (see docs/training.md).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="the run folder of `collab-keras train nmt`")
    source.add_argument("--from-preset", help="a collaborative translator preset (folder or "
                                              "name) to compress to --shared-key-dim")
    p.add_argument("--output-dir", required=True,
                   help="a new or empty folder, or a previous translator preset (replaced)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the saved weights (float16: half the size; loads as float32)")
    p.add_argument("--shared-key-dim", type=int,
                   help="with --from-preset: the new shared key width")
    p.add_argument("--calibration-examples", type=int, default=256,
                   help="with --from-preset: training pairs the conversion is fitted on "
                        "(0: the weights alone)")
    p.add_argument("--eval-examples", type=int,
                   help="test verses translated to score the preset (default: the source's)")
    p.add_argument("--beam-width", type=int,
                   help="beams of those translations (default: the source's)")
    return p


def _train_parser(subparsers):
    defaults = RunConfig(task="nmt", output_dir="-")
    p = subparsers.add_parser(
        "train",
        help="train a zoo model (or resume the run in --output-dir)",
        description="Train a zoo model; a folder holding the same run is resumed.",
    )
    p.add_argument("task", nargs="?", choices=data.TASKS, help="what to train")
    p.add_argument("--config", help="a run's config.json: repeat or resume that run")
    p.add_argument("--output-dir", help="where the run writes (required without --config)")
    _data_arguments(p, defaults)
    p.add_argument("--data", help="a folder written by `collab-keras prepare`: train from "
                                  "its arrays (no TensorFlow on JAX and torch)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an architecture argument, e.g. --set num_layers=2")
    p.add_argument("--attention", choices=("concatenate", "collaborative"),
                   default=defaults.attention)
    p.add_argument("--shared-key-dim", type=int,
                   help="total query/key width D̃_k: shared by collaborative heads, "
                        "or split across concatenated heads (reduced-key baseline)")
    p.add_argument("--calibration", choices=CALIBRATIONS, default=defaults.calibration,
                   help="what the conversion of a pretrained preset to collaborative heads "
                        "fits on: auto (synthetic inputs below the full width), none "
                        "(the weights alone), synthetic, train (the first "
                        "--calibration-examples training examples)")
    p.add_argument("--calibration-examples", type=int, default=defaults.calibration_examples)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help="global batch size, divided across replicas")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                   help="peak of the warmup + cosine decay schedule")
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--clip-norm", type=float, default=defaults.clip_norm,
                   help="gradient clipping by global norm (0: off)")
    p.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing,
                   help="nmt: label smoothing of the token loss, in [0, 1)")
    p.add_argument("--augment-shift", type=int, default=defaults.augment_shift,
                   help="vit with --data: shift each training image by up to N pixels "
                        "(random, per image; 0: off)")
    p.add_argument("--early-stopping-patience", type=int,
                   help="stop after this many checkpoints without a better validation score "
                        "(accuracy; nmt, bert-mlm: loss) and end with the best checkpoint's "
                        "weights (default: off)")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                   help="XLA compilation (default: Keras' auto)")
    p.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy)
    p.add_argument("--model-parallel", type=int, default=defaults.model_parallel,
                   help="model-axis size of --strategy model-parallel (JAX)")
    p.add_argument("--cpu-devices", type=int,
                   help="split the CPU into N logical devices (TensorFlow)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--deterministic", action="store_true",
                   help="TensorFlow op determinism (bitwise-reproducible)")
    p.add_argument("--eval-examples", type=int, default=defaults.eval_examples)
    p.add_argument("--beam-width", type=int, default=defaults.beam_width)
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="do not export a SavedModel for TF Serving")
    p.add_argument("--peak-tflops", type=float,
                   help="peak TFLOP/s of one device, for the MFU (default: 790, "
                        "bfloat16 on an H100-class GPU, when training on GPUs)")
    return p


def config_from_args(args, parser=None):
    """The `RunConfig` of parsed `train` arguments.

    With `--config`, relative paths in the file are read relative to its
    folder, and no other flag may be given (the file says how the run goes);
    `--output-dir` may, to repeat the run in another folder. With `--data`,
    the data flags not given (`--preset`, `--vocabulary-size`, ...) are the
    ones the folder was prepared with.
    """
    names = {f.name for f in dataclasses.fields(RunConfig)}
    if args.config:
        if parser is not None:
            given = sorted(
                "--" + name.replace("_", "-") for name, value in vars(args).items()
                if name in names - {"output_dir"} and value != parser.get_default(name)
            )
            if args.task is not None or args.set:
                given = ["TASK" if args.task is not None else "--set"] + given
            if given:
                raise ValueError(
                    "With --config the run's settings come from the file; change "
                    f"them there. Received: {' '.join(given)} with config={args.config!r}"
                )
        try:
            with open(args.config, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(
                f"Cannot read the run config ({error}). Received: config={args.config!r}"
            ) from error
        changes = {} if args.output_dir is None else {"output_dir": args.output_dir}
        base_dir = os.path.dirname(os.path.abspath(args.config))
        return RunConfig.from_json(text, base_dir, **changes)
    if args.task is None or args.output_dir is None:
        raise ValueError(
            "`train` needs TASK and --output-dir (or --config). "
            f"Received: task={args.task!r}, output_dir={args.output_dir!r}"
        )
    values = {k: v for k, v in vars(args).items() if k in names}
    values["overrides"] = tasks.parse_overrides(args.set)
    if args.data is not None and parser is not None:
        # The data flags not given default to what the folder was prepared
        # with; a flag given and different is refused when the run loads it.
        from collab_keras.training import prepared

        recorded = prepared.read_manifest(args.data)["options"]
        for name, value in recorded.items():
            if name in names and name != "task" and values[name] == parser.get_default(name):
                values[name] = value
    return RunConfig(**values)


def _exit_on_sigterm(signum, frame):
    """SIGTERM ends the command as Ctrl-C does: through Python's cleanup, so
    a file being written is removed, not left half-written."""
    raise KeyboardInterrupt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["translate"]:
        from collab_keras.training.serving import translate_main

        sys.exit(translate_main(argv[1:]))
    parser = argparse.ArgumentParser(prog="collab-keras", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _train_parser(subparsers)
    _prepare_parser(subparsers)
    _preset_parser(subparsers)
    subparsers.add_parser(
        "translate", help="translate with an exported model or a preset (see --help of it)"
    )
    demo = subparsers.add_parser("demo", help="the README's NMT comparison", add_help=False)
    demo.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from collab_keras.training import demo as demo_module

        demo_module.main(args.rest)
        return None
    try:
        if args.command == "prepare":
            names = {f.name for f in dataclasses.fields(RunConfig)}
            config = RunConfig(**{k: v for k, v in vars(args).items() if k in names})
        elif args.command == "train":
            config = config_from_args(args, subparsers.choices["train"])
    except ValueError as error:
        parser.error(str(error))
    from collab_keras.training import run

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.command == "prepare":
            manifest = prepared.prepare(config)
            print(f"{config.output_dir}: {manifest['splits']}")
            return None
        if args.command == "preset":
            from collab_keras.training import preset

            if args.run is not None:
                if args.shared_key_dim is not None:
                    raise ValueError("`--shared-key-dim` applies to --from-preset; a run's "
                                     "preset keeps its model. Received: --shared-key-dim "
                                     f"{args.shared_key_dim} with --run {args.run}")
                results = preset.make_preset(args.run, args.output_dir, args.dtype,
                                             args.eval_examples, args.beam_width)
            else:
                if args.shared_key_dim is None:
                    raise ValueError("`--from-preset` needs --shared-key-dim, the new shared "
                                     f"key width. Received: --from-preset {args.from_preset}")
                results = preset.compress_preset(
                    args.from_preset, args.output_dir, args.shared_key_dim, args.dtype,
                    args.calibration_examples, args.eval_examples, args.beam_width)
            print(preset.summary(args.output_dir, results))
            return None
        metrics = run.train(config)
    except (ValueError, RuntimeError) as error:
        print(f"collab-keras: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # a full or read-only disk, a missing file
        print(f"collab-keras: error: {run.describe_os_error(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("collab-keras: interrupted; the last checkpoint is kept (rerun the "
              "same command to resume).", file=sys.stderr)
        sys.exit(130)
    print(run.summary(metrics))
    return None  # console scripts exit with main()'s value


if __name__ == "__main__":
    main()
