"""A trained translator as a preset that ships: `collab-keras preset`.

    collab-keras preset --run runs/nmt --output-dir presets/en-de --dtype float16
    collab-keras translate --preset presets/en-de "In the beginning God created the heaven."
    collab-keras preset --from-preset presets/en-de --shared-key-dim 32 --output-dir presets/en-de-32

`make_preset` turns a finished `collab-keras train nmt` run folder (its
`config.json`, `metrics.json` and `model/`, the trained task in
`save_to_preset` format) into a keras-hub preset folder written by the
task's own `save_to_preset`:

    config.json  task.json  preprocessor.json  tokenizer.json  metadata.json
    model.weights.h5                  the weights, float32 or float16
    assets/tokenizer/vocabulary.txt   the WordPiece vocabulary
    results.json                      the preset's test scores, and their source

With `dtype="float16"` the task is loaded in the float16 dtype policy, so its
weights are saved as float16 (half the bytes). keras-hub loads a preset
saved in a float policy in the current default policy (float32 unless set
otherwise), casting the weights on load: the loaded task computes in float32.

`compress_preset` writes a collaborative translator preset's model at a
smaller `shared_key_dim` instead (`collab_keras.reparametrize`, calibrated on
training pairs; no training), scored the same way, its `results.json` adding
where it comes from (`conversion`).

The preset is scored when it is made: loaded back as `from_preset` loads it,
it translates the test split of the run's data with beam search
(`evaluation.beam_decode`), and sacrebleu scores the translations.
`results.json` records BLEU and chrF with their signatures, the split
(dataset, source and target versions, number of verses), the beam width, the
weights' dtype, the attention, `shared_key_dim`, and the source run with its
own scores. `evaluate_preset` decodes and scores the same split again with the
same function, so a test can check that the shipped weights, the tokenizer
and the decoding stay in step.

Folders: the run is only read. The output folder must be new, empty, or a
previous translator preset (a `results.json` and only the files a preset
holds), which is then replaced; anything else is refused before anything is
written. The preset is written into a `.tmp-*` folder beside the output
folder and renamed into place, so the folder holds a whole preset or none.
"""

import json
import os
import shutil
import tempfile

from collab_keras.argument_checks import check_integer
from collab_keras.training import checkpoint
from collab_keras.training import data
from collab_keras.training import evaluation
from collab_keras.training.config import RunConfig
from collab_keras.training.prepared import refuse_output_dir

FORMAT = 1
RESULTS_FILE = "results.json"
DTYPES = ("float32", "float16")
# Beams of `translate` for a preset without results.json (a run's model/).
DEFAULT_BEAM_WIDTH = RunConfig.beam_width
# What a translator preset folder holds (folders end with "/").
PRESET_ENTRIES = frozenset({
    "config.json", "task.json", "preprocessor.json", "tokenizer.json",
    "metadata.json", "model.weights.h5", RESULTS_FILE,
    "assets/", "assets/tokenizer/", "assets/tokenizer/vocabulary.txt",
})


def entries(folder):
    """Every file and folder under `folder`, relative and "/"-separated
    (folders with a trailing "/")."""
    found = set()
    for root, folders, files in os.walk(folder):
        relative = os.path.relpath(root, folder)
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        found.update(prefix + name + "/" for name in folders)
        found.update(prefix + name for name in files)
    return found


