"""Prepared data: every split tokenized once, as arrays, for training without TensorFlow.

    collab-keras prepare nmt --output-dir DATA [data options]     (needs TensorFlow)
    collab-keras train nmt --data DATA --output-dir RUN [...]     (JAX or torch: does not)

`prepare` runs the task's own preprocessor (the one `collab-keras train`
builds, with the vocabulary it trains) over every split and writes what it
returns, so a run from DATA trains on the arrays a tf.data run feeds:

    manifest.json        format, task, options, versions, split sizes, the
                         vocabulary's fingerprint, the SHA-256 of every file
    vocabulary.txt       the tokens, one a line (text tasks)
    train.npz            the preprocessor's outputs, one array each:
    validation.npz         x.<input name> (or x), y, sample_weight, all (examples, ...)
    test.npz               (nmt validation/test also text.encoder_text, text.decoder_text:
                           the raw sentences, for BLEU)

Tasks: `nmt`, `bert-classify` and `vit` (`bert-mlm` masks at random each
time it is fed, which fixed arrays would freeze). The options that decide the
arrays (`RunConfig.data_options`: task, preset, dataset, source, target,
max_train_examples, vocabulary_size, sequence_length) are recorded, and a run
given DATA must have the same ones.

`load` checks a folder before anything reads from it: a missing folder or
manifest, a missing file, another task or other options, an array file whose
SHA-256 is not the recorded one: a ValueError naming the file. Nothing in the
folder is written or removed by reading it. `prepare` writes a new or empty
folder only (and does nothing when the folder already holds the same
complete data): it writes everything into a temporary `.tmp-*` folder
beside it and renames that into place, so the folder holds all of the data
or none of it.
"""

import importlib.metadata
import json
import os
import shutil
import tempfile

import keras
import numpy as np

from collab_keras.training import checkpoint
from collab_keras.training import vocabulary as vocabularies

FORMAT = 1
TASKS = ("nmt", "bert-classify", "vit")
SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
VOCABULARY = "vocabulary.txt"
VERSIONED = ("collab-keras", "keras", "keras-hub", "numpy", "tensorflow", "tensorflow-text")
# Batches are grouped by length inside pools of this many batches, so each
# batch pads to a length near its own longest example.
POOL_BATCHES = 64
# The third word of the seed of a batch's image shifts: (seed, batch, this).
SHIFT_STREAM = 0x5817


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def pack(x, y, sample_weight):
    """The preprocessor's outputs as named numpy arrays."""
    arrays = {"y": y, "sample_weight": sample_weight}
    if isinstance(x, dict):
        arrays.update({f"x.{name}": value for name, value in x.items()})
    else:
        arrays["x"] = x
    return {k: np.asarray(v) for k, v in arrays.items() if v is not None}


def _unpack(arrays):
    """`(x, y[, sample_weight])` of named arrays (`pack`'s inverse)."""
    x = arrays["x"] if "x" in arrays else {
        k[2:]: v for k, v in arrays.items() if k.startswith("x.")}
    return keras.utils.pack_x_y_sample_weight(x, arrays.get("y"), arrays.get("sample_weight"))


def _preprocess(task_model, examples, task):
    """Every example of a tf.data split through the task's preprocessor."""
    parts, texts = [], {"encoder_text": [], "decoder_text": []}
    for batch in examples.batch(1024):
        if task == "nmt":
            for key in texts:
                texts[key].extend(t.decode() for t in batch[key].numpy())
            parts.append(pack(*task_model.preprocessor(batch)))
        else:
            x, y = batch
            outputs = task_model.preprocessor(x, y)
            parts.append(pack(*keras.utils.unpack_x_y_sample_weight(outputs)))
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if task == "nmt":
        arrays.update({f"text.{k}": np.asarray(v, dtype=str) for k, v in texts.items()})
    return arrays


def refuse_output_dir(path, why):
    """The ValueError refusing to write in `path` (`why`: what it holds)."""
    return ValueError(
        f"{path} {why}; nothing there is overwritten. Choose a new or empty "
        f"--output-dir. Received: output_dir={path!r}"
    )


