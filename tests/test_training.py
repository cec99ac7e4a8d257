"""The training runner and CLI: every task trains, resumes, refuses bad input."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

from collab_keras.training import cli
from collab_keras.training import run
from collab_keras.training.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "nmt": dict(vocabulary_size=200, sequence_length=16),
    "bert-mlm": dict(vocabulary_size=200, sequence_length=16),
    "bert-classify": dict(vocabulary_size=200, sequence_length=16),
    "vit": dict(),
}
TINY_FLAGS = [
    "--steps", "4", "--checkpoint-every", "2", "--batch-size", "8",
    "--warmup-steps", "1", "--eval-examples", "8", "--max-train-examples", "128",
]


def tiny_config(task, output_dir, **changes):
    values = dict(
        task=task, output_dir=str(output_dir), steps=4, checkpoint_every=2,
        batch_size=8, warmup_steps=1, eval_examples=8, max_train_examples=128,
        beam_width=2, export=False, **TINY[task],
    )
    values.update(changes)
    return RunConfig(**values)


def weights(path):
    """Every array of a Keras .weights.h5 file, by its path in the file."""
    arrays = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()])
            if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


def assert_same_weights(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def cli_process(*args, env=None, **kwargs):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "COLLAB_KERAS_VERBOSE": "0", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "collab_keras.training", *args], cwd=ROOT,
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, **kwargs,
    )


def cli_run(*args, env=None, timeout=600):
    process = cli_process(*args, env=env)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("COLLAB_KERAS_VERBOSE", "0")


@pytest.mark.parametrize("task", ["nmt", "bert-mlm", "bert-classify", "vit"])
@pytest.mark.parametrize("attention", ["collaborative"])
def test_every_task_trains_and_writes_its_run_folder(task, attention, tmp_path):
    metrics = run.train(tiny_config(task, tmp_path, attention=attention))
    files = set(os.listdir(tmp_path))
    assert {"config.json", "metrics.json", "learning_curves.png", "logs",
            "checkpoints", "model"} <= files
    assert ("vocabulary.txt" in files) == (task != "vit")
    assert os.listdir(tmp_path / "logs")  # TensorBoard
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["step"] for h in saved["history"]] == [2, 4]
    assert np.isfinite(metrics["test_loss"])
    if task == "nmt":
        assert metrics["bleu_signature"].startswith("nrefs:1|case:mixed")
        assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["chrf"] <= 100
        assert metrics["tokens_per_second"] > 0
    if task == "bert-mlm":
        assert metrics["test_perplexity"] == pytest.approx(np.exp(metrics["test_loss"]))
    # The config written next to the outputs repeats the run.
    again = RunConfig.from_json((tmp_path / "config.json").read_text(), str(tmp_path))
    assert again == tiny_config(task, tmp_path, attention=attention)


def token_batch(label_smoothing):
    """Random labels and logits of 2 sequences of 5 tokens (3 of the second
    padding), their padding mask, and each token's smoothed cross-entropy."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype("float32")  # (batch, length, vocabulary)
    labels = rng.integers(0, 7, (2, 5))
    mask = (np.arange(5) < np.array([[5], [3]])).astype("float32")  # padding
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    per_token = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
    return labels, logits, mask, per_token


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_label_smoothed_loss_is_the_smoothed_token_cross_entropy(label_smoothing):
    labels, logits, mask, per_token = token_batch(label_smoothing)
    expected = (per_token * mask).sum() / mask.size  # Keras' sum_over_batch_size
    loss = run.LabelSmoothedCrossentropy(label_smoothing)(labels, logits, sample_weight=mask)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    if not label_smoothing:
        plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        np.testing.assert_allclose(float(loss), float(plain(labels, logits, sample_weight=mask)), rtol=1e-5)
    restored = keras.losses.deserialize(keras.losses.serialize(run.LabelSmoothedCrossentropy(0.2)))
    assert restored.label_smoothing == 0.2


@pytest.mark.parametrize("task,label_smoothing", [("nmt", 0.0), ("nmt", 0.1), ("bert-mlm", 0.0)])
def test_token_tasks_average_the_loss_over_real_tokens(tmp_path, task, label_smoothing):
    labels, logits, mask, per_token = token_batch(label_smoothing)
    expected = (per_token * mask).sum() / mask.sum()  # a mean over the 8 real tokens
    loss = run._loss(tiny_config(task, tmp_path, label_smoothing=label_smoothing))["loss"]
    np.testing.assert_allclose(float(loss(labels, logits, sample_weight=mask)), expected, rtol=1e-5)
    # More padding (batches cut to a longer example) leaves it unchanged.
    pad = lambda x: np.concatenate([x, np.zeros(x.shape[:1] + (3,) + x.shape[2:], x.dtype)], 1)
    longer = float(loss(pad(labels), pad(logits), sample_weight=pad(mask)))
    np.testing.assert_allclose(longer, expected, rtol=1e-5)
    assert run._loss(tiny_config("bert-classify", tmp_path)) == {}  # the task's own


