"""Atomic files and resumable checkpoints.

A checkpoint is a folder `checkpoints/step-<N>/` holding the model's weights and
optimizer state (`model.weights.h5`, written by `Model.save_weights`), the
random-seed states of dropout layers (`seeds.npz`) and `state.json` (the step,
the history so far, the vocabulary fingerprint, the task, the SHA-256 of the
two other files). It is written under a temporary name and renamed into place,
then `checkpoints/latest.json` (the checkpoint's name and the SHA-256 of its
`state.json`) is replaced atomically to point to it, and only then are older
checkpoints removed: a run killed at any moment leaves the previous checkpoint
intact and referenced. A checkpoint is written only when the disk has room
for it (else an ENOSPC error before the first byte).

On resume every link of that chain is checked: `latest.json` names a
`step-<N>` folder of `checkpoints/` (nothing outside it), `state.json` has
the recorded checksum and says step N, the weight files have theirs. Any
mismatch is a ValueError naming the file; nothing is deleted.

Files and folders written here honour the process umask (as `open` does),
although they are made through `tempfile`, which creates them private.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time

import keras
import numpy as np


# The prefix of every temporary file and folder written here: what
# `remove_temporaries` may remove.
TMP_PREFIX = ".tmp-"
CHECKPOINT_NAME = re.compile(r"step-([0-9]{8})")
WEIGHT_FILES = ("model.weights.h5", "seeds.npz")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(path):
    """Gives `path` and everything under it the modes `open` and
    `os.makedirs` would have given them (0o666 / 0o777 less the umask):
    `tempfile` makes its files 0600 and folders 0700, which another user
    (TF Serving, a colleague) cannot read."""
    mask = _umask()
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)
    for root, folders, files in os.walk(path):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def remove_temporaries(directory):
    """Removes what an interrupted write left in `directory` (entries named
    `TMP_PREFIX...`, which only this module writes); returns their names."""
    if not os.path.isdir(directory):
        return []
    left = sorted(n for n in os.listdir(directory) if n.startswith(TMP_PREFIX))
    for name in left:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return left


def sha256(path):
    """The SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary file and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        honour_umask(tmp)
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
    """Saves a resumable checkpoint at the end of every Keras epoch, and stops
    training at a non-finite loss.

    The runner makes one Keras epoch `checkpoint_every` optimizer steps, so a
    checkpoint lands every `checkpoint_every` steps whatever the size of the
    corpus. When a step's loss is NaN or infinite (as
    `keras.callbacks.TerminateOnNaN` checks) training stops, no checkpoint
    is written from the diverged weights, and `diverged_at` holds the step.

    Args:
        directory: the run's `checkpoints/` folder.
        steps_per_epoch: optimizer steps in one Keras epoch.
        fingerprint: a dict stored with every checkpoint and compared on
            restore (the vocabulary's hash, the model's parameter count).
        history: the per-epoch logs of the epochs before this `fit`. Each
            epoch appends its logs with `step` (optimizer steps so far) and
            `seconds` (wall seconds of training so far, over resumes).
    """

    def __init__(self, directory, steps_per_epoch, fingerprint, history):
        super().__init__()
        self.directory = directory
        self.steps_per_epoch = steps_per_epoch
        self.fingerprint = fingerprint
        self.history = history
        self.diverged_at = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        # Training seconds before this `fit` (a resumed run) and its start.
        self._seconds_before = self.history[-1].get("seconds", 0.0) if self.history else 0.0
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.diverged_at = self._epoch * self.steps_per_epoch + batch + 1
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at is not None:
            return  # the weights are not finite: keep the last checkpoint
        entry = {k: float(v) for k, v in (logs or {}).items()}
        entry["step"] = (epoch + 1) * self.steps_per_epoch
        # Wall seconds of training up to here (validation included, the
        # checkpoint writes of earlier epochs too), summed over resumes.
        entry["seconds"] = round(self._seconds_before + time.perf_counter() - self._started, 3)
        self.history.append(entry)
        save(self.model, self.directory, entry["step"], self.history, self.fingerprint)


