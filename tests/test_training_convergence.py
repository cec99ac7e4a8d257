"""Issue 20, runs to convergence: `collab-keras train --early-stopping-patience`
(Keras' EarlyStopping, resumable), `--augment-shift` of prepared images; and
fine-tuning a pretrained preset: `--calibration` of its conversion,
`--sequence-length`."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

from collab_keras.models import ViTImageClassifier
from collab_keras.training import checkpoint
from collab_keras.training import cli
from collab_keras.training import prepared
from collab_keras.training import run
from collab_keras.training import tasks
from collab_keras.training.config import RunConfig
from tests.test_training import tiny_config

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "a", "dog"]


def keras_decisions(values, mode, patience):
    """`(best epoch, stopped epoch or None)` of keras.callbacks.EarlyStopping
    fed `values` epoch by epoch (the model's weight holds the epoch number,
    so the restored weights say which epoch was kept)."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    callback = keras.callbacks.EarlyStopping(monitor="score", mode=mode, patience=patience,
                                             restore_best_weights=True)
    callback.set_model(model)
    callback.on_train_begin()
    stopped = None
    for epoch, value in enumerate(values):
        model.set_weights([np.full((1, 1), float(epoch))])
        callback.on_epoch_end(epoch, {} if value is None else {"score": value})
        if getattr(model, "stop_training", False):
            stopped = epoch
            break
    callback.on_train_end()
    best = int(model.get_weights()[0][0, 0]) if callback.best_weights is not None else None
    return best, stopped


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("patience", [0, 1, 3])
def test_decisions_are_those_of_keras_early_stopping(mode, patience):
    rng = np.random.default_rng(patience)
    sequences = [list(np.round(rng.uniform(0, 1, 12), 1)) for _ in range(20)]  # ties too
    sequences += [[0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1],
                  [None, 0.3, None, 0.2, 0.4, 0.1, 0.1], [float("nan"), 0.2, 0.1, 0.3], [0.7]]
    for values in sequences:
        history = [{} if v is None else {"score": v} for v in values]
        best, stopped = checkpoint.early_stopping(history, "score", mode, patience)
        assert (best, stopped) == keras_decisions(values, mode, patience), values


@pytest.fixture
def first_check_is_best(monkeypatch):
    """Early stopping on the vit task watches the step, a lower one counting
    as better: the first check is the best, and with patience P >= 1 the
    run stops at check P + 1."""
    monkeypatch.setitem(checkpoint.EARLY_STOPPING, "vit", ("step", "min"))


def predictions(task_model, images):
    return np.asarray(task_model.predict(images, verbose=0))


def test_a_run_stops_early_and_ends_with_its_best_checkpoint(tmp_path, first_check_is_best, capsys):
    config = tiny_config("vit", tmp_path / "run", steps=12, early_stopping_patience=2, deterministic=True)
    metrics = run.train(config)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert metrics["early_stopping"] == {
        "monitor": "step", "patience": 2, "best": 2, "best_step": 2, "stopped_step": 6}
    assert [h["step"] for h in history] == [2, 4, 6]  # stopped at 6 of 12
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["latest.json", "step-00000002", "step-00000006"]
    assert set(json.loads((checkpoints / "latest.json").read_text())["kept"]) == {"step-00000002"}

    # The saved model holds the best checkpoint's weights, not the last.
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("uint8")
    saved = predictions(ViTImageClassifier.from_preset(str(tmp_path / "run" / "model")), images)
    model = tasks.build(config, num_classes=10)
    model.compile(optimizer=run._optimizer(config))
    for step, same in ((2, True), (6, False)):
        checkpoint.restore_weights(model, str(checkpoints), step)
        assert np.allclose(predictions(model, images), saved, atol=1e-6) == same, step

    # Started again, the run is finished: evaluated again, not trained.
    capsys.readouterr()
    again = run.train(config)
    assert "from step 6 of 12" in capsys.readouterr().out
    assert again["early_stopping"] == metrics["early_stopping"]
    assert again["test_loss"] == metrics["test_loss"]
    assert again["train_seconds"] == metrics["train_seconds"]  # the recorded timing
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["history"] == history

    # The kept checkpoint is checked as the latest is.
    with open(checkpoints / "step-00000002" / "state.json", "a") as file:
        file.write(" ")
    with pytest.raises(ValueError, match="does not match the checksum in latest.json"):
        checkpoint.restore_weights(model, str(checkpoints), 2)
    with pytest.raises(ValueError, match="is missing or not kept by latest.json"):
        checkpoint.restore_weights(model, str(checkpoints), 4)


@pytest.mark.slow
def test_an_interrupted_run_keeps_what_early_stopping_needs(tmp_path, first_check_is_best, monkeypatch):
    """Killed after its first checkpoint, the run resumes, stops at the
    same check and ends with the same best weights as one not killed."""
    whole = run.train(tiny_config("vit", tmp_path / "whole", steps=12, early_stopping_patience=2,
                                  deterministic=True))
    config = tiny_config("vit", tmp_path / "run", steps=12, early_stopping_patience=2, deterministic=True)
    save = checkpoint.save

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run.train(config)
    monkeypatch.setattr(checkpoint, "save", save)
    resumed = run.train(config)
    assert resumed["early_stopping"] == whole["early_stopping"]
    assert resumed["test_loss"] == whole["test_loss"]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == sorted(
        os.listdir(tmp_path / "whole" / "checkpoints"))


