"""Issue 20: a finished translation run as a preset that ships (`collab-keras
preset`), loaded by folder or name, translating, and scored again."""

import configparser
import glob
import json
import os
import re
import shutil
import sys

import keras
import numpy as np
import pytest

from collab_keras.models import TransformerNMTSeq2SeqLM
from collab_keras.models.presets import offline_preset_folder
from collab_keras.training import cli
from collab_keras.training import demo
from collab_keras.training import evaluation
from collab_keras.training import preset
from collab_keras.training import run
from collab_keras.training.serving import translate_main
from tests.test_hardening import cli_error
from tests.test_hardening import listing
from tests.test_training import ROOT
from tests.test_training import tiny_config
from tests.test_training import weights

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="presets are scored with tf.data and exported on the TensorFlow backend",
)

SHIPPED = "bible_en_de_collaborative"
SHIPPED_FOLDER = offline_preset_folder(SHIPPED)
TEXTS = ["In the beginning God created the heaven and the earth.", "And God said"]


@pytest.fixture(scope="module")
def nmt_run(tmp_path_factory):
    """A tiny finished collaborative nmt run (4 test verses, 2 beams)."""
    keras.config.set_dtype_policy("float32")
    path = tmp_path_factory.mktemp("presets") / "run"
    os.environ["COLLAB_KERAS_VERBOSE"] = "0"
    run.train(tiny_config("nmt", path, shared_key_dim=32, eval_examples=4))
    return path


@pytest.fixture(scope="module")
def presets(nmt_run):
    """The run as a float32 preset, and as a float16 one written over a copy
    of the float32 one (a previous preset, which is replaced)."""
    root = nmt_run.parent
    cli.main(["preset", "--run", str(nmt_run), "--output-dir", str(root / "float32")])
    shutil.copytree(root / "float32", root / "float16")
    cli.main(["preset", "--run", str(nmt_run), "--output-dir", str(root / "float16"),
              "--dtype", "float16"])
    return {"float32": str(root / "float32"), "float16": str(root / "float16")}


def test_preset_holds_the_task_and_its_recorded_scores(nmt_run, presets):
    final = json.loads((nmt_run / "metrics.json").read_text())["final"]
    for dtype, folder in presets.items():
        assert preset.entries(folder) == preset.PRESET_ENTRIES
        results = preset.read_results(folder)
        assert results["dtype"] == dtype and results["task"] == "TransformerNMTSeq2SeqLM"
        assert (results["attention"], results["shared_key_dim"]) == ("collaborative", 32)
        assert results["test"] == {"dataset": "bible", "source": "k", "target": "s",
                                   "split": "test", "examples": 4, "beam_width": 2}
        assert results["scores"]["bleu_signature"].startswith("nrefs:1|case:mixed")
        assert results["run"] == {
            "name": nmt_run.name, "steps": 4,
            "scores": {"bleu": final["bleu"], "chrf": final["chrf"], "examples": 4,
                       "beam_width": 2}}
    # The float32 preset is the run's model: the same decodes, the same scores.
    scores = preset.read_results(presets["float32"])["scores"]
    assert (scores["bleu"], scores["chrf"]) == (final["bleu"], final["chrf"])
    assert sorted(os.listdir(nmt_run.parent)) == ["float16", "float32", "run"]  # no .tmp-*


def test_float16_preset_halves_the_weights_and_loads_as_float32(presets, tmp_path):
    files = {d: os.path.join(f, "model.weights.h5") for d, f in presets.items()}
    single, half = weights(files["float32"]), weights(files["float16"])
    assert single.keys() == half.keys()
    for name, array in half.items():
        assert array.dtype == np.float16, name
        np.testing.assert_array_equal(array, single[name].astype("float16"), err_msg=name)
    assert sum(a.nbytes for a in half.values()) * 2 == sum(a.nbytes for a in single.values())
    # HDF5's own bookkeeping weighs on a model this small (~0.6); 0.5 on 8M parameters.
    assert os.path.getsize(files["float16"]) < 0.7 * os.path.getsize(files["float32"])
    task = TransformerNMTSeq2SeqLM.from_preset(presets["float16"])
    assert task.dtype_policy.name == task.backbone.dtype_policy.name == "float32"
    assert {v.dtype for v in task.weights} == {"float32"}
    task.backbone.save_weights(tmp_path / "loaded.weights.h5")
    loaded = weights(tmp_path / "loaded.weights.h5")
    for name, array in half.items():
        np.testing.assert_array_equal(loaded[name], array.astype("float32"), err_msg=name)


