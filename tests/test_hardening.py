"""Issue 22: nothing a user types destroys their files or ends in a traceback.

One regression test for each of the 23 cases the issue lists (named in each
test's comment as "wrong N" or "crash N"; each failed on the code before the
fix), then `test_sweep_*`: the growing table of bad inputs, each with the
one-line message it must give. Add a row there for every new flag, config
key or file. `reparametrize`'s cases (crash 7 and 8) are tested with it.
"""

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import keras
import numpy as np
import pytest

from collab_keras import CollaborativeAttention
from collab_keras.training import checkpoint
from collab_keras.training import cli
from collab_keras.training import data
from collab_keras.training import run
from collab_keras.training import vocabulary as vocabularies
from collab_keras.training.config import RunConfig
from tests.test_training import ROOT
from tests.test_training import TINY_FLAGS
from tests.test_training import tiny_config

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="trains and exports with TensorFlow"
)


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("COLLAB_KERAS_VERBOSE", "0")


def cli_error(argv, capsys, code=2):
    """Runs `collab-keras ARGV` in-process; its one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def listing(folder):
    """Every path under `folder`, relative, with the files' bytes."""
    found = {}
    for root, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            with open(os.path.join(root, name), "rb") as file:
                found[os.path.relpath(os.path.join(root, name), folder)] = file.read()
    return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished vit run (2 checkpoints of 2 steps), copied by tests."""
    keras.config.set_dtype_policy("float32")
    path = tmp_path_factory.mktemp("finished") / "run"
    os.environ["COLLAB_KERAS_VERBOSE"] = "0"
    run.train(tiny_config("vit", path))
    return path


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of `finished_run` (its config moved to the copy's folder)."""
    path = tmp_path / "run"
    shutil.copytree(finished_run, path)
    return path, tiny_config("vit", path)


# --- Wrong results ---------------------------------------------------------


@pytest.mark.parametrize("where", ["", ".", "/", "~"])
def test_empty_current_root_and_home_output_dirs_are_refused(where, tmp_path, monkeypatch,
                                                             capsys):
    # wrong 1: `--output-dir ""` wrote the run into the current folder.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    before = listing(tmp_path)
    err = cli_error(["train", "vit", "--output-dir", os.path.expanduser(where), *TINY_FLAGS],
                    capsys)
    assert "Received: output_dir=" in err and len(err.strip().splitlines()) <= 2
    assert listing(tmp_path) == before


def test_config_paths_are_read_against_the_config_folder(run_copy, tmp_path, monkeypatch,
                                                         capsys):
    # wrong 2: a relative output_dir was read against the current folder and
    # a fresh run started elsewhere instead of resuming.
    path, _ = run_copy
    saved = json.loads((path / "config.json").read_text())
    assert saved["output_dir"] == "."  # the folder the config lies in
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = cli._train_parser(argparse.ArgumentParser().add_subparsers()).parse_args(["--config", os.path.relpath(path / "config.json")])
    assert cli.config_from_args(args).output_dir == str(path)
    # A hand-written config with a relative folder, read from elsewhere.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.json").write_text(
        json.dumps({"task": "vit", "output_dir": "../runs/a", "steps": 4,
                    "checkpoint_every": 2, "warmup_steps": 1}))
    config = RunConfig.from_json((tmp_path / "configs" / "c.json").read_text(),
                                 str(tmp_path / "configs"))
    assert config.output_dir == str(tmp_path / "runs" / "a")
    assert os.listdir(elsewhere) == []