def test_the_flags_reach_the_run_config(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    train_parser = cli._train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "bert-classify", "--output-dir", str(tmp_path / "run"), "--preset",
                              str(tmp_path), "--calibration", "train", "--calibration-examples", "8",
                              "--early-stopping-patience", "2"])
    config = cli.config_from_args(args, train_parser)
    assert (config.calibration, config.calibration_examples, config.early_stopping_patience) == ("train", 8, 2)
    assert RunConfig(task="vit", output_dir="-").calibration == "auto"
    with pytest.raises(ValueError, match="Received: early_stopping_patience=-1"):
        RunConfig(task="vit", output_dir="-", early_stopping_patience=-1)
    with pytest.raises(ValueError, match="Received: calibration='data'"):
        RunConfig(task="vit", output_dir="-", calibration="data")
    # Calibration is of a conversion: a pretrained preset made collaborative.
    with pytest.raises(ValueError, match="calibration='none', preset=None, attention='collaborative'"):
        RunConfig(task="bert-classify", output_dir="-", calibration="none")
    with pytest.raises(ValueError, match="attention='concatenate'"):
        RunConfig(task="bert-classify", output_dir="-", preset=str(tmp_path), calibration="train",
                  attention="concatenate")


@pytest.fixture(scope="module")
def bert_preset(tmp_path_factory):
    """A tiny pretrained keras-hub BERT classifier preset."""
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(VOCABULARY), num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32, max_sequence_length=24)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=VOCABULARY), sequence_length=24)
    path = str(tmp_path_factory.mktemp("preset") / "bert")
    keras_hub.models.BertTextClassifier(backbone, 3, preprocessor).save_to_preset(path)
    return path


@pytest.mark.parametrize("calibration, source", [("none", None), ("synthetic", "synthetic"),
                                                 ("train", "given"), ("auto", "synthetic")])
def test_calibration_of_the_conversion(bert_preset, calibration, source):
    config = RunConfig(task="bert-classify", output_dir="-", preset=bert_preset, shared_key_dim=8,
                       sequence_length=12, calibration=calibration)
    texts = ["the quick brown fox", "a dog", "the dog", "a quick fox"] * 10
    model = tasks.build(config, num_classes=3, calibration_data=texts if calibration == "train" else None)
    assert model.backbone.shared_key_dim == 8
    assert model.conversion_report.calibration_source == source
    # The preset's preprocessor takes the run's sequence length.
    x, _, _ = keras.utils.unpack_x_y_sample_weight(model.preprocessor(["the quick brown fox"]))
    assert x["token_ids"].shape == (1, 12)


def test_calibration_on_training_examples(bert_preset, tmp_path):
    """`--calibration train`: the first N training examples, as raw text
    from tf.data or as the backbone's inputs from prepared arrays."""
    from collab_keras.training import data

    config = RunConfig(task="bert-classify", output_dir="-", preset=bert_preset, shared_key_dim=8,
                       calibration="train", calibration_examples=3)
    raw = run._calibration_examples(config, None, data.load("bert-classify", "train"))
    texts, _ = data.load_tweets("train")
    assert raw == texts[:3]
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    arrays = {"x.token_ids": mask * 5, "x.padding_mask": mask, "x.segment_ids": 0 * mask, "y": np.zeros(4)}

    class Prepared:
        splits = {"train": arrays}

    inputs = run._calibration_examples(config, Prepared, None)
    assert set(inputs) == {"token_ids", "padding_mask", "segment_ids"}
    np.testing.assert_array_equal(inputs["padding_mask"], mask[:3, :3])  # cut after the longest
    np.testing.assert_array_equal(run._calibration_examples(config, type("P", (), {
        "splits": {"train": {"x": np.arange(8).reshape(4, 2), "y": np.zeros(4)}}}), None), [[0, 1], [2, 3], [4, 5]])


def test_a_pretrained_preset_takes_at_most_its_sequence_length(bert_preset):
    config = RunConfig(task="bert-classify", output_dir="-", preset=bert_preset, sequence_length=25)
    with pytest.raises(ValueError, match="max_sequence_length 24. Received: sequence_length=25"):
        tasks.build(config, num_classes=3)


def test_shifted_images_move_whole_and_resume_in_place():
    images = np.zeros((3, 6, 6, 1), "float32")
    images[:, 2:4, 2:4] = 1.0  # a 2x2 square in the middle
    shifted = prepared.shift_images(images, 2, np.random.default_rng(0))
    assert shifted.shape == images.shape
    for image in shifted[..., 0]:
        rows, columns = np.nonzero(image)
        assert image.sum() == 4 and np.ptp(rows) == 1 and np.ptp(columns) == 1  # the square, whole
    assert len({tuple(np.argwhere(image[..., 0])[0]) for image in shifted}) > 1  # moved apart
    # Training batches: shifted per batch from (seed, batch number), so a
    # resumed run sees the same images; evaluation batches are not shifted.
    arrays = {"x": np.random.default_rng(1).uniform(size=(32, 8, 8, 3)).astype("float32"),
              "y": np.arange(32) % 10}
    whole = prepared.Batches(arrays, 4, seed=3, steps=12, shift=2)
    resumed = prepared.Batches(arrays, 4, seed=3, steps=12, skip=9, shift=2)
    plain = prepared.Batches(arrays, 4, seed=3, steps=12)
    np.testing.assert_array_equal(whole[10][0], resumed[1][0])
    assert not np.array_equal(whole[10][0], plain[10][0])
    np.testing.assert_array_equal(whole[10][1], plain[10][1])
    evaluation = prepared.Batches(arrays, 4, shift=2)
    np.testing.assert_array_equal(evaluation[0][0], arrays["x"][:4])
    with pytest.raises(ValueError, match="Received: augment_shift=2, task='vit', data=None"):
        RunConfig(task="vit", output_dir="-", augment_shift=2)