def test_preset_generates_what_the_run_model_generates(nmt_run, presets):
    trained = TransformerNMTSeq2SeqLM.from_preset(str(nmt_run / "model"))
    loaded = TransformerNMTSeq2SeqLM.from_preset(presets["float32"])
    for task in (trained, loaded):
        task.compile(sampler="greedy")
    inputs = trained.preprocessor.generate_preprocess(TEXTS)
    stop = (trained.preprocessor.tokenizer.end_token_id,)
    expected = trained.generate_step(inputs, stop_token_ids=stop)
    outputs = loaded.generate_step(inputs, stop_token_ids=stop)
    for name in ("decoder_token_ids", "decoder_padding_mask"):
        np.testing.assert_array_equal(outputs[name], expected[name])


def test_evaluate_preset_reproduces_the_recorded_scores(presets):
    results = preset.read_results(presets["float16"])
    scores = preset.evaluate_preset(presets["float16"])
    assert scores == {**results["scores"], "examples": results["test"]["examples"]}


def test_translate_preset_prints_one_translation_a_line(presets, capsys):
    folder = presets["float16"]
    # By default, the beam width of the preset's recorded scores (2).
    assert translate_main(["--preset", folder, *TEXTS]) == 0
    expected = evaluation.beam_decode(TransformerNMTSeq2SeqLM.from_preset(folder), TEXTS, 2)
    assert capsys.readouterr().out.splitlines() == expected
    assert translate_main(["--preset", folder, "--beam-width", "0", "a"]) == 2
    assert "Received: beam_width=0" in capsys.readouterr().err
    for argv, message in ((["--preset", folder, "--beam", "a"], "--beam-width"),
                          (["--model", folder, "--beam-width", "2", "a"], "--preset")):
        with pytest.raises(SystemExit):
            translate_main(argv)
        assert message in capsys.readouterr().err