def test_a_refused_command_writes_nothing(tmp_path):
    # wrong 3: config.json was written before the arguments were checked,
    # and then blocked the corrected command.
    target = tmp_path / "new"
    with pytest.raises(ValueError, match="Received: preset='vit_huge_typo'"):
        run.train(tiny_config("vit", target, preset="vit_huge_typo"))
    with pytest.raises(ValueError, match="num_layers"):
        run.train(tiny_config("vit", target, overrides={"num_layers": 0}))
    assert not target.exists()


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_corrupted_bytes_is_refused(run_copy):
    # wrong 4: same size, other bytes: it was resumed from without complaint.
    path, config = run_copy
    weights = path / "checkpoints" / "step-00000004" / "model.weights.h5"
    flip_a_byte(weights)
    with pytest.raises(ValueError, match="model.weights.h5 is corrupt.*SHA-256"):
        run.train(config)
    assert weights.exists()  # nothing deleted


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: (c / "latest.json").write_text('{"checkpoint": "../../elsewhere"}'),
         "must name a step-NNNNNNNN folder.*Received: checkpoint='../../elsewhere'"),
        (lambda c: (c / "latest.json").write_text('{"checkpoint": "step-00000002"}'),
         "holds no state.json"),
        (lambda c: (c / "step-00000004" / "state.json").write_text(
            (c / "step-00000004" / "state.json").read_text().replace('"step": 4', '"step": 2')),
         "state.json does not match the checksum"),
    ],
    ids=["latest-outside", "latest-missing-folder", "state-edited"],
)
def test_checkpoint_pointers_are_validated(run_copy, edit, message):
    # wrong 5: latest.json pointing outside the run and a hand-edited
    # state.json were trusted.
    path, config = run_copy
    edit(path / "checkpoints")
    with pytest.raises(ValueError, match=message):
        run.train(config)


def test_a_foreign_vocabulary_is_refused_before_any_checkpoint(tmp_path):
    # wrong 6: another vocabulary.txt in a run without checkpoints was used.
    config = tiny_config("bert-classify", tmp_path / "run")
    run.claim_output_dir(config, resume=False)
    foreign = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "other", "words"]
    vocabularies.save(str(tmp_path / "other.txt"), foreign)
    shutil.copy(tmp_path / "other.txt", tmp_path / "run" / "vocabulary.txt")
    with pytest.raises(ValueError, match="not the vocabulary this run wrote.*Received: vocabulary="):
        run.train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    """A tiny BertTextClassifier exported under umask 022 (not a translator)."""
    from collab_keras.training.export import export_saved_model
    from tests import serving_tasks

    task = serving_tasks.bert_text_classifier()
    mask = os.umask(0o022)
    try:
        return task, export_saved_model(task, tmp_path_factory.mktemp("exports") / "bert")
    finally:
        os.umask(mask)


@tensorflow_only
def test_exports_honour_the_umask(bert_export):
    # wrong 7: folders 0700 and files 0600: TF Serving as another user could
    # not read them.
    _, version_dir = bert_export
    for root, folders, files in os.walk(version_dir):
        assert os.stat(root).st_mode & 0o777 == 0o755, root
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--weight-decay", "-5", "Received: weight_decay=-5.0"),
        ("--clip-norm", "-1", "Received: clip_norm=-1.0"),
        ("--learning-rate", "inf", "Received: learning_rate=inf"),
        ("--learning-rate", "nan", "Received: learning_rate=nan"),
    ],
)
def test_negative_and_non_finite_rates_are_refused(flag, value, message, tmp_path, capsys):
    # wrong 8 and the first half of wrong 9.
    err = cli_error(["train", "vit", "--output-dir", str(tmp_path / "r"), flag, value], capsys)
    assert message in err
    assert not (tmp_path / "r").exists()


@tensorflow_only
def test_a_diverging_run_stops_keeping_its_last_good_checkpoint(tmp_path):
    # wrong 9: a learning rate that made the loss NaN saved NaN weights and
    # exited 0. 1e30 trains step 1 and 2 (a checkpoint), diverges at step 3.
    path = tmp_path / "run"
    with pytest.raises(RuntimeError, match="not finite.*at step 3.*step 2, is kept"):
        run.train(tiny_config("vit", path, learning_rate=1e30, clip_norm=0.0))
    latest = json.loads((path / "checkpoints" / "latest.json").read_text())
    assert latest["checkpoint"] == "step-00000002"
    assert not (path / "metrics.json").exists()
    checkpoint.restore(run_model_for(path), str(path / "checkpoints"),
                       {"task": "vit"})  # the kept checkpoint verifies


def run_model_for(path):
    """A model whose restore only reads (verification happens first)."""
    from collab_keras.training import tasks

    config = RunConfig.from_json((path / "config.json").read_text(), str(path))
    model = tasks.build(config, num_classes=10)
    model.compile(optimizer=run._optimizer(config))
    return model


# wrong 10 (a rerun of a finished run kept its timing):
# tests/test_training.py::test_finished_run_is_resumed_not_overwritten.