def check_output_dir(path):
    """Checks that a preset may be written to `path`; writes nothing.

    Returns:
        True when `path` holds a previous translator preset (to replace),
        False when it is new or empty.
    """
    if not os.fspath(path) or os.path.realpath(path) == os.path.realpath(os.getcwd()):
        raise refuse_output_dir(path, "is the current folder (a preset is renamed into place)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise refuse_output_dir(path, "is a file")
    found = entries(path) if os.path.isdir(path) else set()
    if not found:
        return False
    if RESULTS_FILE not in found:
        raise refuse_output_dir(
            path, f"is not empty and holds no translator preset (no {RESULTS_FILE})"
        )
    others = sorted(found - PRESET_ENTRIES)
    if others:
        raise refuse_output_dir(
            path, f"holds files that a translator preset does not ({', '.join(others[:5])})"
        )
    return True


def read_run(run_dir):
    """The `RunConfig` and final metrics of a finished `nmt` run folder."""
    def unusable(why):
        return ValueError(
            f"`run` must be a finished run folder of `collab-keras train nmt`; "
            f"{why}. Received: run={run_dir!r}"
        )

    if not os.path.isdir(run_dir):
        raise unusable("it is not a folder")
    try:
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as file:
            # The vocabulary is the model's own (model/); a vocabulary file of
            # the machine that trained is not needed here.
            config = RunConfig.from_json(
                file.read(), run_dir, output_dir=run_dir, vocabulary_file=None
            )
    except (OSError, ValueError) as error:
        raise unusable(f"its config.json is missing or unreadable ({error})") from None
    if config.task != "nmt":
        raise unusable(f"it trained the task {config.task!r}")
    try:
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as file:
            final = json.load(file)["final"]
        final["bleu"], final["chrf"]
    except (OSError, ValueError, KeyError, TypeError):
        raise unusable(
            "it has no metrics.json with test scores (an unfinished run: resume "
            "it with `collab-keras train --config RUN/config.json`)"
        ) from None
    if not os.path.isfile(os.path.join(run_dir, "model", "config.json")):
        raise unusable("it holds no trained model (model/config.json)")
    return config, final


def read_results(folder, preset=None):
    """The `results.json` of a translator preset folder (a dict)."""
    try:
        with open(os.path.join(folder, RESULTS_FILE), encoding="utf-8") as file:
            results = json.load(file)
        results["test"], results["scores"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"The preset holds no readable {RESULTS_FILE} ({error}): was it made "
            f"by `collab-keras preset`? Received: preset={preset or folder!r}"
        ) from None
    return results


def score_test_split(task, test, data_dir=None):
    """BLEU and chrF of `task`'s beam-search translations of a test split.

    Args:
        task: a `TransformerNMTSeq2SeqLM` with its preprocessor.
        test: the split as `results.json` records it: `dataset`, `source`,
            `target`, `split`, `examples` (the first N verses) and
            `beam_width`.
        data_dir: tensorflow-datasets' data folder (tfds sets only).

    Returns:
        `evaluation.translation_scores` (BLEU, chrF, their signatures) and
        `examples`, the number of verses translated.
    """
    examples = data.load(
        "nmt", test["split"], test["dataset"], data_dir, test["source"], test["target"]
    ).take(test["examples"])
    sources, references = data.text_pairs(examples)
    hypotheses = evaluation.beam_decode(task, sources, test["beam_width"])
    return {**evaluation.translation_scores(hypotheses, references),
            "examples": len(sources)}


def make_preset(run_dir, output_dir, dtype="float32", eval_examples=None, beam_width=None):
    """Writes the translator preset of a finished `nmt` run.

    Args:
        run_dir: the run folder of `collab-keras train nmt`.
        output_dir: the preset folder: new, empty, or a previous translator
            preset (replaced).
        dtype: `"float32"` or `"float16"`, the dtype of the saved weights.
        eval_examples: test verses translated to score the preset (the first
            N of the split; default: the run's `eval_examples`).
        beam_width: beams of those translations (default: the run's).

    Returns:
        The preset's `results.json` (a dict).
    """
    _check_dtype(dtype)
    eval_examples = check_integer("eval_examples", eval_examples, allow_none=True)
    beam_width = check_integer("beam_width", beam_width, allow_none=True)
    config, final = read_run(run_dir)
    replace = check_output_dir(output_dir)
    data.require_tensorflow("Scoring a translator preset (tf.data, the tokenizer)",
                            f"run={run_dir!r}")
    options = config.data_options()
    test = {
        "dataset": options["dataset"], "source": options["source"],
        "target": options["target"], "split": "test",
        "examples": eval_examples or config.eval_examples,
        "beam_width": beam_width or config.beam_width,
    }
    origin = {
        "run": {
            "name": os.path.basename(os.path.normpath(run_dir)),  # not a path of the machine that made it
            "steps": config.steps,
            "scores": {"bleu": final["bleu"], "chrf": final["chrf"],
                       "examples": config.eval_examples, "beam_width": config.beam_width},
        },
    }
    return _write_preset(os.path.join(run_dir, "model"), output_dir, replace, dtype, test,
                         config.data_dir, origin)


def compress_preset(preset, output_dir, shared_key_dim, dtype="float32",
                    calibration_examples=256, eval_examples=None, beam_width=None,
                    data_dir=None):
    """Writes a translator preset's model with a smaller shared key.

    Every attention layer of the preset's collaborative model is converted
    to `shared_key_dim` with `collab_keras.reparametrize` (a lower-rank CP
    decomposition of its heads, fitted to the attention logits of the first
    `calibration_examples` training pairs of the preset's data); nothing is
    trained. The result is scored on the preset's recorded test split, as
    `make_preset` scores a run.

    Args:
        preset: a translator preset folder or a registered name
            (`"bible_en_de_collaborative"`), with collaborative heads.
        output_dir: the new preset folder: new, empty, or a previous
            translator preset (replaced); not the source preset's folder.
        shared_key_dim: the new shared key width.
        dtype: `"float32"` or `"float16"`, the dtype of the saved weights.
        calibration_examples: training pairs the conversion is fitted on
            (0: the weights alone).
        eval_examples: test verses translated to score the preset (default:
            the source preset's).
        beam_width: beams of those translations (default: the source's).
        data_dir: tensorflow-datasets' data folder (tfds sets only).

    Returns:
        The preset's `results.json` (a dict): as `make_preset` writes it,
        with the source preset's `run` and a `conversion` entry (the source,
        its key width and scores, the calibration, each layer's errors).
    """
    from collab_keras.models import TransformerNMTSeq2SeqLM
    from collab_keras.models.presets import resolve_preset

    _check_dtype(dtype)
    shared_key_dim = check_integer("shared_key_dim", shared_key_dim)
    calibration_examples = check_integer("calibration_examples", calibration_examples,
                                         minimum=0)
    eval_examples = check_integer("eval_examples", eval_examples, allow_none=True)
    beam_width = check_integer("beam_width", beam_width, allow_none=True)
    folder = resolve_preset(preset)
    source = read_results(folder, preset)
    if source.get("attention") != "collaborative":
        raise ValueError(
            "`preset` must have collaborative heads to be compressed to a smaller "
            f"shared key. Received: preset={preset!r} with attention="
            f"{source.get('attention')!r}"
        )
    if os.path.exists(output_dir) and os.path.samefile(output_dir, folder):
        raise ValueError(
            "`output_dir` must not be the preset being compressed: it is read while "
            f"the new one is written. Received: output_dir={output_dir!r}"
        )
    replace = check_output_dir(output_dir)
    data.require_tensorflow("Compressing a translator preset (tf.data, the tokenizer)",
                            f"preset={preset!r}")
    test = dict(source["test"])
    test["examples"] = eval_examples or test["examples"]
    test["beam_width"] = beam_width or test["beam_width"]
    calibration = None
    if calibration_examples:
        examples = data.load("nmt", "train", test["dataset"], data_dir, test["source"],
                             test["target"]).take(calibration_examples)
        sources, targets = data.text_pairs(examples)
        calibration = {"encoder_text": sources, "decoder_text": targets}
    task = TransformerNMTSeq2SeqLM.from_preset(
        folder, attention="collaborative", shared_key_dim=shared_key_dim,
        calibration_data=calibration)
    report = task.conversion_report
    origin = {
        "run": source["run"],
        "conversion": {
            "preset": os.path.basename(os.path.normpath(folder)),
            "shared_key_dim": source["shared_key_dim"],
            "scores": source["scores"],
            "calibration_examples": calibration_examples,
            "summary": report.summary(),
            "layers": [
                {k: entry[k] for k in ("name", "relative_error", "logit_relative_error",
                                       "calibration")}
                for entry in report
            ],
        },
    }
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    converted = tempfile.mkdtemp(dir=parent, prefix=checkpoint.TMP_PREFIX)
    try:
        task.save_to_preset(converted)  # float32, loaded again in `dtype`
        return _write_preset(converted, output_dir, replace, dtype, test, data_dir, origin)
    finally:
        shutil.rmtree(converted, ignore_errors=True)


def _check_dtype(dtype):
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")


def _write_preset(model_dir, output_dir, replace, dtype, test, data_dir, origin):
    """Saves the task of `model_dir` (a `save_to_preset` folder) in `dtype`
    as the preset `output_dir`, scored on `test`, with `origin` (where it
    comes from) in its `results.json`; written beside `output_dir` and
    renamed into place. Returns the results."""
    from collab_keras.models import TransformerNMTSeq2SeqLM

    task = TransformerNMTSeq2SeqLM.from_preset(model_dir, dtype=dtype)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=checkpoint.TMP_PREFIX)
    previous = staging + "-previous"
    try:
        task.save_to_preset(staging)
        loaded = TransformerNMTSeq2SeqLM.from_preset(staging)  # as users load it
        scores = score_test_split(loaded, test, data_dir)
        test = {**test, "examples": scores.pop("examples")}
        backbone = loaded.backbone.get_config()
        results = {
            "format": FORMAT,
            "task": type(loaded).__name__,
            "dtype": dtype,
            "attention": backbone["attention"],
            "shared_key_dim": backbone["shared_key_dim"],
            "parameters": int(loaded.count_params()),
            "test": test,
            "scores": scores,
            **origin,
        }
        checkpoint.atomic_write_json(os.path.join(staging, RESULTS_FILE), results)
        checkpoint.honour_umask(staging)
        if replace:
            os.replace(output_dir, previous)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if os.path.isdir(previous) and not os.path.exists(output_dir):
            os.replace(previous, output_dir)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return results