def _check_prepare_dir(path, options):
    """True when `path` already holds the complete data of `options`; False
    when it is new or empty; else a ValueError naming `output_dir`."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise refuse_output_dir(path, "is a file")
    entries = os.listdir(path) if os.path.isdir(path) else []
    if not entries:
        return False
    if MANIFEST not in entries:
        raise refuse_output_dir(path, "is not empty and holds no prepared data (no manifest.json)")
    try:
        load(path, options)
    except ValueError as error:
        raise refuse_output_dir(path, f"holds prepared data that is not this one ({error})") from None
    return True


def prepare(config):
    """Writes the prepared data of `config` (a `RunConfig`) to `config.output_dir`.

    Args:
        config: a `RunConfig`; its data options (see the module doc) and
            `vocabulary_file`, `data_dir` are used.

    Returns:
        The manifest (a dict).
    """
    from collab_keras.training import data
    from collab_keras.training import tasks

    if config.task not in TASKS:
        raise ValueError(
            f"`prepare` supports the tasks {TASKS} (bert-mlm masks at random each "
            f"time it is fed). Received: task={config.task!r}"
        )
    data.require_tensorflow("`prepare` (tf.data, the task's tokenizer)",
                            f"task={config.task!r}")
    path, options = config.output_dir, config.data_options()
    if _check_prepare_dir(path, options):
        print(f"{path} already holds this prepared data; nothing to do.")
        return read_manifest(path)
    tasks.check_preset(config.task, config.preset)
    examples = {split: data.load(config.task, split, config.dataset, config.data_dir,
                                 config.source, config.target) for split in SPLITS}
    if config.max_train_examples:
        examples["train"] = examples["train"].take(config.max_train_examples)
    vocabulary = tasks.new_vocabulary(config, examples["train"])
    num_classes = data.num_classes(config.task, config.dataset) if config.task != "nmt" else None
    task_model = tasks.build(config, vocabulary, num_classes)
    if vocabulary is None and config.task != "vit":  # a pretrained preset's tokenizer
        vocabulary = tasks.vocabulary_of(task_model)
    splits = {split: _preprocess(task_model, examples[split], config.task) for split in SPLITS}

    # Written whole in a temporary folder beside DIR, then renamed to DIR
    # (which may exist empty): DIR holds all of the data or none of it.
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=checkpoint.TMP_PREFIX)
    try:
        for split, arrays in splits.items():
            np.savez_compressed(os.path.join(staging, f"{split}.npz"), **arrays)
        if vocabulary is not None:
            with open(os.path.join(staging, VOCABULARY), "w", encoding="utf-8") as file:
                file.write("".join(f"{token}\n" for token in vocabulary))
        manifest = {
            "format": FORMAT,
            "task": config.task,
            "options": options,
            "versions": {package: _version(package) for package in VERSIONED},
            "splits": {split: int(len(arrays["y"])) for split, arrays in splits.items()},
            "vocabulary": None if vocabulary is None else {
                "file": VOCABULARY, "size": len(vocabulary),
                "fingerprint": vocabularies.fingerprint(vocabulary)},
            "sha256": {name: checkpoint.sha256(os.path.join(staging, name))
                       for name in sorted(os.listdir(staging))},
        }
        checkpoint.atomic_write_json(os.path.join(staging, MANIFEST), manifest)
        checkpoint.honour_umask(staging)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _unusable(file, why, path):
    return ValueError(
        f"The prepared data {file} {why}. Prepare it again with `collab-keras "
        f"prepare` into a new folder; nothing in it was changed. Received: data={path!r}"
    )


def read_manifest(path):
    """The manifest of the prepared folder `path` (a dict), or a ValueError
    naming the folder or the file when it is missing or unreadable. Checks
    the manifest only, not the arrays (see `load`)."""
    file = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise ValueError(
            "`data` must be a folder written by `collab-keras prepare`; it does "
            f"not exist. Received: data={path!r}"
        )
    if not os.path.isfile(file):
        raise _unusable(file, "is missing (not a prepared folder, or an interrupted "
                        "`prepare`)", path)
    try:
        with open(file, encoding="utf-8") as stream:
            manifest = json.load(stream)
        manifest["format"], manifest["task"], manifest["options"], manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _unusable(file, f"is unreadable ({error})", path) from None
    return manifest


class Prepared:
    """A checked prepared folder: `manifest`, `vocabulary` (or None) and
    `splits` (split name -> dict of named arrays, see the module doc)."""

    def __init__(self, path, manifest, vocabulary, splits):
        self.path = path
        self.manifest = manifest
        self.vocabulary = vocabulary
        self.splits = splits

    def texts(self, split, count):
        """The first `count` (source, reference) sentences of an nmt split."""
        arrays = self.splits[split]
        return ([str(t) for t in arrays["text.encoder_text"][:count]],
                [str(t) for t in arrays["text.decoder_text"][:count]])


def load(path, options):
    """The prepared data in `path`, checked against `options`.

    Args:
        path: a folder written by `prepare`.
        options: `RunConfig.data_options()` of the run reading it.

    Returns:
        A `Prepared`.

    Raises:
        ValueError: naming the file, for a missing folder, manifest or file,
            data of another task or other options, or a file whose SHA-256
            is not the one recorded in the manifest.
    """
    manifest = read_manifest(path)
    file = os.path.join(path, MANIFEST)
    if manifest["format"] != FORMAT:
        raise _unusable(file, f"has format {manifest['format']!r}, this version reads "
                        f"{FORMAT}", path)
    if manifest["task"] != options["task"]:
        raise _unusable(file, f"was prepared for the task {manifest['task']!r}, not "
                        f"{options['task']!r}", path)
    changed = {k: (manifest["options"].get(k), v) for k, v in options.items()
               if manifest["options"].get(k) != v}
    if changed:
        raise _unusable(file, "was prepared with other options (as (prepared, "
                        f"this run): {changed}); pass the same ones", path)
    names = [f"{split}.npz" for split in SPLITS] + (
        [VOCABULARY] if manifest.get("vocabulary") else [])
    for name in names:
        target = os.path.join(path, name)
        if name not in manifest["sha256"] or not os.path.isfile(target):
            raise _unusable(target, "is missing (an incomplete folder)", path)
        if checkpoint.sha256(target) != manifest["sha256"][name]:
            raise _unusable(target, "does not match its SHA-256 in manifest.json "
                            "(edited, truncated or corrupted)", path)
    vocabulary = None
    if manifest.get("vocabulary"):
        vocabulary = vocabularies.read(os.path.join(path, VOCABULARY))
    splits = {}
    for split in SPLITS:
        with np.load(os.path.join(path, f"{split}.npz"), allow_pickle=False) as arrays:
            splits[split] = {name: arrays[name] for name in arrays.files}
    return Prepared(path, manifest, vocabulary, splits)


def lengths(arrays):
    """Each example's length: its longest padding mask's count of ones
    (None for inputs without padding masks, such as images)."""
    masks = [v for k, v in arrays.items() if k.endswith("padding_mask")]
    if not masks:
        return None
    return np.max([m.astype(bool).sum(axis=1) for m in masks], axis=0)  # (examples,)


def mean_tokens(arrays):
    """Mean non-padding tokens per example, summed over the text inputs."""
    masks = [v for k, v in arrays.items() if k.startswith("x.") and k.endswith("padding_mask")]
    return float(sum(m.astype(bool).sum() for m in masks)) / len(arrays["y"])


class Batches(keras.utils.PyDataset):
    """Batches of prepared arrays, grouped by length and cut to it.

    Training (`seed` given): `steps - skip` batches continuing an endless
    stream, the same on every run: pass p over the examples is a permutation
    drawn from `numpy.random.default_rng((seed, p))`, sorted by length inside
    pools of `POOL_BATCHES` batches, cut into batches of `batch_size` (the
    remainder dropped) and shuffled; batch `skip` is where a resumed run
    continues. Evaluation (`seed=None`): every example once, sorted by
    length. Each batch's sequence axis is cut to its longest example rounded
    up to a bucket (a multiple of a quarter of the padded length, at least
    8), so few shapes are compiled and padding does not dominate.

    Training batches of images may be augmented (`shift`, see
    `shift_images`), each batch with a generator seeded by (seed, batch
    number in the run), so a resumed run sees the same images.

    Args:
        arrays: a split's named arrays (`Prepared.splits[split]`).
        batch_size: examples per batch (global, divided across replicas).
        seed: the data-order seed, or None for evaluation.
        steps: the run's total optimizer steps (training).
        skip: batches already trained (a resumed run).
        shift: training images: shift each by up to this many pixels.
    """

    def __init__(self, arrays, batch_size, seed=None, steps=None, skip=0, shift=0):
        super().__init__()
        self.arrays, self.batch_size, self.seed, self.shift = arrays, batch_size, seed, shift
        self.count = len(arrays["y"])
        self.lengths = lengths(arrays)
        if self.lengths is not None:
            padded = next(v.shape[1] for k, v in arrays.items() if k.endswith("padding_mask"))
            step = max(8, -(-padded // 4))
            self.buckets = np.minimum(-(-self.lengths // step) * step, padded)  # (examples,)
        if seed is None:
            order = np.arange(self.count) if self.lengths is None else np.argsort(
                self.lengths, kind="stable")
            self.batches = [order[i:i + batch_size] for i in range(0, self.count, batch_size)]
        else:
            self.per_pass = self.count // batch_size
            if not self.per_pass:
                raise ValueError(
                    f"`batch_size` must be at most the {self.count} training examples. "
                    f"Received: batch_size={batch_size}"
                )
            self.first, self.total, self._pass = skip, steps, None

    def _pass_batches(self, number):
        """The batches (example indices) of pass `number` over the data."""
        if self._pass is None or self._pass[0] != number:
            rng = np.random.default_rng((self.seed, number))
            order = rng.permutation(self.count)
            batches = []
            pool = self.batch_size * POOL_BATCHES
            for start in range(0, self.per_pass * self.batch_size, pool):
                chunk = order[start:min(start + pool, self.per_pass * self.batch_size)]
                if self.lengths is not None:
                    chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [chunk[i:i + self.batch_size]
                            for i in range(0, len(chunk), self.batch_size)]
            self._pass = (number, [batches[i] for i in rng.permutation(len(batches))])
        return self._pass[1]

    def __len__(self):
        return len(self.batches) if self.seed is None else self.total - self.first

    def indices(self, index):
        """The example indices of batch `index` (0-based in this dataset)."""
        if self.seed is None:
            return self.batches[index]
        position = self.first + index
        return self._pass_batches(position // self.per_pass)[position % self.per_pass]

    def length(self, index):
        """The padded sequence length of batch `index` (None for images)."""
        return None if self.lengths is None else int(self.buckets[self.indices(index)].max())

    def __getitem__(self, index):
        rows, length = self.indices(index), self.length(index)
        batch = {}
        for name, values in self.arrays.items():
            if name.startswith("text."):
                continue
            values = values[rows]
            if length is not None and values.ndim == 2:  # (batch, sequence)
                values = values[:, :length]
            batch[name] = values
        if self.shift and self.seed is not None:
            rng = np.random.default_rng((self.seed, self.first + index, SHIFT_STREAM))
            batch["x"] = shift_images(batch["x"], self.shift, rng)
        return _unpack(batch)


def shift_images(images, shift, rng):
    """Each image of `images` (batch, height, width, channels: channels
    last, as the zoo's image converter writes them) moved by a
    random whole number of pixels in [-shift, shift] along each axis, the
    uncovered border filled with zeros (the digits' background): random
    translation, the usual augmentation of small digit images.

    Args:
        images: numpy array.
        shift: the largest move, in pixels.
        rng: a `numpy.random.Generator`.
    """
    batch, height, width = images.shape[:3]
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    rows, columns = rng.integers(0, 2 * shift + 1, (2, batch))
    return np.stack([padded[i, r:r + height, c:c + width] for i, (r, c) in enumerate(zip(rows, columns))])
