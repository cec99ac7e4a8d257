"""Scores and the learning-curve plot of a run."""

import math

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
    names = [n for n in names if n not in ("learning_rate", "step")]
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
