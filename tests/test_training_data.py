"""The training package's data: offline corpora, splits, vocabularies, tfds names."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from collab_keras.training import bible
from collab_keras.training import data
from collab_keras.training import vocabulary


def test_bible_splits_are_fixed_disjoint_and_aligned():
    sizes = {}
    seen = set()
    for split in bible.SPLITS:
        english, german = bible.load_pairs(split)
        assert len(english) == len(german)
        sizes[split] = len(english)
        assert not seen & set(zip(english, german))
        seen |= set(zip(english, german))
    assert sizes == {"train": 30447, "validation": 350, "test": 301}
    english, german = bible.load_pairs("test")
    assert english[0] == "And the evening and the morning were the fifth day."
    assert german[0] == "Und es ward Abend, und es ward Morgen: der fünfte Tag."
    assert bible.verse_split(1, 1, 23) == "test"  # Genesis 1:23, hashed


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"split": "dev"}, "split"),
        ({"source": "xx"}, "source"),
        ({"target": "q"}, "target"),
        ({"source": "s", "target": "s"}, "source"),
    ],
)
def test_bible_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        bible.load_pairs(**kwargs)


def test_tweets_and_digits_splits():
    texts, labels = data.load_tweets("test")
    assert len(texts) == len(labels) > 300
    assert set(labels.tolist()) == {0, 1, 2}  # the hash order mixes classes
    train, _ = data.load_tweets("train")
    assert not set(texts) & set(train)
    images, labels = data.load_digits("train")
    assert images.shape == (1437, 8, 8, 3) and images.dtype == np.uint8
    assert images.max() == 255 and labels.shape == (1437,)


def test_load_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="Received: task='gpt'"):
        data.load("gpt", "train")
    with pytest.raises(ValueError, match="Received: dataset='cifar10'"):
        data.load("nmt", "train", dataset="cifar10")
    with pytest.raises(ValueError, match="Received: data_dir="):
        data.load("vit", "train", dataset="cifar10", data_dir=str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "task, dataset",
    [
        ("nmt", "wmt14_translate/de-en"),
        ("nmt", "ted_hrlr_translate/pt_to_en"),
        ("bert-classify", "glue/sst2"),
        ("bert-mlm", "glue/sst2"),
        ("vit", "cifar10"),
    ],
)
def test_tfds_names_with_mock_data(task, dataset, monkeypatch):
    # mock_data serves the examples: no download, so no network check.
    monkeypatch.setattr(data, "_check_online", lambda name, prepared_dir: None)
    with tfds.testing.mock_data(num_examples=3):
        examples = list(data.load(task, "train", dataset=dataset).as_numpy_iterator())
    assert len(examples) == 3
    if task == "nmt":
        assert all(isinstance(x["encoder_text"], bytes) for x in examples)
        assert all(isinstance(x["decoder_text"], bytes) for x in examples)
    elif task == "bert-mlm":
        assert all(isinstance(s, bytes) for s in examples)
    elif task == "vit":
        image, label = examples[0]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and 0 <= label < 10
    else:
        assert all(label in (0, 1) for _, label in examples)


def test_vocabulary_is_trained_cached_and_fingerprinted(tmp_path):
    texts = ["the cat sat on the mat", "the dog sat on the log"] * 10
    reserved = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    path = str(tmp_path / "vocabulary.txt")
    calls = []

    def train():
        calls.append(1)
        return vocabulary.train(texts, 40, reserved)

    first = vocabulary.load_or_train(path, train)
    assert first[:5] == list(reserved) and "cat" in first
    assert vocabulary.load_or_train(path, train) == first and len(calls) == 1
    assert vocabulary.fingerprint(first) != vocabulary.fingerprint(first[:-1])
    with pytest.raises(ValueError, match="Received: vocabulary_size=3"):
        vocabulary.train(texts, 3, reserved)
