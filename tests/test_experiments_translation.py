"""benchmarks/experiments/translation_bible.py: its grid of `RunConfig`s, the
command lines of its `--data` runs, the records, times to the baseline's loss
and paired bootstrap tests it reads back from run folders, and its `--quick`
setting end to end on both paths (in-process on TensorFlow; `--data` runs as
JAX subprocesses)."""

import json
import math
import os
import subprocess
import sys
import tarfile
import time

import pytest

from collab_keras.training import cli
from tests.test_training import ROOT
from tests.test_training_prepared import nmt_data  # noqa: F401 (a fixture)

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "experiments")
sys.path.insert(0, os.path.abspath(EXPERIMENTS))
translation_bible = pytest.importorskip("translation_bible")
import _common  # noqa: E402 (benchmarks/experiments/, on the path above)
SCRIPT = os.path.join(EXPERIMENTS, "translation_bible.py")
TOKENS = ["[PAD]", "[START]", "[END]", "[UNK]", "a", "b"]


@pytest.fixture
def vocabulary(tmp_path):
    path = tmp_path / "vocabulary.txt"
    path.write_text("".join(f"{t}\n" for t in TOKENS))
    return str(path)


def test_the_grid_is_the_baseline_then_every_kind_and_size_per_seed(tmp_path, vocabulary):
    args = translation_bible.parse(["--steps", "400", "--seeds", "3", "--label-smoothing", "0.1"])
    assert (args.key_sizes, args.checkpoint_every, args.warmup_steps) == ("32,16,8,4", 200, 40)
    grid = translation_bible.run_configs(args, vocabulary, str(tmp_path / "runs"))
    rows = [("concatenate", 64)] + [(k, s) for s in (32, 16, 8, 4) for k in ("concatenate", "collaborative")]
    assert [(kind, size) for kind, size, _ in grid] == rows * 3
    assert len({config.output_dir for _, _, config in grid}) == 27
    for kind, size, config in grid:
        assert config.attention == kind and config.task == "nmt" and config.data is None
        assert config.vocabulary_file == vocabulary  # one vocabulary for all
        assert (config.steps, config.batch_size, config.eval_examples, config.beam_width) == (400, 64, 301, 4)
        assert config.label_smoothing == 0.1
        # Concatenated at d: the standard model; otherwise the total key size.
        assert config.shared_key_dim == (None if (kind, size) == ("concatenate", 64) else size)
    quick = translation_bible.parse(["--quick"])
    assert (quick.key_sizes, quick.seeds, quick.steps) == ("8", 1, 20)


def test_data_runs_take_the_manifest_options_and_are_collab_keras_train(nmt_data, tmp_path):  # noqa: F811
    args = translation_bible.parse(["--data", str(nmt_data), "--seeds", "2", "--parallel", "3",
                                    "--mixed-precision", "--steps", "40"])
    assert (args.architecture, args.sequence_length, args.vocabulary_size) == ("transformer_tiny", 16, 1000)
    grid = translation_bible.run_configs(args, None, str(tmp_path / "runs"))
    assert len(grid) == 2 * 9
    parser = argparse_parser()
    for _, _, config in grid:
        assert config.data == str(nmt_data) and config.max_train_examples == 128
        argv = _common.command(config)
        assert argv[:5] == [sys.executable, "-m", "collab_keras.training", "train", "nmt"]
        # The subprocess's own parser makes the very same run.
        parsed = parser.parse_args(argv[3:])
        assert cli.config_from_args(parsed, parser._subparsers._group_actions[0].choices["train"]) == config
    with pytest.raises(ValueError, match="Received: sequence_length=32, data="):
        translation_bible.parse(["--data", str(nmt_data), "--sequence-length", "32"])
    with pytest.raises(ValueError, match="Received: parallel=0"):
        translation_bible.parse(["--parallel", "0"])
    with pytest.raises(ValueError, match=r"Received: data='/no/such/folder'"):
        translation_bible.parse(["--data", "/no/such/folder"])
    existing = tmp_path / "records.tar.gz"
    existing.write_text("a user's file")
    with pytest.raises(ValueError, match="Received: archive="):
        translation_bible.parse(["--archive", str(existing)])
    assert existing.read_text() == "a user's file"


