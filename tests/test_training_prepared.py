"""Issue 20: `collab-keras prepare` and `train --data`, without TensorFlow.

`prepare` runs here in-process (TensorFlow backend); the runs from prepared
data go to subprocesses on JAX where an import hook makes TensorFlow
unimportable (tests/without_tensorflow.py).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from collab_keras.training import checkpoint
from collab_keras.training import cli
from collab_keras.training import flops
from collab_keras.training import prepared
from collab_keras.training import vocabulary as vocabularies
from collab_keras.training.config import RunConfig
from tests.test_hardening import cli_error
from tests.test_hardening import listing
from tests.test_training import ROOT
from tests.test_training import assert_same_weights

DATA_FLAGS = ["--max-train-examples", "128", "--vocabulary-size", "1000", "--sequence-length", "16"]
TRAIN_FLAGS = DATA_FLAGS + [
    "--steps", "4", "--checkpoint-every", "2", "--batch-size", "8", "--warmup-steps", "1",
    "--eval-examples", "8", "--beam-width", "2", "--no-export",
]


def options(task="nmt", **changes):
    values = dict(task=task, output_dir="-", max_train_examples=128, vocabulary_size=1000,
                  sequence_length=16)
    values.update(changes)
    return RunConfig(**values).data_options()


@pytest.fixture(scope="module")
def nmt_data(tmp_path_factory):
    """A prepared nmt folder (128 training verses, all validation and test)."""
    path = tmp_path_factory.mktemp("prepared") / "nmt"
    cli.main(["prepare", "nmt", "--output-dir", str(path), *DATA_FLAGS])
    return path


@pytest.fixture
def data_copy(nmt_data, tmp_path):
    shutil.copytree(nmt_data, tmp_path / "data")
    return tmp_path / "data"


def without_tensorflow(*args, env=None, code=None):
    """`collab-keras ARGS` (or python `code`) on JAX with TensorFlow blocked."""
    environment = {**os.environ, "KERAS_BACKEND": "jax", "COLLAB_KERAS_VERBOSE": "0",
                   **(env or {})}
    command = ([sys.executable, "-m", "tests.without_tensorflow", *args] if code is None else
               [sys.executable, "-c",
                "from tests.without_tensorflow import block; block()\n" + code])
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def test_prepare_writes_arrays_vocabulary_and_manifest(nmt_data, capsys):
    manifest = json.loads((nmt_data / "manifest.json").read_text())
    assert manifest["task"] == "nmt" and manifest["format"] == prepared.FORMAT
    assert manifest["options"] == options()
    assert manifest["splits"] == {"train": 128, "validation": 350, "test": 301}
    assert set(manifest["sha256"]) == {"train.npz", "validation.npz", "test.npz", "vocabulary.txt"}
    for name, digest in manifest["sha256"].items():
        assert checkpoint.sha256(nmt_data / name) == digest, name
    vocabulary = vocabularies.read(nmt_data / "vocabulary.txt")
    assert manifest["vocabulary"]["fingerprint"] == vocabularies.fingerprint(vocabulary)
    assert manifest["versions"]["keras"] == keras.__version__

    # The arrays are what the run's preprocessor makes of the raw verses.
    from collab_keras.training import bible
    from collab_keras.training import tasks

    config = RunConfig(task="nmt", output_dir="-", sequence_length=16)
    preprocessor = tasks.build(config, vocabulary).preprocessor
    english, german = bible.load_pairs("test")
    x, y, sample_weight = preprocessor({"encoder_text": english[:3], "decoder_text": german[:3]})
    with np.load(nmt_data / "test.npz") as arrays:
        for name, value in x.items():
            np.testing.assert_array_equal(arrays[f"x.{name}"][:3], value, err_msg=name)
        np.testing.assert_array_equal(arrays["y"][:3], y)
        np.testing.assert_array_equal(arrays["sample_weight"][:3], sample_weight)
        assert list(arrays["text.decoder_text"][:3]) == list(german[:3])

    # Preparing the same data again changes nothing.
    before = listing(nmt_data)
    cli.main(["prepare", "nmt", "--output-dir", str(nmt_data), *DATA_FLAGS])
    assert "already holds this prepared data" in capsys.readouterr().out
    assert listing(nmt_data) == before


def _remove_manifest(path):
    os.remove(path / "manifest.json")


def _remove_test_split(path):
    os.remove(path / "test.npz")


def _corrupt_train_split(path):
    with open(path / "train.npz", "ab") as file:
        file.write(b"\0")


@pytest.mark.parametrize("damage, data_options, message", [
    (_remove_manifest, options(), "manifest.json is missing"),
    (_remove_test_split, options(), "test.npz is missing (an incomplete folder)"),
    (_corrupt_train_split, options(), "train.npz does not match its SHA-256"),
    (None, options("vit"), "was prepared for the task 'nmt', not 'vit'"),
    (None, options(sequence_length=32), "'sequence_length': (16, 32)"),
    (None, options(source="l"), "'source': ('k', 'l')"),
])
def test_unusable_prepared_folders_are_refused_untouched(data_copy, damage, data_options,
                                                         message):
    if damage is not None:
        damage(data_copy)
    before = listing(data_copy)
    with pytest.raises(ValueError) as error:
        prepared.load(str(data_copy), data_options)
    assert message in str(error.value)
    assert f"Received: data={str(data_copy)!r}" in str(error.value)
    assert listing(data_copy) == before


def test_missing_data_folder_is_refused_before_the_run_writes(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    err = cli_error(["train", "nmt", "--data", missing, "--output-dir", str(tmp_path / "run"),
                     *TRAIN_FLAGS], capsys)
    assert "does not exist" in err and f"Received: data={missing!r}" in err
    assert not os.path.exists(tmp_path / "run")


def test_train_takes_the_data_flags_not_given_from_the_folder(nmt_data, tmp_path):
    parser = argparse.ArgumentParser()
    train_parser = cli._train_parser(parser.add_subparsers(dest="command"))
    run_dir = str(tmp_path / "run")
    config = cli.config_from_args(parser.parse_args(
        ["train", "nmt", "--data", str(nmt_data), "--output-dir", run_dir]), train_parser)
    assert config.data_options() == options()
    # A flag given keeps its value, so loading the folder refuses it.
    config = cli.config_from_args(parser.parse_args(
        ["train", "nmt", "--data", str(nmt_data), "--output-dir", run_dir,
         "--sequence-length", "32"]), train_parser)
    assert config.sequence_length == 32 and config.vocabulary_size == 1000
    with pytest.raises(ValueError, match="'sequence_length': \\(16, 32\\)"):
        prepared.load(str(nmt_data), config.data_options())


def test_prepare_refuses_a_folder_it_did_not_write(nmt_data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    err = cli_error(["prepare", "nmt", "--output-dir", str(mine), *DATA_FLAGS], capsys)
    assert "holds no prepared data" in err and f"Received: output_dir={str(mine)!r}" in err
    assert listing(mine) == {"notes.txt": b"mine"}
    # Data prepared with other options is not overwritten either.
    before = listing(nmt_data)
    err = cli_error(["prepare", "nmt", "--output-dir", str(nmt_data), "--max-train-examples",
                     "64", "--vocabulary-size", "1000", "--sequence-length", "16"], capsys)
    assert "'max_train_examples': (128, 64)" in err and "Received: output_dir=" in err
    assert listing(nmt_data) == before


def test_prepare_refuses_masked_language_modelling(tmp_path, capsys):
    err = cli_error(["prepare", "bert-mlm", "--output-dir", str(tmp_path / "d")], capsys)
    assert "invalid choice: 'bert-mlm'" in err
    assert not os.path.exists(tmp_path / "d")


FLAGS = ["train", "nmt", *TRAIN_FLAGS]


@pytest.fixture(scope="module")
def blocked_run(nmt_data, tmp_path_factory):
    """A tiny nmt run from `nmt_data` on JAX with TensorFlow blocked."""
    run = tmp_path_factory.mktemp("blocked") / "run"
    code, output = without_tensorflow(*FLAGS, "--data", str(nmt_data), "--output-dir", str(run))
    assert code == 0 and "TENSORFLOW_LOADED=False" in output, output
    return run


def test_trains_from_prepared_data_with_tensorflow_blocked(blocked_run):
    final = json.loads((blocked_run / "metrics.json").read_text())["final"]
    for key in ("test_loss", "bleu", "chrf", "step_seconds", "tokens_per_second",
                "model_tflops_per_second"):
        assert np.isfinite(final[key]), key
    assert "mfu" not in final  # no peak on a CPU unless --peak-tflops
    assert final["replicas"] == 1
    lines = open(blocked_run / "learning_curves.jsonl").readlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]
    assert 0 < json.loads(lines[0])["seconds"] < json.loads(lines[1])["seconds"]
    translations = open(blocked_run / "test_translations.jsonl", encoding="utf-8").readlines()
    assert len(translations) == 8  # --eval-examples
    assert open(blocked_run / "learning_curves.csv").readline().startswith("step,loss,")
    assert os.path.isfile(blocked_run / "learning_curves.png")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(blocked_run / "logs"))
    assert os.path.isfile(blocked_run / "model" / "model.weights.h5")


def test_what_needs_tensorflow_says_so_where_it_is_missing(tmp_path):
    code, output = without_tensorflow(*FLAGS, "--output-dir", str(tmp_path / "run"))
    assert code == 2 and "A run without --data (tf.data) needs TensorFlow" in output, output
    assert "Received: data=None, KERAS_BACKEND='jax'" in output and "Traceback" not in output
    code, output = without_tensorflow("prepare", "nmt", "--output-dir", str(tmp_path / "data"))
    assert code == 2 and "`prepare` (tf.data, the task's tokenizer) needs TensorFlow" in output
    assert "Received: task='nmt'" in output
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_interrupted_run_from_prepared_data_resumes_to_the_same_weights(nmt_data, blocked_run,
                                                                        tmp_path):
    flags = [*FLAGS, "--data", str(nmt_data), "--output-dir", str(tmp_path)]
    code, output = without_tensorflow(*flags, env={"COLLAB_KERAS_STOP_AFTER_CHECKPOINTS": "1"})
    assert code == 130 and "TENSORFLOW_LOADED=False" in output, output
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest["checkpoint"] == "step-00000002"
    code, output = without_tensorflow(*flags, "--peak-tflops", "1")
    assert code == 0 and "from step 2 of 4" in output, output
    assert "TENSORFLOW_LOADED=False" in output
    assert "mfu" in json.loads((tmp_path / "metrics.json").read_text())["final"]
    final = os.path.join("checkpoints", "step-00000004", "model.weights.h5")
    assert_same_weights(blocked_run / final, tmp_path / final)
    # The finished run, started again, is evaluated again and keeps its timing.
    timing = json.loads((tmp_path / "metrics.json").read_text())["final"]["step_seconds"]
    code, output = without_tensorflow(*flags, "--peak-tflops", "1")
    assert code == 0 and "from step 4 of 4" in output, output
    assert json.loads((tmp_path / "metrics.json").read_text())["final"]["step_seconds"] == timing


@pytest.mark.slow
def test_data_parallel_over_two_devices_divides_the_batch(nmt_data, tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    flags = [*FLAGS, "--data", str(nmt_data)]
    code, output = without_tensorflow(*flags, "--output-dir", str(tmp_path / "run"), env=env)
    assert code == 0 and "TENSORFLOW_LOADED=False" in output, output
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert final["replicas"] == 2 and np.isfinite(final["test_loss"])
    code, output = without_tensorflow(*flags, "--batch-size", "7", "--output-dir",
                                      str(tmp_path / "odd"), env=env)
    assert code == 2 and "divide evenly across the 2 replicas" in output, output
    assert "Received: batch_size=7" in output


def test_detokenization_without_tensorflow_matches_tensorflow_on_the_test_split(tmp_path):
    """The decoded test verses, turned back into text on the JAX path
    (numpy and keras-hub's pure-Python tokenizer) and on the TensorFlow
    path, are the same strings."""
    from collab_keras import models
    from collab_keras.training import bible

    _, german = bible.load_pairs("test")
    assert len(german) == 301
    # A vocabulary holding the verses' words, so that they come back whole.
    tokenizer = models.TransformerNMTTokenizer.train(list(german), 8000)
    vocabularies.save(str(tmp_path / "vocabulary.txt"), tokenizer.get_vocabulary())
    preprocessor = models.TransformerNMTSeq2SeqLMPreprocessor(tokenizer, 128, 128)
    # [START] tokens [END] [PAD]..., as a decode returns them.
    packed, _, _ = preprocessor({"encoder_text": german, "decoder_text": german})
    ids = np.asarray(packed["decoder_token_ids"])
    mask = np.asarray(packed["decoder_padding_mask"])
    import tensorflow as tf

    expected = [t.decode() for t in tf.function(preprocessor.generate_postprocess)(
        {"decoder_token_ids": ids, "decoder_padding_mask": mask}).numpy()]
    np.savez(tmp_path / "decoded.npz", ids=ids, mask=mask)
    code = f"""
import json, numpy as np
from collab_keras import models
tokenizer = models.TransformerNMTTokenizer(vocabulary={str(tmp_path / 'vocabulary.txt')!r})
preprocessor = models.TransformerNMTSeq2SeqLMPreprocessor(tokenizer, 128, 128)
decoded = np.load({str(tmp_path / 'decoded.npz')!r})
ids, mask = decoded["ids"], decoded["mask"]
texts = preprocessor.generate_postprocess(
    {{"decoder_token_ids": ids, "decoder_padding_mask": mask}})
from tests.without_tensorflow import tensorflow_loaded
print(json.dumps({{"texts": texts, "tensorflow": tensorflow_loaded()}}))
"""
    status, output = without_tensorflow(code=code)
    assert status == 0, output
    result = json.loads(output.strip().splitlines()[-1])
    assert result["tensorflow"] is False
    assert result["texts"] == expected
    # The verses come back as they were written (the few others differ in spacing).
    assert sum(t == g for t, g in zip(expected, german)) > 250


def test_training_flops_of_a_tiny_model_by_hand():
    from collab_keras import models

    backbone = models.TransformerNMTBackbone(
        vocabulary_size=100, num_encoder_layers=2, num_decoder_layers=1, num_heads=4,
        hidden_dim=64, intermediate_dim=128, attention="collaborative", shared_key_dim=32)
    s, t = 10, 6  # source, target lengths
    # One collaborative attention layer, T queries on S keys: projections
    # q (T x 64 x 32), k (S x 64 x 32), v (S x 64 x 64), output (T x 64 x 64);
    # 4 heads each scoring T x S over all 32 shared dims; mixing 4 x T x 32
    # multiplies; content S x 64 x 4; weighted values T x S x 64.
    def collaborative(t, s):
        return (2 * (t * 64 * 32 + s * 64 * 32 + s * 64 * 64 + t * 64 * 64)
                + 4 * 2 * t * s * 32 + 4 * t * 32 + 2 * s * 64 * 4 + 2 * t * s * 64)
    assert collaborative(10, 10) == 290560
    feed_forward = lambda n: 2 * 2 * n * 64 * 128  # noqa: E731
    forward = (2 * (collaborative(s, s) + feed_forward(s))
               + collaborative(t, t) + collaborative(t, s) + feed_forward(t)
               + 2 * t * 64 * 100)
    assert flops.nmt_training_flops(backbone, 3, s, t) == 3 * 3 * forward

    # Concatenated heads at the same total key width score once over it.
    backbone = models.TransformerNMTBackbone(
        vocabulary_size=100, num_encoder_layers=1, num_decoder_layers=1, num_heads=4,
        hidden_dim=64, intermediate_dim=128, attention="concatenate", shared_key_dim=32)
    concatenated = (2 * (10 * 64 * 32 * 2 + 10 * 64 * 64 * 2) + 2 * 100 * 32 + 2 * 100 * 64)
    forward = 3 * concatenated + 2 * feed_forward(10) + 2 * 10 * 64 * 100
    assert flops.nmt_training_flops(backbone, 1, 10, 10) == 3 * forward


def test_peak_for_the_mfu():
    assert flops.peak_tflops(None, on_gpu=False, devices=1) is None
    assert flops.peak_tflops(None, on_gpu=True, devices=2) == 2 * flops.GPU_PEAK_TFLOPS
    assert flops.peak_tflops(100.0, on_gpu=False, devices=1) == 100.0


def test_batches_cut_padding_and_resume_in_place(nmt_data):
    data = prepared.load(str(nmt_data), options())
    train = data.splits["train"]
    whole = prepared.Batches(train, 8, seed=0, steps=40)
    resumed = prepared.Batches(train, 8, seed=0, steps=40, skip=30)
    assert len(whole) == 40 and len(resumed) == 10
    for i in range(10):
        for a, b in zip(keras.tree.flatten(whole[30 + i]), keras.tree.flatten(resumed[i])):
            np.testing.assert_array_equal(a, b)
    # Each pass sees every example once (16 batches of 8 per pass of 128).
    seen = np.concatenate([whole.indices(i) for i in range(16)])
    assert sorted(seen) == list(range(128))
    # Only padding is cut: the kept tokens are all the example's tokens.
    x, y, sample_weight = whole[0]
    rows = whole.indices(0)
    assert x["encoder_token_ids"].shape[1] == whole.length(0) <= 16
    assert x["encoder_padding_mask"].sum() == train["x.encoder_padding_mask"][rows].sum()
    assert sample_weight.sum() == train["sample_weight"][rows].sum()


@pytest.mark.parametrize("task, shapes", [
    ("vit", {"x": (8, 32, 32, 3), "y": (8,)}),  # digits resized by the converter
    ("bert-classify", {"x.token_ids": (8, 16), "x.padding_mask": (8, 16), "y": (8,)}),
])
def test_prepare_and_train_the_array_tasks(task, shapes, tmp_path):
    path = tmp_path / "data"
    cli.main(["prepare", task, "--output-dir", str(path), *DATA_FLAGS])
    data = prepared.load(str(path), options(task))
    assert data.manifest["splits"]["train"] == 128
    assert (data.vocabulary is None) == (task == "vit")
    for name, shape in shapes.items():
        assert data.splits["train"][name].shape[1:] == shape[1:], name
    assert "sample_weight" not in data.splits["train"]
    x, y = prepared.Batches(data.splits["train"], 8, seed=0, steps=2)[0]
    assert y.shape == (8,)
    if task == "vit":
        code, output = without_tensorflow("train", task, "--data", str(path), "--output-dir",
                                          str(tmp_path / "run"), *TRAIN_FLAGS)
        assert code == 0 and "TENSORFLOW_LOADED=False" in output, output
        final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
        assert np.isfinite(final["test_sparse_categorical_accuracy"])


@pytest.mark.slow
def test_torch_backend_trains_from_prepared_data_with_tensorflow_blocked(nmt_data, tmp_path):
    code, output = without_tensorflow(*FLAGS, "--data", str(nmt_data), "--output-dir",
                                      str(tmp_path), env={"KERAS_BACKEND": "torch"})
    assert code == 0 and "TENSORFLOW_LOADED=False" in output, output
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert np.isfinite(final["test_loss"]) and "bleu" in final