def test_label_smoothing_trains_nmt(tmp_path):
    run.train(tiny_config("nmt", tmp_path, label_smoothing=0.1, eval_examples=4))
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 4]
    assert 0 < history[0]["seconds"] < history[1]["seconds"]  # training seconds so far
    lines = (tmp_path / "test_translations.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and set(json.loads(lines[0])) == {"source", "reference", "translation"}


def test_finished_run_is_resumed_not_overwritten(tmp_path):
    config = tiny_config("vit", tmp_path)
    run.train(config)
    checkpoint = tmp_path / "checkpoints" / "step-00000004" / "model.weights.h5"
    before = checkpoint.read_bytes()
    first = json.loads((tmp_path / "metrics.json").read_text())["final"]
    metrics = run.train(config)  # same config: resumes at step 4 of 4
    assert checkpoint.read_bytes() == before  # no step trained again
    # The timing of the run is kept, not replaced with null (issue 22, wrong 10).
    again = json.loads((tmp_path / "metrics.json").read_text())["final"]
    for key in ("train_seconds", "steps_per_second", "examples_per_second"):
        assert metrics[key] == again[key] == first[key] is not None, key


def test_run_settings_end_with_the_run(tmp_path):
    # Op determinism and the mixed policy of a run do not outlive it (left
    # on, op determinism makes Keras drop `jit_compile=True` silently).
    from tensorflow.python.framework import config as tf_config

    run.train(tiny_config("vit", tmp_path, deterministic=True,
                          mixed_precision=True))
    assert not tf_config.is_op_determinism_enabled()
    assert keras.mixed_precision.global_policy().name == "float32"


def test_output_dir_of_another_run_or_other_files_is_refused(tmp_path):
    run.train(tiny_config("vit", tmp_path))
    config_text = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="holds another run.*seed"):
        run.train(tiny_config("vit", tmp_path, seed=1))
    assert (tmp_path / "config.json").read_text() == config_text
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no collab-keras run"):
        run.train(tiny_config("vit", other))
    assert os.listdir(other) == ["notes.txt"]