def test_memory_share_divides_the_card_among_the_runs(nmt_data, tmp_path, monkeypatch):  # noqa: F811
    for share in ("0", "1.5"):
        with pytest.raises(ValueError, match=f"Received: memory_share={float(share)}"):
            translation_bible.parse(["--memory-share", share])
    args = translation_bible.parse(["--data", str(nmt_data), "--parallel", "4", "--memory-share", "0.2",
                                    "--steps", "40"])
    configs = [config for _, _, config in translation_bible.run_configs(args, None, str(tmp_path / "runs"))]
    started = []

    class Finished:  # a run that has ended, in place of a subprocess
        returncode = 0

        def __init__(self, argv, env, **kwargs):
            started.append(env)

        def poll(self):
            return 0

    monkeypatch.setattr(_common.subprocess, "Popen", Finished)
    _common.train_in_processes(configs[:2], args, time.time(), lambda config, code: None)
    assert [env["XLA_PYTHON_CLIENT_MEM_FRACTION"] for env in started] == ["0.050", "0.050"]


def argparse_parser():
    import argparse

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    cli._train_parser(subparsers)
    return parser


def fake_run(config, bleu, history, translations):
    """A finished run folder as `run.train` leaves it (no model)."""
    os.makedirs(config.output_dir)
    with open(os.path.join(config.output_dir, "vocabulary.txt"), "w") as f:
        f.write("".join(f"{t}\n" for t in TOKENS))
    example = {"source": "s", "reference": "r", "translation": "t"}
    final = {"bleu": bleu, "chrf": 20.0, "test_loss": 3.0, "train_seconds": 10.0, "steps_per_second": 5.0,
             "bleu_signature": "b", "chrf_signature": "c", "examples": [example]}
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as f:
        json.dump({"final": final, "history": history}, f)
    with open(os.path.join(config.output_dir, "test_translations.jsonl"), "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in translations)


def test_records_time_to_baseline_and_paired_bootstrap(tmp_path, vocabulary):
    args = translation_bible.parse(["--key-sizes", "16", "--seeds", "1"])
    (baseline_kind, d, baseline), concatenated, (kind, size, config) = translation_bible.run_configs(
        args, vocabulary, str(tmp_path / "runs"))
    references = [f"der Herr sprach zu Mose Wort {i} und er ging" for i in range(40)]
    pairs = [{"source": "s", "reference": r} for r in references]
    fake_run(baseline, 3.5, [{"step": 2, "seconds": 4.0, "loss": 4.0, "val_loss": 3.6},
                             {"step": 4, "seconds": 8.0, "loss": 3.25, "val_loss": 3.4}],
             [{**p, "translation": "der Herr"} for p in pairs])
    fake_run(config, 30.0, [{"step": 2, "seconds": 5.0, "loss": 3.0, "val_loss": 3.3},
                            {"step": 4, "seconds": 9.0, "loss": 2.5, "val_loss": 3.1}],
             [{**p, "translation": p["reference"]} for p in pairs])
    fake_run(concatenated[2], 4.0, [{"step": 4, "seconds": 8.0, "loss": 3.0, "val_loss": 3.5}],
             [{**p, "translation": "der Herr sprach"} for p in pairs])
    records = [translation_bible.record(baseline_kind, d, baseline), translation_bible.record(kind, size, config),
               translation_bible.record(*concatenated)]
    assert records[0]["kind"] == "concatenated" and records[0]["shared_key_dim"] == 64
    assert records[1]["kind"] == "collaborative" and records[1]["shared_key_dim"] == 16
    assert (records[0]["bleu"], records[0]["final_train_loss"], records[0]["train_seconds"]) == (3.5, 3.25, 8.0)
    # Query/key: 2 layers x (encoder self) + 2 x (decoder self, cross) = 6
    # attention layers of two (64 -> 64) projections with biases.
    assert records[0]["query_key_parameters"] == 6 * 2 * (64 * 64 + 64)
    assert records[1]["query_key_parameters"] < records[0]["query_key_parameters"] / 3
    assert translation_bible.add_time_to_baseline(records, 64) == 3.4
    assert (records[0]["steps_to_baseline"], records[0]["seconds_to_baseline"]) == (4, 8.0)
    assert (records[1]["steps_to_baseline"], records[1]["seconds_to_baseline"]) == (2, 5.0)
    records[1]["history"][1]["val_loss"] = records[1]["history"][0]["val_loss"] = 3.5
    translation_bible.add_time_to_baseline(records, 64)
    assert math.isnan(records[1]["steps_to_baseline"]) and math.isnan(records[1]["seconds_to_baseline"])
    # The summary: the times over the seeds that reached the baseline, and
    # how many did; a second seed that reached it at step 2 (5 s).
    second = {**records[1], "seed": 1, "steps_to_baseline": 2, "seconds_to_baseline": 5.0}
    rows = translation_bible.summarize_time_to_baseline(
        [{"kind": "collaborative", "shared_key_dim": 16}], [records[1], second])
    assert (rows[0]["reached_baseline"], rows[0]["steps_to_baseline"], rows[0]["seconds_to_baseline"]) == (1, 2, 5.0)
    assert rows[0]["steps_to_baseline_std"] == 0.0
    rows = translation_bible.summarize_time_to_baseline(
        [{"kind": "collaborative", "shared_key_dim": 16}], [records[1]])
    assert rows[0]["reached_baseline"] == 0 and math.isnan(rows[0]["steps_to_baseline"])

    (result,), signatures = translation_bible.paired_bootstrap(records)
    assert (result["shared_key_dim"], result["seed"]) == (16, 0)
    assert result["bleu_collaborative"] == pytest.approx(100) and result["bleu_concatenated"] < 10
    assert result["p_bleu"] < 0.01 and result["p_chrf"] < 0.01  # a clear difference
    assert "bs:1000" in signatures["BLEU"] and "nrefs:1" in signatures["BLEU"]
    assert "| 16 | 0 |" in translation_bible.bootstrap_table([result])


def test_archive_leaves_out_checkpoints_and_models(tmp_path):
    run_dir = tmp_path / "grid" / "runs" / "concatenate_64_seed0"
    for name in ("metrics.json", "checkpoints/step-00000004/model.weights.h5", "model/model.weights.h5",
                 "logs/events", "learning_curves.png"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(name)
    (tmp_path / "grid" / "translation_bible.json").write_text("{}")
    _common.write_archive(str(tmp_path / "grid"), str(tmp_path / "records.tar.gz"))
    with tarfile.open(tmp_path / "records.tar.gz") as archive:
        files = {m.name for m in archive.getmembers() if m.isfile()}
    assert files == {"grid/translation_bible.json", "grid/runs/concatenate_64_seed0/metrics.json",
                     "grid/runs/concatenate_64_seed0/logs/events"}


def check_quick_output(output, output_dir, runs):
    assert output.rstrip().splitlines()[-1].startswith("nrefs:1|case:mixed"), output[-2000:]
    assert "| concatenated | 64 | 1 |" in output and "| collaborative | 8 | 1 |" in output
    assert "### Paired bootstrap" in output
    saved = json.loads((output_dir / "translation_bible_quick.json").read_text())
    assert len(saved["records"]) == 3 and len(saved["paired_bootstrap"]) == 1
    for name in ("concatenate_64_seed0", "concatenate_8_seed0", "collaborative_8_seed0"):
        assert (runs / name / "test_translations.jsonl").exists(), name


@pytest.mark.slow
def test_quick_in_process(tmp_path, capsys):
    translation_bible.main(["--quick", "--test-examples", "8", "--steps", "4", "--output-dir",
                            str(tmp_path / "grid"), "--figures", str(tmp_path / "figures")])
    output = capsys.readouterr().out
    check_quick_output(output, tmp_path / "grid", tmp_path / "grid" / "runs_quick")
    assert os.path.isfile(tmp_path / "figures" / "results_translation_bleu_quick.png")


@pytest.mark.slow
def test_quick_from_prepared_data_in_jax_subprocesses(nmt_data, tmp_path):  # noqa: F811
    def script(*extra):
        environment = {**os.environ, "KERAS_BACKEND": "jax"}
        return subprocess.run(
            [sys.executable, SCRIPT, "--quick", "--data", str(nmt_data), "--parallel", "2",
             "--test-examples", "8", "--label-smoothing", "0.1", "--output-dir", str(tmp_path / "grid"),
             "--figures", str(tmp_path / "figures"), *extra],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)

    # The deadline passed before the first run: nothing starts.
    result = script("--deadline", "0")
    assert result.returncode == 0 and "3 runs not started" in result.stdout, result.stdout + result.stderr
    result = script("--archive", str(tmp_path / "records.tar.gz"))
    assert result.returncode == 0, result.stdout + result.stderr
    runs = tmp_path / "grid" / "runs_quick"
    check_quick_output(result.stdout, tmp_path / "grid", runs)
    config = json.loads((runs / "collaborative_8_seed0" / "config.json").read_text())
    assert (config["data"], config["label_smoothing"], config["shared_key_dim"]) == (str(nmt_data), 0.1, 8)
    assert "done collaborative_8_seed0" in result.stdout
    with tarfile.open(tmp_path / "records.tar.gz") as archive:
        names = archive.getnames()
    assert "grid/runs_quick/collaborative_8_seed0/test_translations.jsonl" in names
    assert "grid/translation_bible_quick.json" in names
    assert not [n for n in names if "/checkpoints" in n or "/model/" in n]
    # Again: every run is read, none trained.
    result = script()
    assert "0 runs trained, 3 read" in result.stdout, result.stdout + result.stderr
