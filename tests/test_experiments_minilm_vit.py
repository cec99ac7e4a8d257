"""benchmarks/experiments/minilm_sentiment.py and vit_digits.py with `--data`
(issue 20): the float16 copy of the MiniLM checkpoint, the grids of `collab-keras
train` runs and their command lines, the records and tables read back from run
folders, and (slow) each `--quick` grid end to end in JAX subprocesses with
TensorFlow blocked."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from collab_keras.training import cli
from tests.test_training import ROOT

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "experiments")
sys.path.insert(0, os.path.abspath(EXPERIMENTS))
minilm = pytest.importorskip("minilm_sentiment")
vit = pytest.importorskip("vit_digits")
import _common  # noqa: E402 (benchmarks/experiments/, on the path above)


def fake_prepared(path, task, preset, sequence_length=128):
    """A prepared folder's manifest, all the grids read before training."""
    os.makedirs(path)
    options = {"task": task, "preset": preset, "dataset": "tweets" if task == "bert-classify" else "digits",
               "source": None, "target": None, "max_train_examples": None, "vocabulary_size": 8000,
               "sequence_length": sequence_length}
    manifest = {"format": 1, "task": task, "options": options, "sha256": {},
                "splits": {"train": 100, "validation": 20, "test": 10}}
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return str(path)


def train_parser():
    parser = argparse.ArgumentParser()
    return parser, cli._train_parser(parser.add_subparsers(dest="command"))


def assert_round_trip(config):
    """The subprocess's own parser makes the very same run."""
    argv = _common.command(config)
    assert argv[:5] == [sys.executable, "-m", "collab_keras.training", "train", config.task]
    parser, train = train_parser()
    assert cli.config_from_args(parser.parse_args(argv[3:]), train) == config
    return argv


def test_minilm_grid_is_the_original_then_both_conversions_at_every_rank(tmp_path):
    data = fake_prepared(tmp_path / "tweets", "bert-classify", str(tmp_path))
    args = minilm.parse(["--data", data, "--parallel", "4", "--mixed-precision"])
    assert (args.seeds, args.batch_size, args.steps, args.patience) == (5, 32, 4500, 3)  # the --data defaults
    grid = minilm.run_configs(args, str(tmp_path / "runs"))
    rows = [("original", None)] + [(k, r) for r in (384, 256, 192, 128, 96) for k in ("tensor-only", "data-aware")]
    assert [(kind, rank) for kind, rank, _ in grid] == rows * 5
    assert len({c.output_dir for _, _, c in grid}) == 55
    for kind, rank, config in grid:
        assert config.data_options() == json.loads((tmp_path / "tweets" / "manifest.json").read_text())["options"]
        assert (config.attention, config.calibration) == {
            "original": ("concatenate", "auto"), "tensor-only": ("collaborative", "none"),
            "data-aware": ("collaborative", "train")}[kind]
        assert config.shared_key_dim == rank and config.calibration_examples == 64
        assert (config.early_stopping_patience, config.mixed_precision, config.export) == (3, True, False)
        assert_round_trip(config)
    quick = minilm.parse(["--data", data, "--quick"])
    assert (quick.ranks, quick.seeds, quick.steps, quick.batch_size, quick.eval_examples) == ("96", 1, 4, 8, 32)
    cpu = minilm.parse(["--quick"])
    assert (cpu.ranks, cpu.seeds, cpu.batch_size) == ("384,96", 1, 16)  # the in-process setting, unchanged
    with pytest.raises(ValueError, match="Received: kinds='original,fine'"):
        minilm.parse(["--data", data, "--kinds", "original,fine"])
    elsewhere = fake_prepared(tmp_path / "other", "bert-classify", "no/such/copy")
    with pytest.raises(ValueError, match="preset 'no/such/copy' is not in this checkout"):
        minilm.parse(["--data", elsewhere])