def summary(folder, results):
    """One printable line: the preset's size and test scores."""
    size = os.path.getsize(os.path.join(folder, "model.weights.h5")) / 2**20
    test, scores = results["test"], results["scores"]
    return (
        f"{folder}: {results['parameters']:,} parameters, {results['dtype']} weights "
        f"(model.weights.h5: {size:.2f} MiB); test BLEU {scores['bleu']:.2f}, chrF "
        f"{scores['chrf']:.2f} on {test['examples']} {test['dataset']} verses, "
        f"beam width {test['beam_width']}; {scores['bleu_signature']}"
    )


def evaluate_preset(preset, data_dir=None):
    """Translates and scores a translator preset's recorded test split again.

    Args:
        preset: a preset folder made by `make_preset`, or a registered name
            (`"bible_en_de_collaborative"`).
        data_dir: tensorflow-datasets' data folder (tfds sets only).

    Returns:
        `score_test_split`: BLEU, chrF, their signatures and the number of verses,
        to compare with `results.json`'s `scores`.
    """
    from collab_keras.models import TransformerNMTSeq2SeqLM
    from collab_keras.models.presets import resolve_preset

    folder = resolve_preset(preset)
    results = read_results(folder, preset)
    return score_test_split(TransformerNMTSeq2SeqLM.from_preset(folder), results["test"], data_dir)


def translate(texts, preset, beam_width=None):
    """Translates `texts` with a translator preset: text in, text out.

    Args:
        texts: a list of strings.
        preset: a preset folder, or a registered name
            (`"bible_en_de_collaborative"`).
        beam_width: beams of the beam search (1: greedy); default the width
            the preset's test scores were measured with (`results.json`), or
            4 for a preset without one (a run's `model/`).

    Returns:
        A list of strings. A text longer than the encoder's sequence length
        is truncated, with a `UserWarning` naming it.
    """
    from collab_keras.models import TransformerNMTSeq2SeqLM
    from collab_keras.models.presets import resolve_preset

    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"`texts` must be a list of strings. Received: texts={texts!r}")
    beam_width = check_integer("beam_width", beam_width, allow_none=True)
    folder = resolve_preset(preset)
    if beam_width is None:
        recorded = os.path.isfile(os.path.join(folder, RESULTS_FILE))
        beam_width = (read_results(folder, preset)["test"]["beam_width"] if recorded
                      else DEFAULT_BEAM_WIDTH)
    task = TransformerNMTSeq2SeqLM.from_preset(folder)
    evaluation.warn_truncated(task.preprocessor, texts)
    return evaluation.beam_decode(task, list(texts), beam_width)
