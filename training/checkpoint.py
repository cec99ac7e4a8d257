"""Atomic files and resumable checkpoints.

A checkpoint is a folder `checkpoints/step-<N>/` holding the model's weights and
optimizer state (`model.weights.h5`, written by `Model.save_weights`), the
random-seed states of dropout layers (`seeds.npz`) and `state.json` (the step,
the history so far, the vocabulary fingerprint). It is written under a temporary
name and renamed into place, then `checkpoints/latest.json` is replaced
atomically to point to it, and only then are older checkpoints removed: a run
killed at any moment leaves the previous checkpoint intact and referenced.
"""

import json
import os
import shutil
import tempfile

import keras
import numpy as np


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary file and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path, value):
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def _seed_variables(model):
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class Checkpointer(keras.callbacks.Callback):
    """Saves a resumable checkpoint at the end of every Keras epoch.

    The runner makes one Keras epoch `checkpoint_every` optimizer steps, so a
    checkpoint lands every `checkpoint_every` steps whatever the size of the
    corpus.

    Args:
        directory: the run's `checkpoints/` folder.
        steps_per_epoch: optimizer steps in one Keras epoch.
        fingerprint: a dict stored with every checkpoint and compared on
            restore (the vocabulary's hash, the model's parameter count).
        history: the per-epoch logs of the epochs before this `fit`.
        write: False on the non-chief workers of a multi-worker run.
    """

    def __init__(self, directory, steps_per_epoch, fingerprint, history, write=True):
        super().__init__()
        self.directory = directory
        self.steps_per_epoch = steps_per_epoch
        self.fingerprint = fingerprint
        self.history = history
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        entry = {k: float(v) for k, v in (logs or {}).items()}
        entry["step"] = (epoch + 1) * self.steps_per_epoch
        self.history.append(entry)
        if self.write:
            save(self.model, self.directory, (epoch + 1) * self.steps_per_epoch,
                 self.history, self.fingerprint)


def save(model, directory, step, history, fingerprint):
    """Writes checkpoint `step-<step>` atomically and points `latest` to it."""
    os.makedirs(directory, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = tempfile.mkdtemp(dir=directory, prefix=".tmp-")
    try:
        model.save_weights(os.path.join(tmp, "model.weights.h5"))
        seeds = {f"s{i}": keras.ops.convert_to_numpy(v.value)
                 for i, v in enumerate(_seed_variables(model))}
        np.savez(os.path.join(tmp, "seeds.npz"), **seeds)
        atomic_write_json(os.path.join(tmp, "state.json"),
                          {"step": step, "history": history, **fingerprint})
        final = os.path.join(directory, name)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(os.path.join(directory, "latest.json"), {"checkpoint": name})
    for entry in os.listdir(directory):
        if entry.startswith("step-") and entry != name:
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def restore(model, directory, fingerprint):
    """Loads the latest checkpoint into `model` (optimizer built first).

    Returns:
        `(step, history)`; `(0, [])` when there is no checkpoint.

    Raises:
        ValueError: the checkpoint is corrupt or truncated, or was written
            with another vocabulary or model; nothing is deleted.
    """
    latest = os.path.join(directory, "latest.json")
    if not os.path.exists(latest):
        return 0, []
    try:
        with open(latest) as file:
            path = os.path.join(directory, json.load(file)["checkpoint"])
        with open(os.path.join(path, "state.json")) as file:
            state = json.load(file)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"The checkpoint in {directory} is unreadable ({error}). Move the "
            "folder away or pass another --output-dir; nothing was deleted. "
            f"Received: checkpoint={latest!r}"
        ) from error
    for key, value in fingerprint.items():
        if state.get(key) != value:
            raise ValueError(
                f"The checkpoint {path} was written with {key}="
                f"{state.get(key)!r}, this run has {key}={value!r} (a different "
                "vocabulary or model). Use another --output-dir; nothing was "
                f"deleted. Received: {key}={value!r}"
            )
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    weights = os.path.join(path, "model.weights.h5")
    try:
        model.load_weights(weights)
        seeds = np.load(os.path.join(path, "seeds.npz"))
        for i, variable in enumerate(_seed_variables(model)):
            variable.assign(seeds[f"s{i}"])
    except Exception as error:
        raise ValueError(
            f"The checkpoint {weights} is corrupt or truncated ({error}). Move "
            "it away or pass another --output-dir; nothing was deleted. "
            f"Received: checkpoint={weights!r}"
        ) from error
    return state["step"], state["history"]