def test_vit_grid_is_both_kinds_at_every_key_size(tmp_path):
    data = fake_prepared(tmp_path / "digits", "vit", "vit_tiny")
    args = vit.parse(["--data", data, "--seeds", "2"])
    grid = vit.run_configs(args, str(tmp_path / "runs"))
    rows = [(k, s) for k in ("concatenate", "collaborative") for s in (64, 32, 16, 8)]
    assert [(kind, size) for kind, size, _ in grid] == rows * 2
    for kind, size, config in grid:
        assert (config.attention, config.shared_key_dim, config.preset) == (kind, size, "vit_tiny")
        assert config.overrides == dict(num_layers=2, num_heads=8, hidden_dim=64, mlp_dim=128, patch_size=4,
                                        dropout_rate=0.1)
        assert (config.augment_shift, config.early_stopping_patience, config.steps) == (4, 5, 6000)
        assert_round_trip(config)
    assert vit.parse(["--data", data, "--quick"]).steps == 8
    with pytest.raises(SystemExit):
        vit.parse(["--data", data, "--key-sizes", "12"])  # not a multiple of the 8 heads


def fake_run(config, accuracy, best_step, stopped_step=None):
    """A finished run folder as `run.train` leaves it (metrics only)."""
    os.makedirs(config.output_dir)
    final = {"test_sparse_categorical_accuracy": accuracy, "parameters": 1000, "train_seconds": 9.0,
             "steps_per_second": 5.0, "early_stopping": {
                 "monitor": "val_sparse_categorical_accuracy", "patience": 3, "best": accuracy + 0.01,
                 "best_step": best_step, "stopped_step": stopped_step}}
    history = [{"step": 2, "seconds": 4.0, "val_sparse_categorical_accuracy": 0.5},
               {"step": 4, "seconds": 8.5, "val_sparse_categorical_accuracy": 0.4}]
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as f:
        json.dump({"final": final, "history": history}, f)


def test_minilm_records_and_the_gap_to_the_original(tmp_path):
    data = fake_prepared(tmp_path / "tweets", "bert-classify", str(tmp_path))
    args = minilm.parse(["--data", data, "--seeds", "2", "--ranks", "96"])
    grid = minilm.run_configs(args, str(tmp_path / "runs"))
    accuracies = {("original", 0): 0.70, ("original", 1): 0.72, ("tensor-only", 0): 0.66,
                  ("tensor-only", 1): 0.66, ("data-aware", 0): 0.69, ("data-aware", 1): 0.71}
    for kind, rank, config in grid:
        fake_run(config, accuracies[kind, config.seed], best_step=2, stopped_step=4)
    records = [_common.classifier_record(kind, rank, config) for kind, rank, config in grid]
    assert records[0] == {"kind": "original", "shared_key_dim": None, "seed": 0, "accuracy": 0.70,
                          "validation_accuracy": 0.71, "best_step": 2, "stopped_step": 4, "parameters": 1000,
                          "train_seconds": 8.5, "steps_per_second": 5.0, "run_dir": grid[0][2].output_dir}
    rows = minilm.add_gaps(_common.summarize(records, ["accuracy", "validation_accuracy", "best_step",
                                                       "train_seconds", "parameters"]))
    gaps = {r["kind"]: round(r["gap"], 6) for r in rows}
    assert gaps == {"original": 0.0, "tensor-only": -0.05, "data-aware": -0.01}
    table = _common.markdown_table(rows, minilm.GRID_METRICS, minilm.GRID_FORMATS)
    assert "| tensor-only | 96 | 2 | 0.6600 | -0.0500 |" in table
    assert "| original | – | 2 | 0.7100 ± 0.0141 | +0.0000 |" in table


def test_the_float16_copy_is_half_the_size(tmp_path):
    from safetensors.numpy import load_file

    sizes = minilm.write_float16_copy(str(tmp_path / "copy"))
    assert set(sizes) == {"model.safetensors", *minilm.CHECKPOINT_FILES}
    assert sum(sizes.values()) < 50_000_000  # 45.7 MB; the original's weights alone are 90.9 MB
    original = load_file(os.path.join(minilm.checkpoint_folder(), "model.safetensors"))
    copy = load_file(str(tmp_path / "copy" / "model.safetensors"))
    assert copy.keys() == original.keys()
    for name, value in original.items():
        expected = value.astype("float16") if value.dtype == np.float32 else value
        assert copy[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(copy[name], expected, err_msg=name)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="Received: output_dir="):
        minilm.write_float16_copy(str(tmp_path / "mine"))
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def blocking_tensorflow(tmp_path):
    """A PYTHONPATH entry whose `sitecustomize` blocks TensorFlow in every
    Python process started with it (the grid's runs too, which inherit it)
    and prints TENSORFLOW_LOADED=<bool> as each ends."""
    folder = tmp_path / "no_tensorflow"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from tests.without_tensorflow import block, tensorflow_loaded\n"
        "block()\n"
        "atexit.register(lambda: print(f'TENSORFLOW_LOADED={tensorflow_loaded()}', file=sys.stderr))\n")
    return str(folder)