def _check_room(model, directory):
    """Raises ENOSPC before a checkpoint is written on a disk without room
    for it: HDF5 does not always survive a write that runs out of space.
    The room needed is the last checkpoint's size, or before the first one
    four bytes for each variable's element, three times (weights and the
    optimizer's two moments), with a 10 % margin."""
    sizes = [
        os.path.getsize(os.path.join(directory, entry, name))
        for entry in os.listdir(directory) if CHECKPOINT_NAME.fullmatch(entry)
        for name in WEIGHT_FILES if os.path.isfile(os.path.join(directory, entry, name))
    ]
    needed = 1.1 * (sum(sizes) or 3 * 4 * int(model.count_params()))
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"No room for a checkpoint ({free:,} bytes free, about {int(needed):,} "
            "needed; the last checkpoint is kept)",
            directory,
        )


def save(model, directory, step, history, fingerprint):
    """Writes checkpoint `step-<step>` atomically and points `latest` to it."""
    os.makedirs(directory, exist_ok=True)
    _check_room(model, directory)
    name = f"step-{step:08d}"
    tmp = tempfile.mkdtemp(dir=directory, prefix=TMP_PREFIX)
    try:
        model.save_weights(os.path.join(tmp, "model.weights.h5"))
        seeds = {f"s{i}": keras.ops.convert_to_numpy(v.value)
                 for i, v in enumerate(_seed_variables(model))}
        np.savez(os.path.join(tmp, "seeds.npz"), **seeds)
        checksums = {file: sha256(os.path.join(tmp, file)) for file in WEIGHT_FILES}
        atomic_write_json(os.path.join(tmp, "state.json"),
                          {"step": step, "history": history, "checksums": checksums,
                           **fingerprint})
        honour_umask(tmp)
        state_sha256 = sha256(os.path.join(tmp, "state.json"))
        final = os.path.join(directory, name)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(os.path.join(directory, "latest.json"),
                      {"checkpoint": name, "state_sha256": state_sha256})
    for entry in os.listdir(directory):
        if CHECKPOINT_NAME.fullmatch(entry) and entry != name:
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _unusable(path, why, received):
    return ValueError(
        f"The checkpoint {path} {why}. Move the run folder away or pass another "
        f"--output-dir; nothing was deleted. Received: {received}"
    )


def _read_verified(directory):
    """The checkpoint folder `latest.json` points to and its state, each
    link of the chain checked (see the module doc)."""
    latest = os.path.join(directory, "latest.json")
    try:
        with open(latest, encoding="utf-8") as file:
            pointer = json.load(file)
        name = pointer["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _unusable(latest, f"is unreadable ({error})", f"checkpoint={latest!r}") from None
    match = CHECKPOINT_NAME.fullmatch(name) if isinstance(name, str) else None
    if not match:
        raise _unusable(latest, "must name a step-NNNNNNNN folder of checkpoints/",
                        f"checkpoint={name!r}")
    path = os.path.join(directory, name)
    state_file = os.path.join(path, "state.json")
    if not os.path.isfile(state_file):
        raise _unusable(latest, f"names {name}, which holds no state.json",
                        f"checkpoint={name!r}")
    if "state_sha256" not in pointer:
        raise _unusable(latest, "has no checksum (written before checkpoints were "
                        "verified); it cannot be trusted", f"checkpoint={name!r}")
    if sha256(state_file) != pointer["state_sha256"]:
        raise _unusable(state_file, "does not match the checksum in latest.json "
                        "(edited or corrupted)", f"checkpoint={name!r}")
    with open(state_file, encoding="utf-8") as file:
        state = json.load(file)
    step = int(match.group(1))
    if state.get("step") != step:
        raise _unusable(state_file, f"says step {state.get('step')!r}, its folder step {step}",
                        f"checkpoint={name!r}")
    for file in WEIGHT_FILES:
        weights = os.path.join(path, file)
        expected = state.get("checksums", {}).get(file)
        if not os.path.isfile(weights) or sha256(weights) != expected:
            raise _unusable(weights, "is corrupt or truncated (its SHA-256 is not the "
                            "one recorded in state.json)", f"checkpoint={weights!r}")
    return path, state


def restore(model, directory, fingerprint):
    """Loads the latest checkpoint into `model` (optimizer built first).

    Returns:
        `(step, history)`; `(0, [])` when there is no checkpoint.

    Raises:
        ValueError: the checkpoint is corrupt, truncated, edited or points
            outside `directory`, or was written with another vocabulary,
            task or model; nothing is deleted.
    """
    if not os.path.exists(os.path.join(directory, "latest.json")):
        return 0, []
    path, state = _read_verified(directory)
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
        raise _unusable(weights, f"cannot be loaded ({error})",
                        f"checkpoint={weights!r}") from error
    return state["step"], state["history"]