@tensorflow_only
@pytest.mark.parametrize("bad", [-1, "size"])
def test_exported_graph_rejects_out_of_range_ids(bert_export, bad):
    # wrong 11: -1 and ids >= the vocabulary size wrapped round to real
    # embeddings in the exported SavedModel.
    import tensorflow as tf

    task, version_dir = bert_export
    size = task.backbone.vocabulary_size
    loaded = tf.saved_model.load(version_dir)
    ids = np.array([[2, 5, size - 1, 3]], "int32")
    inputs = {"token_ids": ids, "segment_ids": np.zeros_like(ids),
              "padding_mask": np.ones_like(ids)}
    loaded.signatures["logits"](**{k: tf.constant(v) for k, v in inputs.items()})
    inputs["token_ids"] = ids.copy()
    inputs["token_ids"][0, 1] = size if bad == "size" else bad
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"`token_ids` must hold ids in \[0, vocabulary_size={size}\)"):
        loaded.signatures["logits"](**{k: tf.constant(v) for k, v in inputs.items()})


@pytest.mark.parametrize("bad", [-1, 20])
def test_backbone_predict_rejects_out_of_range_ids(bad):
    # wrong 11, the `predict` half: inside the compiled predict step the ids
    # have no values to check, so they wrapped round to real embeddings.
    from collab_keras.models import BertBackbone
    from collab_keras.models import TransformerNMTBackbone

    ids = np.array([[2, 5, 19, 3]], "int32")
    bert = BertBackbone(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
                        max_sequence_length=8)
    inputs = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}
    bert.predict(inputs, verbose=0)
    inputs["token_ids"] = np.array([[2, bad, 19, 3]], "int32")
    with pytest.raises(ValueError, match=r"`token_ids` must hold ids in \[0, vocabulary_size=20\)"):
        bert.predict(inputs, verbose=0)
    nmt = TransformerNMTBackbone(vocabulary_size=20, num_encoder_layers=1, num_decoder_layers=1, num_heads=2,
                                 hidden_dim=8, intermediate_dim=16,
                                 max_sequence_length=8)
    inputs = {"encoder_token_ids": ids, "encoder_padding_mask": np.ones_like(ids),
              "decoder_token_ids": np.array([[2, bad, 19, 3]], "int32"), "decoder_padding_mask": np.ones_like(ids)}
    with pytest.raises(ValueError, match=r"`decoder_token_ids` must hold ids in \[0, vocabulary_size=20\)"):
        nmt.predict(inputs, verbose=0)


def test_over_long_text_is_translated_with_a_warning():
    # wrong 12: translate cut long input to the encoder length silently.
    from collab_keras.training import evaluation
    from tests import serving_tasks

    preprocessor = serving_tasks.nmt_seq2seq_lm().preprocessor  # length 12
    texts = ["a", " ".join(["in the beginning"] * 8)]
    with pytest.warns(UserWarning, match=r"Text 1 is \d+ tokens long.*first 12") as caught:
        evaluation.warn_truncated(preprocessor, texts)
    assert [str(w.message)[:7] for w in caught if "tokens long" in str(w.message)] == ["Text 1 "]


@pytest.mark.parametrize("falsy", [False, 0])
def test_use_causal_mask_takes_what_multi_head_attention_takes(falsy):
    # wrong 13: use_causal_mask=0 was refused (keras' own test_masking
    # [not_causal] passes 0).
    layer = CollaborativeAttention(num_heads=2, key_dim=2)
    x = np.random.default_rng(0).normal(size=(1, 3, 4)).astype("float32")
    expected = keras.ops.convert_to_numpy(layer(x, x, use_causal_mask=False))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(x, x, use_causal_mask=falsy)), expected)
    with pytest.raises(ValueError, match="Received: use_causal_mask='False'"):
        layer(x, x, use_causal_mask="False")  # a string Python reads as true


def test_interrupted_writes_leave_no_temporary_files(run_copy):
    # wrong 14 (second half; the cuInit line: tests/test_training_start_up.py):
    # a run killed in a write left .tmp-* files behind; the next start of
    # the run removes them (only this module's own prefix).
    path, config = run_copy
    for folder in (path, path / "checkpoints"):
        (folder / ".tmp-abc123").write_text("half")
    (path / "checkpoints" / ".tmp-dir").mkdir()
    (path / "export").mkdir()
    (path / "export" / ".tmp-export-1-xyz").mkdir()
    run.train(config)
    left = [p for p in listing(path) if os.path.basename(p).startswith(".tmp-")]
    assert left == []


