"""Training throughput: collaborative against concatenated attention, and the
input pipeline's share of a step.

Trains the same Transformer-NMT task twice at equal settings (architecture,
vocabulary, batch, sequence length, optimizer) with `fit` and reports, side by
side, steps and tokens per second and the step time with the real pipeline
(raw Bible verses -> the task's preprocessor inside tf.data, as
`collab-keras train` runs) against synthetic batches (the same batches
tokenized beforehand and held in memory). Pipeline share = 1 - synthetic time /
real time.

CPU, TensorFlow backend (tokenizes, trains, and can save the tokenized batches):

    python benchmarks/training_throughput.py [--steps 50] [--save-npz batches.npz]

GPU machine, JAX backend, no TensorFlow there (the batches tokenized on the CPU):

    KERAS_BACKEND=jax python benchmarks/training_throughput.py --from-npz batches.npz

With --from-npz only the synthetic column is measured (there is no text pipeline).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402


def build(attention, shared_key_dim, vocabulary_size, length, preprocessor=None):
    from collab_keras import models

    keras.utils.set_random_seed(0)
    backbone = models.TransformerNMTBackbone.from_architecture(
        "transformer_tiny", vocabulary_size=vocabulary_size, attention=attention,
        shared_key_dim=shared_key_dim if attention == "collaborative" else None,
        max_sequence_length=length,
    )
    task = models.TransformerNMTSeq2SeqLM(backbone, preprocessor=preprocessor)
    task.compile(optimizer=keras.optimizers.AdamW(1e-3))
    return task


def timed_fit(task, data, steps, warmup, fit=None):
    """Seconds per step of `fit` over `steps` steps, after `warmup` steps."""
    fit = fit or task.fit
    fit(data, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False)
    start = time.perf_counter()
    fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--vocabulary-size", type=int, default=4000)
    parser.add_argument("--shared-key-dim", type=int, default=32)
    parser.add_argument("--save-npz", help="write the tokenized batches here (CPU run)")
    parser.add_argument("--from-npz", help="train from these tokenized batches (no TF needed)")
    args = parser.parse_args(argv)
    rows = []
    if args.from_npz:
        arrays = dict(np.load(args.from_npz))
        vocabulary_size = int(arrays.pop("vocabulary_size"))
        y, weights = arrays.pop("y"), arrays.pop("sample_weight")
        batches = len(y) // args.batch_size
        for attention in ("concatenate", "collaborative"):
            task = build(attention, args.shared_key_dim, vocabulary_size, args.sequence_length)
            n = batches * args.batch_size
            x = {k: v[:n] for k, v in arrays.items()}

            def data():
                while True:
                    for i in range(batches):
                        s = slice(i * args.batch_size, (i + 1) * args.batch_size)
                        yield {k: v[s] for k, v in x.items()}, y[s], weights[s]

            # keras.Model.fit itself: keras-hub's fit would build a tf.data
            # pipeline, and the GPU machine has no TensorFlow.
            seconds = timed_fit(task, data(), args.steps, args.warmup,
                                fit=lambda *a, **k: keras.Model.fit(task, *a, **k))
            tokens = float(sum(arrays[k].sum() for k in arrays if k.endswith("padding_mask")))
            tokens_per_example = tokens / len(y)
            rows.append((attention, task.count_params(), None, seconds,
                         args.batch_size * tokens_per_example / seconds))
    else:
        import tensorflow as tf

        from collab_keras import models
        from collab_keras.training import data
        from collab_keras.training import run
        from collab_keras.training import tasks

        examples = data.load("nmt", "train")
        vocabulary = tasks.train_vocabulary(
            "nmt", data.text_sample("nmt", examples, 2000), args.vocabulary_size
        )
        preprocessor = models.TransformerNMTSeq2SeqLMPreprocessor(
            models.TransformerNMTTokenizer(vocabulary=vocabulary),
            encoder_sequence_length=args.sequence_length,
            decoder_sequence_length=args.sequence_length,
        )
        raw = run.training_batches(examples, 0, args.batch_size)
        count = (args.steps + args.warmup) * 2
        tokenized = raw.take(count).map(preprocessor)
        cached = list(tokenized.as_numpy_iterator())  # in-memory batches
        x = {k: np.concatenate([b[0][k] for b in cached]) for k in cached[0][0]}
        y = np.concatenate([b[1] for b in cached])
        weights = np.concatenate([b[2] for b in cached])
        if args.save_npz:
            np.savez(args.save_npz, y=y, sample_weight=weights,
                     vocabulary_size=len(vocabulary), **x)
        synthetic = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(
            args.batch_size, drop_remainder=True).repeat().prefetch(2)
        tokens_per_example = float(sum(v.sum() for k, v in x.items()
                                       if k.endswith("padding_mask"))) / len(y)
        for attention in ("concatenate", "collaborative"):
            task = build(attention, args.shared_key_dim, len(vocabulary),
                         args.sequence_length, preprocessor)
            real = timed_fit(task, raw, args.steps, args.warmup)  # fit maps the preprocessor
            # The same model (same seed) without the preprocessor, fed the
            # batches tokenized beforehand.
            bare = build(attention, args.shared_key_dim, len(vocabulary), args.sequence_length)
            fake = timed_fit(bare, synthetic, args.steps, args.warmup)
            rows.append((attention, task.count_params(), real, fake,
                         args.batch_size * tokens_per_example / real))

    backend = keras.backend.backend()
    print(f"Transformer-NMT transformer_tiny, batch {args.batch_size}, length "
          f"{args.sequence_length}, {args.steps} timed steps, backend {backend}")
    print(f"{'attention':<15}{'parameters':>12}{'ms/step real':>14}{'ms/step synth':>15}"
          f"{'pipeline':>10}{'tokens/s':>10}")
    for attention, params, real, fake, tokens in rows:
        share = "-" if real is None else f"{100 * (1 - fake / real):.1f}%"
        real_ms = "-" if real is None else f"{1000 * real:.1f}"
        print(f"{attention:<15}{params:>12,}{real_ms:>14}{1000 * fake:>15.1f}{share:>10}"
              f"{tokens:>10,.0f}")
    (_, _, r0, f0, _), (_, _, r1, f1, _) = rows
    ratio = (r1 / r0) if r0 else (f1 / f0)
    print(f"collaborative / concatenated step time: {ratio:.2f}")


if __name__ == "__main__":
    main()