@pytest.mark.slow
def test_the_float16_copy_loads_and_converts_without_tensorflow(tmp_path):
    """Where the checkpoint travels: the copy loads with TensorFlow blocked,
    on JAX, gives the original's embeddings to float16 precision, and
    converts to collaborative heads (tensor-only and data-aware)."""
    minilm.write_float16_copy(str(tmp_path / "copy"))
    token_ids = np.array([[101, 1996, 2047, 3185, 2003, 12476, 102, 0]])
    x = {"token_ids": token_ids, "segment_ids": 0 * token_ids, "padding_mask": (token_ids > 0).astype("int32")}
    np.savez(tmp_path / "x.npz", **x)
    code = f"""
import json, numpy as np
from collab_keras.models import BertBackbone
x = dict(np.load({str(tmp_path / 'x.npz')!r}))
copy = {str(tmp_path / 'copy')!r}
out = {{"original": np.asarray(BertBackbone.from_preset(copy)(x)["sequence_output"]).tolist()}}
for calibration in (None, x):
    backbone = BertBackbone.from_preset(copy, attention="collaborative", shared_key_dim=96,
                                        calibration_data=calibration)
    out[str(backbone.conversion_report.calibration_source)] = backbone.shared_key_dim
print(json.dumps(out))
"""
    environment = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": blocking_tensorflow(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "TENSORFLOW_LOADED=False" in result.stderr, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["None"], out["given"]) == (96, 96)
    from collab_keras.models import BertBackbone

    expected = np.asarray(BertBackbone.from_preset("all_minilm_l6_v2")(x)["sequence_output"])
    np.testing.assert_allclose(np.array(out["original"]), expected, atol=2e-2)


def run_quick(script, data, tmp_path, *extra):
    environment = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": blocking_tensorflow(tmp_path)}
    return subprocess.run(
        [sys.executable, os.path.join(EXPERIMENTS, script), "--quick", "--data", data, "--output-dir",
         str(tmp_path / "grid"), "--figures", str(tmp_path / "figures"), *extra],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_minilm_quick_grid_from_the_float16_copy_without_tensorflow(tmp_path):
    minilm.write_float16_copy(str(tmp_path / "copy"))
    data = str(tmp_path / "tweets")
    cli.main(["prepare", "bert-classify", "--preset", str(tmp_path / "copy"), "--sequence-length", "32",
              "--max-train-examples", "64", "--output-dir", data])
    result = run_quick("minilm_sentiment.py", data, tmp_path, "--archive", str(tmp_path / "records.tar.gz"))
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "TENSORFLOW_LOADED=False" in result.stderr, output
    assert "| original | – | 1 |" in output and "| data-aware | 96 | 1 |" in output, output
    runs = tmp_path / "grid" / "minilm_runs_quick"
    for name in ("original_seed0", "tensor-only_96_seed0", "data-aware_96_seed0"):
        log = (runs / f"{name}.log").read_text()
        assert "TENSORFLOW_LOADED=False" in log, log
        final = json.loads((runs / name / "metrics.json").read_text())["final"]
        assert final["early_stopping"]["monitor"] == "val_sparse_categorical_accuracy"
    assert "from the weights alone" in (runs / "tensor-only_96_seed0.log").read_text()
    assert "data-aware" in (runs / "data-aware_96_seed0.log").read_text()
    assert "0 runs trained, 3 read" in run_quick("minilm_sentiment.py", data, tmp_path).stdout


@pytest.mark.slow
def test_vit_quick_grid_without_tensorflow(tmp_path):
    data = str(tmp_path / "digits")
    cli.main(["prepare", "vit", "--output-dir", data])
    result = run_quick("vit_digits.py", data, tmp_path, "--parallel", "2")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "TENSORFLOW_LOADED=False" in result.stderr, output
    assert "| concatenated | 64 | 1 |" in output and "| collaborative | 8 | 1 |" in output, output
    saved = json.loads((tmp_path / "grid" / "vit_digits_converged_quick.json").read_text())
    assert len(saved["records"]) == 4
    assert {r["query_key_parameters"] for r in saved["records"] if r["shared_key_dim"] == 64} == {16640, 18432}