def test_corrupt_checkpoint_and_wrong_vocabulary_are_refused(tmp_path):
    config = tiny_config("bert-classify", tmp_path)
    run.train(config)
    checkpoint = tmp_path / "checkpoints" / "step-00000004" / "model.weights.h5"
    vocabulary = (tmp_path / "vocabulary.txt").read_text()
    # A vocabulary that is not the checkpoint's (same size, other tokens).
    (tmp_path / "vocabulary.txt").write_text(vocabulary.replace("the\n", "thee\n"))
    with pytest.raises(ValueError, match="Received: vocabulary="):
        run.train(config)
    (tmp_path / "vocabulary.txt").write_text(vocabulary)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated.*Received: checkpoint="):
        run.train(config)
    assert checkpoint.stat().st_size == len(data) // 2  # nothing deleted


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "gpt", "--output-dir", "x"], "invalid choice: 'gpt'"),
        (["train", "vit", "--output-dir", "x", "--strategy", "ring"], "invalid choice: 'ring'"),
        (["train", "vit", "--output-dir", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "vit"], "Received: task='vit', output_dir=None"),
        (["train", "vit", "--output-dir", "x", "--batch-size", "0"], "Received: batch_size=0"),
        (["train", "vit", "--output-dir", "x", "--set", "2"], "Received: --set='2'"),
        (["train", "vit", "--output-dir", "x", "--steps", "5"], "Received: steps=5"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_preset_dataset_and_data_dir(tmp_path, capsys):
    with pytest.raises(ValueError, match="Received: preset='vit_huge_typo'"):
        run.train(tiny_config("vit", tmp_path / "a", preset="vit_huge_typo"))
    with pytest.raises(ValueError, match="Received: data_dir="):
        run.train(tiny_config("vit", tmp_path / "b", dataset="cifar10",
                              data_dir=str(tmp_path / "missing")))
    with pytest.raises(SystemExit):
        cli.main(["train", "vit", "--output-dir", str(tmp_path / "c"), "--dataset", "mnist"])
    assert "Received: dataset='mnist'" in capsys.readouterr().err


def test_tpu_strategy_without_a_tpu_fails_clearly():
    from collab_keras.training import distribution

    with pytest.raises(RuntimeError, match="found no TPU"):
        distribution.tf_strategy("tpu")
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        distribution.tf_strategy("multi-worker")


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    flags = ["train", "vit", "--steps", "300", "--checkpoint-every", "10",
             "--batch-size", "8", "--warmup-steps", "2", "--eval-examples", "8",
             "--deterministic", "--no-export"]
    killed = tmp_path / "killed"
    process = cli_process(*flags, "--output-dir", str(killed))
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 400
    while not latest.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    checkpoint = json.loads(latest.read_text())["checkpoint"]
    step = json.loads((killed / "checkpoints" / checkpoint / "state.json").read_text())["step"]
    assert 10 <= step < 300, step  # killed mid-run
    assert not (killed / "metrics.json").exists()

    code, output = cli_run(*flags, "--output-dir", str(killed))
    assert code == 0, output
    assert f"Resuming {killed} from step" in output
    whole = tmp_path / "whole"
    code, output = cli_run(*flags, "--output-dir", str(whole))
    assert code == 0, output
    final = os.path.join("checkpoints", "step-00000300", "model.weights.h5")
    assert_same_weights(killed / final, whole / final)  # weights and optimizer


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_reaches_the_single_device_loss(tmp_path):
    flags = ["train", "vit", "--steps", "6", "--checkpoint-every", "3", "--batch-size", "8",
             "--warmup-steps", "1", "--eval-examples", "8", "--cpu-devices", "2", "--clip-norm", "0",
             "--no-export"]
    losses = {}
    for strategy in ("default", "mirrored"):
        code, output = cli_run(*flags, "--strategy", strategy, "--output-dir",
                               str(tmp_path / strategy))
        assert code == 0, output
        history = json.loads((tmp_path / strategy / "metrics.json").read_text())["history"]
        losses[strategy] = [h["loss"] for h in history]
    np.testing.assert_allclose(losses["mirrored"], losses["default"], rtol=1e-4)
    code, output = cli_run(*flags[:-1], "--strategy", "mirrored", "--batch-size", "7",
                           "--output-dir", str(tmp_path / "odd"))
    assert code == 2 and "across the 2 replicas. Received: batch_size=7" in output


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_worker_processes_end_with_identical_weights(tmp_path):
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    flags = ["train", "vit", "--steps", "4", "--checkpoint-every", "2", "--batch-size", "8",
             "--warmup-steps", "1", "--eval-examples", "8", "--strategy", "multi-worker",
             "--no-export", "--output-dir", str(tmp_path)]
    processes = [
        cli_process(*flags, env={"TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=500)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    final = os.path.join("checkpoints", "step-00000004", "model.weights.h5")
    assert_same_weights(tmp_path / final, tmp_path / "workers" / "1" / final)
    assert not os.path.exists(tmp_path / "workers" / "1" / "metrics.json")


@pytest.mark.slow
def test_jax_data_parallel_on_two_host_devices_matches_one_device(tmp_path):
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    flags = ["train", "vit", "--steps", "4", "--checkpoint-every", "2", "--batch-size", "8",
             "--warmup-steps", "1", "--eval-examples", "8", "--no-export"]
    results = {}
    for strategy in ("default", "data-parallel"):
        code, output = cli_run(*flags, "--strategy", strategy, "--output-dir",
                               str(tmp_path / strategy), env=env)
        assert code == 0, output
        results[strategy] = weights(
            tmp_path / strategy / "checkpoints" / "step-00000004" / "model.weights.h5")
    for name, value in results["default"].items():
        np.testing.assert_allclose(results["data-parallel"][name], value, rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    code, output = cli_run(*flags, "--strategy", "mirrored", "--output-dir",
                           str(tmp_path / "m"), env=env)
    assert code == 2 and "needs the TensorFlow backend" in output
    shutil.rmtree(tmp_path)


def test_model_parallel_layout_splits_attention_and_feedforward_widths():
    import keras

    from collab_keras import models
    from collab_keras.training import distribution

    backbone = models.BertBackbone.from_architecture(
        "bert_tiny", vocabulary_size=100, attention="collaborative", shared_key_dim=64
    )
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], ["cpu:0", "cpu:1"])
    layouts = distribution.layout_map(backbone, mesh)
    by_path = {v.path: layouts[v.path] for v in backbone.weights}
    sharded = {p: tuple(l.axes) for p, l in by_path.items() if l is not None}
    query = [p for p in sharded if p.endswith("query/kernel")]
    assert query and all(sharded[p] == (None, "model") for p in query)  # (hidden, D̃k)
    assert any(p.endswith("mixing") and sharded[p] == (None, "model") for p in sharded)
    assert any(p.endswith("attention_output/kernel") and sharded[p][0] == "model" for p in sharded)
    assert any("intermediate_dense/kernel" in p and sharded[p] == (None, "model") for p in sharded)
    assert all(l is None for p, l in by_path.items() if "layer_norm" in p)  # replicated
