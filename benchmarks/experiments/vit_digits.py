"""ViT from scratch: concatenated against collaborative heads at several key sizes.

The paper's vision claim, at small scale: a Vision Transformer whose heads
share one query/key projection of width `shared_key_dim` keeps its accuracy
when `shared_key_dim` shrinks, while concatenated heads with the same total
key size (each head gets `shared_key_dim / num_heads` key dimensions, values
unchanged) lose it.

Offline data: scikit-learn's digits (1,797 8x8 grayscale images, 10 classes;
a fixed split of 1,297 training and 500 test images), patches of 2x2. With
network access `--dataset cifar10` trains on CIFAR-10 through tfds instead
(32x32x3, patches of 4).

The model is the zoo's `ViTImageClassifier` on a `ViTBackbone` with
`attention="collaborative"` and `shared_key_dim`, or, for the concatenated
baseline, `attention="concatenate"` and `shared_key_dim`: the library's
reduced-key concatenated heads, `keras.layers.MultiHeadAttention` with key
size `shared_key_dim // num_heads` (at `shared_key_dim == hidden_dim` that is
the standard layer). Every run trains the same number of
steps with the same optimizer; the seed sets the initialization and the
order of the batches (a model is compiled once per configuration and
restarted from each seed's initialization).

    python benchmarks/experiments/vit_digits.py           # 8 configurations x 3 seeds: about 15 min on 2 shared CPU cores
    python benchmarks/experiments/vit_digits.py --quick   # 2 sizes, 1 seed, 3 epochs: about 1 min

With `--data DIR` (a GPU machine, without TensorFlow) every (configuration,
seed) is one `collab-keras train vit --data DIR` run (the same `run.train`),
`--parallel` of them at a time on the card (see `_common.run_grid`:
skip-if-done, `--deadline`, `--archive`), trained until the validation
accuracy stops rising (`--patience` checks of `--checkpoint-every` steps
without a better one; the run ends with its best check's weights). DIR is
written here by `collab-keras prepare vit` (the digits split 80/10/10 %,
1,437 / 180 / 180 images, resized to the `vit_tiny` preset's 32x32x3, so
`--patch-size 4` is one digit pixel; `--augment-shift 4` shifts each
training image by up to one digit pixel). The table and every run's record
go to `vit_digits_converged.json`, the figure to
`results_vit_digits_converged.png`, both in the output folder:

    collab-keras prepare vit --output-dir .data/digits-vit
    KERAS_BACKEND=jax python benchmarks/experiments/vit_digits.py --data .data/digits-vit \
        --parallel 8 --deadline 360 --archive records.tar.gz                # the GPU machine
    KERAS_BACKEND=jax python benchmarks/experiments/vit_digits.py --data .data/digits-vit --quick   # the CPU
"""

import argparse
import math
import os

import _common
import numpy as np

import keras

from collab_keras.models import ViTBackbone
from collab_keras.models import ViTImageClassifier

GRID_METRICS = ["accuracy", "validation_accuracy", "best_step", "parameters", "query_key_parameters",
                "train_seconds"]
GRID_FORMATS = {"best_step": "{:.0f}", "parameters": "{:,.0f}", "query_key_parameters": "{:,.0f}",
                "train_seconds": "{:.0f}"}


