"""Scores, timing and the learning curves of a run."""

import csv
import io
import json
import math
import time
import warnings

import keras
import numpy as np


def translation_scores(hypotheses, references):
    """Corpus BLEU and chrF with sacrebleu, each with its signature."""
    import sacrebleu

    bleu = sacrebleu.BLEU()
    chrf = sacrebleu.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(bleu_score.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": round(chrf_score.score, 2),
        "chrf_signature": str(chrf.get_signature()),
    }


def warn_truncated(preprocessor, texts):
    """Warns for each text longer than the encoder's sequence length."""
    length = preprocessor.encoder_sequence_length
    # The start and end tokens the packer adds: the length of an empty text.
    special = int(np.asarray(preprocessor.generate_preprocess([""])["encoder_padding_mask"]).sum())
    for i, ids in enumerate(preprocessor.tokenizer(texts)):
        tokens = len(ids) + special
        if tokens > length:
            warnings.warn(
                f"Text {i} is {tokens} tokens long (start and end tokens "
                f"included); the model reads the first {length} "
                f"(encoder_sequence_length) and the rest is not translated. "
                f"Received: texts[{i}]={texts[i][:60]!r}",
                stacklevel=3,
            )


def beam_decode(seq2seq, sources, beam_width=4, batch_size=32):
    """Beam-search translations of `sources` with keras-hub's BeamSampler."""
    import keras_hub

    seq2seq.compile(sampler=keras_hub.samplers.BeamSampler(num_beams=beam_width))
    outputs = []
    for start in range(0, len(sources), batch_size):
        batch = sources[start : start + batch_size]
        decoded = seq2seq.generate(batch)
        outputs.extend(str(text).strip() for text in np.asarray(decoded).reshape(-1))
    return outputs


def perplexity(loss):
    """exp(mean token cross-entropy); inf when it overflows, NaN stays NaN."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def plot_learning_curves(history, path, title):
    """Writes a PNG of every logged quantity against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = sorted({k for logs in history for k in logs if not k.startswith("val_")})
    names = [n for n in names if n not in ("learning_rate", "step", "seconds")]
    figure, axes = pyplot.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3))
    axes = np.atleast_1d(axes)
    steps = [logs.get("step", i + 1) for i, logs in enumerate(history)]
    for axis, name in zip(axes, names):
        for key, style in ((name, "-"), (f"val_{name}", "--")):
            values = [logs.get(key, np.nan) for logs in history]
            if not np.all(np.isnan(values)):
                axis.plot(steps, values, style, label=key)
        axis.set_xlabel("step")
        axis.set_title(name)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def write_learning_curves(history, stem):
    """Writes the history as `<stem>.jsonl` (one JSON object a line) and
    `<stem>.csv` (a column per quantity), each atomically."""
    from collab_keras.training import checkpoint

    lines = "".join(json.dumps(logs, sort_keys=True) + "\n" for logs in history)
    checkpoint.atomic_write_text(stem + ".jsonl", lines)
    names = sorted({k for logs in history for k in logs}, key=lambda k: (k != "step", k))
    table = io.StringIO()
    writer = csv.DictWriter(table, names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    checkpoint.atomic_write_text(stem + ".csv", table.getvalue())


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of every training step (from the batch's start
    to its logs, which the checkpointer reads, so the step has finished)."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._started = None

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)

    def median(self):
        """The median step time in seconds (compilation and the rare slow
        step do not move it), or None before the first step."""
        return round(float(np.median(self.seconds)), 6) if self.seconds else None


class _ScalarWriter(keras.callbacks.Callback):
    """Writes every epoch's logs as TensorBoard scalars with the tensorboard
    package's own event writer (`tensorboard.summary.Writer`: numpy only, no
    TensorFlow), `train/<name>` and `validation/<name>` at the step reached."""

    def __init__(self, log_dir, writer_cls):
        super().__init__()
        self.log_dir, self.writer_cls, self.writer = log_dir, writer_cls, None

    def on_epoch_end(self, epoch, logs=None):
        if self.writer is None:
            self.writer = self.writer_cls(self.log_dir)
        step = (epoch + 1) * self.params["steps"]
        for name, value in (logs or {}).items():
            split, name = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            self.writer.add_scalar(f"{split}/{name}", float(value), step)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def tensorboard(log_dir, with_tensorflow):
    """A callback writing TensorBoard event files to `log_dir`: Keras'
    (`with_tensorflow`), else the tensorboard package's scalar writer, else
    None when the tensorboard package is not installed."""
    if with_tensorflow:
        return keras.callbacks.TensorBoard(log_dir)
    try:
        from tensorboard.summary import Writer
    except ImportError:
        return None
    return _ScalarWriter(log_dir, Writer)
