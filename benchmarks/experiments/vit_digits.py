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
"""

import argparse
import os

import _common
import numpy as np

import keras

from collab_keras.models import ViTBackbone
from collab_keras.models import ViTImageClassifier


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 64,8, one seed, 3 epochs")
    parser.add_argument("--dataset", choices=("digits", "cifar10"), default="digits")
    parser.add_argument("--key-sizes", default="64,32,16,8", help="shared_key_dim / total concatenated key size")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--output-dir", default=None)
    args = _common.parse_args(parser, dict(key_sizes="64,8", seeds=1, epochs=3))
    sizes = [int(s) for s in args.key_sizes.split(",")]
    for size in sizes:
        if size % args.num_heads:
            parser.error(f"--key-sizes must be multiples of --num-heads. Received: {size} with {args.num_heads}")
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


if __name__ == "__main__":
    main()