# --- Crashes -----------------------------------------------------------------


def test_config_without_task_is_a_clear_error(tmp_path, capsys):
    # crash 1: TypeError.
    (tmp_path / "config.json").write_text(json.dumps({"output_dir": "."}))
    err = cli_error(["train", "--config", str(tmp_path / "config.json")], capsys)
    assert "lacks the required keys ['task']" in err


def _mount(path, options):
    """Mounts a tmpfs at `path` (root on Linux), or skips."""
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                            capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], check=False)  # -l: even if busy


@tensorflow_only
def test_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    # crash 2: an OSError traceback. A real read-only file system where the
    # machine allows mounting one; else every write refused by the OS stub.
    target = tmp_path / "ro"
    _mount(target, "ro,size=1m")
    try:
        err = cli_error(["train", "vit", "--output-dir", str(target / "run"), *TINY_FLAGS,
                         "--no-export"], capsys, code=1)
    finally:
        _umount(target)
    assert err.startswith(f"collab-keras: error: cannot write {target / 'run'}")
    assert "Read-only file system" in err and len(err.strip().splitlines()) == 1


def test_offline_tfds_is_a_fast_one_line_error(tmp_path, monkeypatch, capsys):
    # crash 3: about 217 s of retries, then a ConnectionError.
    def unreachable(address, timeout=None):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(data.socket, "create_connection", unreachable)
    err = cli_error(["train", "bert-classify", "--output-dir", str(tmp_path / "r"),
                     "--dataset", "glue/sst2", "--data-dir", str(tmp_path)], capsys)
    assert "looks offline" in err and "Received: dataset='glue/sst2'" in err
    assert not (tmp_path / "r").exists()


class _Model(keras.Model):
    """A tiny model with a seed variable, as the zoo's tasks have."""

    def __init__(self, units=3):
        super().__init__()
        self.dense = keras.layers.Dense(units)
        self.dropout = keras.layers.Dropout(0.5, seed=1)

    def call(self, x, training=False):
        return self.dropout(self.dense(x), training=training)


def _saved_model(directory):
    model = _Model()
    model(np.zeros((1, 4), "float32"))
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    checkpoint.save(model, directory, 2, [{"loss": 1.0, "step": 2}], {"task": "t"})
    return model


WRITE_POINTS = {
    "weights": (_Model, "save_weights"),
    "seeds": (np, "savez"),
    "state.json": (checkpoint, "atomic_write_json"),
    "fsync": (os, "fsync"),  # inside the first atomic write (state.json)
    "rename": (os, "rename"),
}


