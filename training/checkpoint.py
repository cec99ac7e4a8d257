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

With early stopping (`Checkpointer(early_stopping=...)`) the checkpoint of
the best validation score so far is kept too (it is the one the history in
the latest checkpoint names, so an interrupted run finds it), and the run
ends with its weights (`restore_weights`).

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
# The validation score early stopping watches, per task, and which way is
# better: `keras.callbacks.EarlyStopping`'s `monitor` and `mode`.
EARLY_STOPPING = {
    "nmt": ("val_loss", "min"),
    "bert-mlm": ("val_loss", "min"),
    "bert-classify": ("val_sparse_categorical_accuracy", "max"),
    "vit": ("val_sparse_categorical_accuracy", "max"),
}


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


def early_stopping(history, monitor, mode, patience):
    """What `keras.callbacks.EarlyStopping(monitor, mode=mode, patience=
    patience, restore_best_weights=True)` decides over epochs that logged
    `history` (one dict of logs per epoch, from the first): the same
    comparisons (strictly better than the best so far; an epoch without
    `monitor` is skipped), as a function of the history alone, so that a
    resumed run decides as an uninterrupted one.

    Returns:
        `(best, stopped)`: the index in `history` of the epoch whose weights
        the callback restores (None when no epoch logged `monitor`), and of
        the epoch after which it stops training (None: training goes on).
    """
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    best_value, best, wait = None, None, 0
    for index, logs in enumerate(history):
        current = logs.get(monitor)
        if current is None:
            continue
        wait += 1
        # The first value is the best so far, whatever it is (NaN too).
        if best is None or better(current, best_value):
            best_value, best, wait = current, index, 0
            continue
        if wait >= patience and index > 0:
            return best, index
    return best, None


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
        early_stopping: None, or `(monitor, mode, patience)`: training stops
            where `early_stopping()` says over the history, and the best
            epoch's checkpoint is kept beside the latest one.
    """

    def __init__(self, directory, steps_per_epoch, fingerprint, history, early_stopping=None):
        super().__init__()
        self.directory = directory
        self.steps_per_epoch = steps_per_epoch
        self.fingerprint = fingerprint
        self.history = history
        self.early_stopping = early_stopping
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
        keep = ()
        if self.early_stopping is not None:
            monitor = self.early_stopping[0]
            if monitor not in entry:
                raise RuntimeError(
                    f"Early stopping watches {monitor}, which this run does not log "
                    f"(it logs {sorted(entry)}). Received: monitor={monitor!r}"
                )
            best, stopped = early_stopping(self.history, *self.early_stopping)
            keep = (self.history[best]["step"],)
            if stopped is not None:
                self.model.stop_training = True
        save(self.model, self.directory, entry["step"], self.history, self.fingerprint, keep)


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


def save(model, directory, step, history, fingerprint, keep=()):
    """Writes checkpoint `step-<step>` atomically and points `latest` to it;
    then removes the other checkpoints but those of the steps in `keep`."""
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
    # The kept ones' state.json checksums too, so that `restore_weights`
    # trusts them as `restore` trusts the latest.
    kept = {f"step-{k:08d}" for k in keep} - {name}
    pointer = {"checkpoint": name, "state_sha256": state_sha256}
    if kept:
        pointer["kept"] = {k: sha256(os.path.join(directory, k, "state.json")) for k in sorted(kept)}
    atomic_write_json(os.path.join(directory, "latest.json"), pointer)
    kept.add(name)
    for entry in os.listdir(directory):
        if CHECKPOINT_NAME.fullmatch(entry) and entry not in kept:
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _unusable(path, why, received):
    return ValueError(
        f"The checkpoint {path} {why}. Move the run folder away or pass another "
        f"--output-dir; nothing was deleted. Received: {received}"
    )


def _read_pointer(directory):
    """The contents of `latest.json`, or a ValueError naming it."""
    latest = os.path.join(directory, "latest.json")
    try:
        with open(latest, encoding="utf-8") as file:
            pointer = json.load(file)
        pointer["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _unusable(latest, f"is unreadable ({error})", f"checkpoint={latest!r}") from None
    return pointer


def _read_verified(directory):
    """The checkpoint folder `latest.json` points to and its state, each
    link of the chain checked (see the module doc)."""
    latest = os.path.join(directory, "latest.json")
    pointer = _read_pointer(directory)
    name = pointer["checkpoint"]
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
    return path, _verified_state(path, int(match.group(1)))


def _verified_state(path, step):
    """The state of the checkpoint folder `path` of `step`, its weight files
    checked against the checksums it records."""
    name = os.path.basename(path)
    state_file = os.path.join(path, "state.json")
    with open(state_file, encoding="utf-8") as file:
        state = json.load(file)
    if state.get("step") != step:
        raise _unusable(state_file, f"says step {state.get('step')!r}, its folder step {step}",
                        f"checkpoint={name!r}")
    for file in WEIGHT_FILES:
        weights = os.path.join(path, file)
        expected = state.get("checksums", {}).get(file)
        if not os.path.isfile(weights) or sha256(weights) != expected:
            raise _unusable(weights, "is corrupt or truncated (its SHA-256 is not the "
                            "one recorded in state.json)", f"checkpoint={weights!r}")
    return state


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


def restore_weights(model, directory, step):
    """Loads the weights of the kept checkpoint of `step` (early stopping's
    best) into `model`; its files are checked as `restore` checks them."""
    latest, _ = _read_verified(directory)
    name = f"step-{step:08d}"
    path = os.path.join(directory, name)
    if name != os.path.basename(latest):
        state_file = os.path.join(path, "state.json")
        expected = _read_pointer(directory).get("kept", {}).get(name)
        if not os.path.isfile(state_file) or expected is None:
            raise _unusable(path, "is missing or not kept by latest.json (the best "
                            "checkpoint of early stopping)", f"checkpoint={name!r}")
        if sha256(state_file) != expected:
            raise _unusable(state_file, "does not match the checksum in latest.json "
                            "(edited or corrupted)", f"checkpoint={name!r}")
        _verified_state(path, step)
    weights = os.path.join(path, "model.weights.h5")
    try:
        model.load_weights(weights)
    except Exception as error:
        raise _unusable(weights, f"cannot be loaded ({error})",
                        f"checkpoint={weights!r}") from error