def test_preset_writes_only_new_empty_or_preset_folders(nmt_run, presets, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    edited = tmp_path / "edited"
    shutil.copytree(presets["float32"], edited)
    (edited / "assets" / "README.md").write_text("mine")
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(nmt_run, unfinished)
    os.remove(unfinished / "metrics.json")
    before = listing(tmp_path), listing(nmt_run)
    for output, message in ((mine, "holds no translator preset"),
                            (edited, r"does not \(assets/README.md\)"),
                            (nmt_run, "holds no translator preset"),
                            (a_file, "is a file"),
                            ("", "is the current folder")):
        err = cli_error(["preset", "--run", str(nmt_run), "--output-dir", str(output)], capsys)
        assert re.search(message, err), err
        assert f"Received: output_dir={str(output)!r}" in err
    for run_dir, message in ((unfinished, "no metrics.json"),
                             (tmp_path / "missing", "not a folder"),
                             (tmp_path / "mine", "config.json is missing")):
        err = cli_error(["preset", "--run", str(run_dir), "--output-dir",
                         str(tmp_path / "new")], capsys)
        assert message in err and f"Received: run={str(run_dir)!r}" in err, err
    assert "invalid choice: 'bfloat16'" in cli_error(
        ["preset", "--run", str(nmt_run), "--output-dir", str(tmp_path / "new"),
         "--dtype", "bfloat16"], capsys)
    assert (listing(tmp_path), listing(nmt_run)) == before


def test_preset_compresses_to_a_smaller_shared_key(presets, tmp_path, capsys):
    source = presets["float32"]
    before = listing(source)
    out = tmp_path / "smaller"
    cli.main(["preset", "--from-preset", source, "--shared-key-dim", "16",
              "--calibration-examples", "40", "--output-dir", str(out), "--dtype", "float16"])
    assert "test BLEU" in capsys.readouterr().out
    assert listing(source) == before  # the source is only read
    assert preset.entries(out) == preset.PRESET_ENTRIES
    results, original = preset.read_results(out), preset.read_results(source)
    assert (results["attention"], results["shared_key_dim"], results["dtype"]) == (
        "collaborative", 16, "float16")
    assert results["test"] == original["test"] and results["run"] == original["run"]
    conversion = results["conversion"]
    assert (conversion["preset"], conversion["shared_key_dim"]) == ("float32", 32)
    assert conversion["scores"] == original["scores"]
    assert conversion["calibration_examples"] == 40
    assert conversion["summary"].startswith("Converted 6 attention layers to shared_key_dim=16")
    assert len(conversion["layers"]) == 6
    assert all(0 < layer["relative_error"] < 1 for layer in conversion["layers"])
    assert results["parameters"] < original["parameters"]
    task = TransformerNMTSeq2SeqLM.from_preset(str(out))
    assert task.backbone.shared_key_dim == 16
    # The recorded scores are those of the saved weights, decoded again.
    assert preset.evaluate_preset(str(out)) == {**results["scores"], "examples": 4}
    assert sorted(os.listdir(tmp_path)) == ["smaller"]  # no .tmp-*


def test_preset_compression_refuses_before_writing(nmt_run, presets, tmp_path, capsys):
    concatenated = tmp_path / "concatenated"
    shutil.copytree(presets["float32"], concatenated)
    results = json.loads((concatenated / "results.json").read_text())
    (concatenated / "results.json").write_text(json.dumps({**results, "attention": "concatenate"}))
    source = presets["float32"]
    before = listing(tmp_path), listing(source)
    new = str(tmp_path / "new")
    for argv, message in (
        (["--from-preset", source, "--output-dir", new], "needs --shared-key-dim"),
        (["--run", str(nmt_run), "--shared-key-dim", "16", "--output-dir", new],
         "applies to --from-preset"),
        (["--from-preset", source, "--shared-key-dim", "16", "--output-dir", source],
         f"must not be the preset being compressed.*Received: output_dir={source!r}"),
        (["--from-preset", str(concatenated), "--shared-key-dim", "16", "--output-dir", new],
         "must have collaborative heads.*attention='concatenate'"),
        (["--from-preset", source, "--shared-key-dim", "0", "--output-dir", new],
         "Received: shared_key_dim=0"),
        (["--from-preset", source, "--shared-key-dim", "16", "--calibration-examples", "-1",
          "--output-dir", new], "Received: calibration_examples=-1"),
        (["--from-preset", str(tmp_path / "missing"), "--shared-key-dim", "16",
          "--output-dir", new], "missing"),
    ):
        err = cli_error(["preset", *argv], capsys)
        assert re.search(message, err), err
    with pytest.raises(SystemExit):  # argparse: one source only
        cli.main(["preset", "--run", str(nmt_run), "--from-preset", source, "--output-dir", new])
    assert (listing(tmp_path), listing(source)) == before


def test_compression_experiment_records_and_rereads_its_rows(presets, tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks", "experiments"))
    import translator_compression

    argv = ["--quick", "--source", presets["float32"], "--key-sizes", "16",
            "--calibration-examples", "0,40", "--output-dir", str(tmp_path)]
    rows = translator_compression.main(argv)
    assert [(r["shared_key_dim"], r["calibration"]) for r in rows] == [
        (32, None), (16, 0), (16, 40)]
    records = sorted(os.listdir(tmp_path))
    assert records == ["key16_calibration0.json", "key16_calibration40.json"]
    record = json.loads((tmp_path / records[1]).read_text())
    assert (record["results"]["test"]["examples"], record["results"]["test"]["beam_width"]) == (8, 2)
    assert record["environment"]["backend"] == "tensorflow"
    assert "| 16 | 40 |" in capsys.readouterr().out
    stamps = [os.stat(tmp_path / name).st_mtime_ns for name in records]
    assert translator_compression.main(argv) == rows  # read again, not computed
    assert [os.stat(tmp_path / name).st_mtime_ns for name in records] == stamps


def test_package_data_ships_every_file_of_a_preset(presets, tmp_path):
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    patterns = setup["options.package_data"]["collab_keras"].split()
    package = tmp_path / "collab_keras"
    shutil.copytree(presets["float16"], package / "presets" / SHIPPED)
    shipped = {os.path.relpath(path, package / "presets" / SHIPPED).replace(os.sep, "/")
               for pattern in patterns for path in glob.glob(str(package / pattern))}
    assert shipped == {e for e in preset.PRESET_ENTRIES if not e.endswith("/")}


@pytest.mark.slow  # an export and a fresh process, as tests/test_demo.py
def test_demo_shows_the_preset_in_process_and_through_its_export(presets, tmp_path, capsys):
    outcome = demo.main(["--preset", presets["float16"], "--no-training",
                         "--output-dir", str(tmp_path)])
    in_process, served = outcome["translator"]
    assert len(in_process) == len(demo.SENTENCES) and served == in_process
    assert outcome["results"] == {} and outcome["translated"] == []
    out = capsys.readouterr().out
    assert "test BLEU" in out and "Training" not in out
    assert os.listdir(tmp_path / "translator" / "export") == ["1"]


@pytest.mark.skipif(SHIPPED_FOLDER is not None, reason="this version ships the preset")
def test_the_unshipped_preset_says_its_weights_are_not_shipped(capsys):
    assert SHIPPED in TransformerNMTSeq2SeqLM.presets
    message = f"not shipped in this version.*Received: preset='{SHIPPED}'"
    with pytest.raises(ValueError, match=message):
        TransformerNMTSeq2SeqLM.from_preset(SHIPPED)
    assert translate_main(["--preset", SHIPPED, "a"]) == 2
    assert "not shipped in this version" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--no-training"])
    assert "does not ship" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(SHIPPED_FOLDER is None, reason="this version does not ship the preset")
def test_the_shipped_preset_reproduces_its_recorded_test_bleu():
    results = preset.read_results(SHIPPED_FOLDER)
    assert os.path.getsize(os.path.join(SHIPPED_FOLDER, "model.weights.h5")) <= 25 * 2**20
    scores = preset.evaluate_preset(SHIPPED)
    assert scores["examples"] == results["test"]["examples"]
    assert scores["bleu_signature"] == results["scores"]["bleu_signature"]
    assert abs(scores["bleu"] - results["scores"]["bleu"]) <= 0.1