@pytest.mark.parametrize("point", [*WRITE_POINTS, "latest.json"])
def test_a_full_disk_at_any_point_of_a_checkpoint_keeps_the_last_one(point, tmp_path,
                                                                     monkeypatch):
    # crash 4 (simulated at every write): the previous checkpoint stays
    # complete and referenced, and no partial file is left.
    directory = str(tmp_path / "checkpoints")
    model = _saved_model(directory)
    before = listing(directory)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if point == "latest.json":
        real = checkpoint.atomic_write_json
        monkeypatch.setattr(checkpoint, "atomic_write_json", lambda path, value: (
            full() if path.endswith("latest.json") else real(path, value)))
    else:
        owner, name = WRITE_POINTS[point]
        monkeypatch.setattr(owner, name, full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(model, directory, 4, [{"step": 2}, {"step": 4}], {"task": "t"})
    monkeypatch.undo()
    after = listing(directory)
    left = {p for p in after if ".tmp-" in p}
    assert not left
    assert {k: v for k, v in after.items() if "step-00000004" not in k} == before
    assert checkpoint.restore(model, directory, {"task": "t"})[0] == 2


def test_a_disk_without_room_is_refused_before_writing(tmp_path):
    # crash 4 for real: a checkpoint on a 256 KB tmpfs (the model's needs
    # more) ends in ENOSPC before a byte of it is written; HDF5 never sees
    # the full disk (it crashed the process there).
    target = tmp_path / "small"
    _mount(target, "size=256k")
    try:
        model = _Model(units=40000)  # 200,000 parameters
        model(np.zeros((1, 4), "float32"))
        model.compile(optimizer="adam", loss="mse")
        with pytest.raises(OSError, match="No room for a checkpoint") as info:
            checkpoint.save(model, str(target / "checkpoints"), 2, [], {})
        assert info.value.errno == errno.ENOSPC
        assert os.listdir(target / "checkpoints") == []
    finally:
        _umount(target)


@tensorflow_only
def test_translate_refuses_an_export_that_is_not_a_translator(bert_export, capsys):
    # crash 5: AttributeError.
    from collab_keras.training.serving import translate_main

    _, version_dir = bert_export
    assert translate_main(["--model", version_dir, "in the beginning"]) == 2
    err = capsys.readouterr().err
    assert "is an export of a BertTextClassifier, not a translator" in err
    assert "Received: model=" in err and "Traceback" not in err


class _Reply(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.server.replies.pop(0).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


MALFORMED = {
    "not-json": "<html>ok</html>",
    "no-predictions": '{"outputs": []}',
    "missing-key": '{"predictions": [{"decoder_token_ids": [1, 2]}]}',
    "too-few": '{"predictions": []}',
    "ragged": '{"predictions": [{"decoder_token_ids": [[1], 2], "decoder_padding_mask": [1, 1]}]}',
    "shapes-differ": '{"predictions": [{"decoder_token_ids": [1, 2], "decoder_padding_mask": [1]}]}',
}


def test_serving_client_reports_malformed_replies():
    # crash 6: KeyError / IndexError on a malformed 200 reply.
    from collab_keras.training.serving import predict_rest

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Reply)  # loopback only
    httpd.replies = list(MALFORMED.values()) + [
        '{"predictions": [{"decoder_token_ids": [1, 2], "decoder_padding_mask": [1, 0]}]}']
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    server = f"127.0.0.1:{httpd.server_address[1]}"
    inputs = {"encoder_token_ids": np.array([[1, 2]]), "encoder_padding_mask": np.array([[1, 1]])}
    try:
        for name in MALFORMED:
            with pytest.raises(RuntimeError, match="sent a malformed reply.*Received:"):
                predict_rest(server, "nmt", "translate", inputs, timeout=10)
        good = predict_rest(server, "nmt", "translate", inputs, timeout=10)
        np.testing.assert_array_equal(good["decoder_token_ids"], [[1, 2]])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_shared_key_dim_has_an_upper_bound():
    # crash 9: shared_key_dim=10**6 ran out of memory while building.
    with pytest.raises(ValueError, match=r"at most 16 \* num_heads \* key_dim = 128.*"
                                         r"Received: shared_key_dim=1000000"):
        CollaborativeAttention(num_heads=2, key_dim=4, shared_key_dim=10**6)
    assert CollaborativeAttention(num_heads=2, key_dim=4, shared_key_dim=128).shared_key_dim == 128


# --- The sweep: every flag, config key and run file, each bad value refused
# with one line that names it and echoes it. Grows with every new input. ---

SWEEP_FLAGS = [
    (["--batch-size", "0"], "Received: batch_size=0"),
    (["--steps", "-4"], "Received: steps=-4"),
    (["--steps", "5"], "Received: steps=5"),
    (["--checkpoint-every", "0"], "Received: checkpoint_every=0"),
    (["--warmup-steps", "-1"], "Received: warmup_steps=-1"),
    (["--warmup-steps", "4"], "Received: warmup_steps=4, steps=4"),
    (["--learning-rate", "0"], "Received: learning_rate=0.0"),
    (["--learning-rate=-1e-3"], "Received: learning_rate=-0.001"),
    (["--weight-decay", "inf"], "Received: weight_decay=inf"),
    (["--clip-norm", "nan"], "Received: clip_norm=nan"),
    (["--vocabulary-size", "3"], "Received: vocabulary_size=3"),
    (["--vocabulary-size", "10000000"], "Received: vocabulary_size=10000000"),
    (["--sequence-length", "1"], "Received: sequence_length=1"),
    (["--sequence-length", "100000"], "Received: sequence_length=100000"),
    (["--shared-key-dim", "0"], "Received: shared_key_dim=0"),
    (["--eval-examples", "0"], "Received: eval_examples=0"),
    (["--beam-width", "0"], "Received: beam_width=0"),
    (["--model-parallel", "0"], "Received: model_parallel=0"),
    (["--cpu-devices", "0"], "Received: cpu_devices=0"),
    (["--max-train-examples", "0"], "Received: max_train_examples=0"),
    (["--seed", "-1"], "Received: seed=-1"),
    (["--dataset", "mnist"], "Received: dataset='mnist'"),
    (["--vocabulary-file", "/no/such/file"], "Received: vocabulary_file='/no/such/file'"),
    (["--set", "2"], "Received: --set='2'"),
    (["--peak-tflops", "0"], "Received: peak_tflops=0.0"),
    (["--label-smoothing", "1"], "Received: label_smoothing=1.0"),
    (["--label-smoothing", "0.1"], "Received: label_smoothing=0.1, task='vit'"),
    (["--peak-tflops", "nan"], "Received: peak_tflops=nan"),
    (["--data", "/no/such/folder"], "Received: data='/no/such/folder'"),
    (["--attention", "linear"], "invalid choice: 'linear'"),
    (["--batch-size", "two"], "invalid int value: 'two'"),
]


@pytest.mark.parametrize("flags, message", SWEEP_FLAGS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_sweep_flags(flags, message, tmp_path, capsys):
    target = tmp_path / "run"
    argv = ["train", "vit", "--output-dir", str(target),
            "--steps", "4", "--checkpoint-every", "2", "--warmup-steps", "1", *flags]
    err = cli_error(argv, capsys)
    assert message in err, err
    assert not target.exists()


SWEEP_CONFIGS = [
    ("[1, 2]", "must be a JSON object"),
    ("{not json", "is not JSON"),
    ('{"task": "vit", "output_dir": ".", "colour": 1}', "Unknown keys in the run config: ['colour']"),
    ('{"task": "vit"}', "lacks the required keys ['output_dir']"),
    ('{"task": "vit", "output_dir": ".."}', "is not empty and holds no collab-keras run"),
    ('{"task": "vit", "output_dir": "", "steps": 4}', "Received: output_dir=''"),
    ('{"task": "vit", "output_dir": "r", "steps": "4"}', "Received: steps='4'"),
    ('{"task": "vit", "output_dir": "r", "overrides": [1]}', "Received: overrides=[1]"),
    ('{"task": "vit", "output_dir": "r", "export": "no"}', "Received: export='no'"),
    ('{"task": "vit", "output_dir": "r", "learning_rate": null}', "Received: learning_rate=None"),
]


@pytest.mark.parametrize("text, message", SWEEP_CONFIGS)
def test_sweep_config_files(text, message, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    monkeypatch.chdir(folder)
    before = listing(tmp_path)
    err = cli_error(["train", "--config", str(folder / "config.json")], capsys)
    assert message in err, err
    assert listing(tmp_path) == before


def test_sweep_config_with_other_flags_is_refused(tmp_path, capsys):
    err = cli_error(["train", "--config", str(tmp_path / "c.json"), "--steps", "10"], capsys)
    assert "Received: --steps with config=" in err


@pytest.mark.parametrize(
    "damage, message",
    [
        ("latest.json", "latest.json is unreadable"),
        ("state.json", "state.json does not match"),
        ("seeds.npz", "seeds.npz is corrupt"),
        ("config.json", "holds a config.json that is not a valid run config"),
    ],
)
def test_sweep_run_folder_files(run_copy, damage, message):
    path, config = run_copy
    found = [p for p in (path / damage, path / "checkpoints" / damage,
                         path / "checkpoints" / "step-00000004" / damage) if p.exists()]
    assert found, damage
    found[0].write_text("{")
    with pytest.raises(ValueError, match=message):
        run.train(config)


def test_sweep_command_line_has_no_traceback(tmp_path):
    # The whole command, as a user runs it: one line, non-zero, no traceback.
    result = subprocess.run(
        [sys.executable, "-m", "collab_keras.training", "train", "vit", "--output-dir",
         "", "--steps", "4", "--checkpoint-every", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Received: output_dir=''" in result.stderr
    assert os.listdir(tmp_path) == []