def load_data(name):
    """(x_train, y_train, x_test, y_test, patch_size), images float in [0, 1]."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype("float32")[..., None]  # (1797, 8, 8, 1)
        order = np.random.default_rng(0).permutation(len(images))
        images, labels = images[order], digits.target[order].astype("int32")
        return images[500:], labels[500:], images[:500], labels[:500], 2
    import tensorflow_datasets as tfds

    train, test = tfds.load("cifar10", split=["train", "test"], as_supervised=True, batch_size=-1)
    x_train, y_train = tfds.as_numpy(train)
    x_test, y_test = tfds.as_numpy(test)
    return x_train / np.float32(255), y_train, x_test / np.float32(255), y_test, 4


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="sizes 64,8, one seed, 3 epochs; with --data: 8 steps of 16, checks every 4")
    parser.add_argument("--dataset", choices=("digits", "cifar10"), default="digits", help="without --data")
    parser.add_argument("--key-sizes", default="64,32,16,8", help="shared_key_dim / total concatenated key size")
    parser.add_argument("--seeds", type=int, default=3, help="default 5 with --data")
    parser.add_argument("--epochs", type=int, default=12, help="without --data")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--output-dir", default=None)
    _common.add_grid_arguments(parser, "vit")
    # At most 6,000 steps of 64: 267 passes over the digits.
    grid = _common.add_fit_arguments(parser, steps=6000, checkpoint_every=300, patience=5, warmup_steps=100,
                                     weight_decay=0.1)
    grid.add_argument("--patch-size", type=int, default=4, help="on the prepared 32x32 images")
    grid.add_argument("--dropout", type=float, default=0.1)
    grid.add_argument("--augment-shift", type=int, default=4,
                      help="shift each training image by up to N pixels of the 32x32 (4: one digit pixel); 0: off")
    args = _common.parse_args(
        parser, dict(key_sizes="64,8", seeds=1, epochs=3), argv,
        grid=dict(seeds=5),
        grid_quick=dict(key_sizes="64,8", seeds=1, steps=8, checkpoint_every=4, warmup_steps=1, patience=1,
                        batch_size=16),
    )
    sizes = [int(s) for s in args.key_sizes.split(",")]
    for size in sizes:
        if size % args.num_heads:
            parser.error(f"--key-sizes must be multiples of --num-heads. Received: {size} with {args.num_heads}")
    _common.check_grid_arguments(args)
    return args


def main(argv=None):
    args = parse(argv)
    if args.data is not None:
        return grid_main(args)
    return cpu_main(args)


def cpu_main(args):
    """Without --data: every run in this process, a fixed number of epochs."""
    sizes = [int(s) for s in args.key_sizes.split(",")]
    env = _common.environment()
    env["settings"] = vars(args)
    total = _common.Stopwatch()
    _common.print_header(f"ViT from scratch on {args.dataset}", env)

    x_train, y_train, x_test, y_test, patch_size = load_data(args.dataset)
    print(
        f"{len(x_train)} training / {len(x_test)} test images {x_train.shape[1:]}, patches {patch_size}, "
        f"{args.num_layers} layers, {args.num_heads} heads, hidden {args.hidden_dim}, {args.epochs} epochs\n"
    )
    def classifier(kind, size):
        backbone = ViTBackbone(
            image_shape=x_train.shape[1:],
            patch_size=patch_size,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            hidden_dim=args.hidden_dim,
            mlp_dim=2 * args.hidden_dim,
            dropout_rate=0.1,
            attention=kind,
            shared_key_dim=size,
        )
        return ViTImageClassifier(backbone, 10, preprocessor=None)

    records = []
    for kind in ("concatenate", "collaborative"):
        for size in sizes:
            # Compiled once per configuration; each seed restarts it from
            # that seed's initialization (see `_common.Restarter`).
            model = classifier(kind, size)
            model.compile(
                optimizer=keras.optimizers.AdamW(args.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            restarter = _common.Restarter(model)
            for seed in range(args.seeds):
                keras.utils.set_random_seed(seed)
                restarter.restart(classifier(kind, size))
                # Keras-hub tasks fit through tf.data, which ignores
                # `shuffle`: the seed orders the batches here.
                order = np.random.default_rng(seed).permutation(len(x_train))
                watch = _common.Stopwatch()
                model.fit(x_train[order], y_train[order], batch_size=args.batch_size, epochs=args.epochs, verbose=0)
                seconds = watch()
                _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
                records.append(
                    {
                        "kind": "concatenated" if kind == "concatenate" else "collaborative",
                        "shared_key_dim": size,
                        "seed": seed,
                        "accuracy": float(accuracy),
                        "parameters": int(model.count_params()),
                        "query_key_parameters": _common.query_key_parameters(model),
                        "train_seconds": seconds,
                    }
                )
                print(f"seed {seed} {kind} {size}: accuracy {accuracy:.4f}, {seconds:.0f} s", flush=True)
            keras.backend.clear_session()
    rows = _common.summarize(records, ["accuracy", "parameters", "query_key_parameters", "train_seconds"])
    print(f"\n### Test accuracy, {args.dataset}, {args.seeds} seeds\n")
    print(
        _common.markdown_table(
            rows,
            ["accuracy", "parameters", "query_key_parameters", "train_seconds"],
            {"parameters": "{:,.0f}", "query_key_parameters": "{:,.0f}", "train_seconds": "{:.0f}"},
        )
    )
    print(f"\ntotal time {total() / 60:.1f} min\n")
    suffix = "_quick" if args.quick else ""
    _common.plot(
        rows,
        "accuracy",
        os.path.join(_common.FIGURES, f"results_vit_{args.dataset}{suffix}.png"),
        f"ViT ({args.num_layers} layers, {args.num_heads} heads, hidden {args.hidden_dim}) on {args.dataset}, "
        f"{args.seeds} seeds",
        ylabel="test accuracy",
    )
    env["total_seconds"] = total()
    _common.save(
        args.output_dir or _common.default_output_dir(),
        f"vit_{args.dataset}{suffix}",
        {"environment": env, "records": records, "summary": rows},
    )


def run_configs(args, runs_dir):
    """The `(kind, key size, RunConfig)` of every run: both kinds at every
    key size, seed after seed (so that an interrupted grid has every
    configuration). The architecture is the prepared preset's (`vit_tiny`:
    its image size) with `--num-layers`, `--num-heads`, `--hidden-dim`, an
    MLP of twice the hidden size, `--patch-size` and `--dropout`."""
    from collab_keras.training.config import RunConfig

    options = _common.manifest_options(args.data)
    overrides = dict(num_layers=args.num_layers, num_heads=args.num_heads, hidden_dim=args.hidden_dim,
                     mlp_dim=2 * args.hidden_dim, patch_size=args.patch_size, dropout_rate=args.dropout)
    rows = [(kind, int(size)) for kind in ("concatenate", "collaborative") for size in args.key_sizes.split(",")]
    configs = []
    for seed in range(args.seeds):
        for kind, size in rows:
            config = RunConfig(
                task="vit",
                output_dir=os.path.join(runs_dir, f"{kind}_{size}_seed{seed}"),
                overrides=overrides,
                attention=kind,
                shared_key_dim=size,
                augment_shift=args.augment_shift,
                seed=seed,
                eval_examples=100_000,  # every validation and test image
                **_common.fit_options(args),
                **options,
            )
            configs.append((kind, size, config))
    return configs


def record(kind, size, config):
    """One flat record from a finished run (`_common.classifier_record`) and
    its query/key parameters (its architecture built without weights)."""
    from collab_keras.training import tasks

    backbone_cls, _ = tasks._families()["vit"]
    backbone = backbone_cls.from_architecture(config.preset, attention=config.attention,
                                              shared_key_dim=config.shared_key_dim, **config.overrides)
    kind = "concatenated" if kind == "concatenate" else "collaborative"
    return {**_common.classifier_record(kind, size, config),
            "query_key_parameters": _common.query_key_parameters(backbone)}


def grid_main(args):
    """With --data: the grid, one `collab-keras train vit` run each."""
    grid = _common.start_grid(args, "ViT from scratch on the digits, trained until validation accuracy stops rising")
    print(f"{grid.manifest['options']['preset']} images, {grid.manifest['splits']}; {args.num_layers} layers, "
          f"{args.num_heads} heads, hidden {args.hidden_dim}, patches {args.patch_size}, shifts up to "
          f"{args.augment_shift} pixels; at most {args.steps} steps of {args.batch_size}, validation every "
          f"{args.checkpoint_every} steps, patience {args.patience}, {args.parallel} runs at a time\n", flush=True)
    configs = run_configs(args, os.path.join(grid.output_dir, f"vit_runs{grid.suffix}"))
    _common.run_grid([c for _, _, c in configs], args, grid.output_dir, grid.started, grid.env)
    records = [record(kind, size, c) for kind, size, c in configs if _common.finished(c)]
    rows = _common.finish_grid(grid, args, records, GRID_METRICS, "vit_digits_converged",
                               f"ViT ({args.num_layers} layers, {args.num_heads} heads, hidden {args.hidden_dim}) "
                               f"on digits, trained to convergence, {args.seeds} seeds")
    if rows is not None:
        baseline = [r["accuracy"] for r in records
                    if (r["kind"], r["shared_key_dim"]) == ("concatenated", args.hidden_dim)]
        mean = sum(baseline) / len(baseline) if baseline else math.nan
        print(f"\n### Test accuracy, digits ({grid.manifest['splits']['test']} test images); concatenated "
              f"baseline at {args.hidden_dim}: {mean:.4f} ({'at least' if mean >= 0.97 else 'below'} 0.97)\n")
        print(_common.markdown_table(rows, GRID_METRICS, GRID_FORMATS))
    return records

if __name__ == "__main__":
    main()
