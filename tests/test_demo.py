"""The README's demo command, shrunk: both models train, the table prints, the
export translates in a fresh process."""

import os

import pytest

from collab_keras.training import demo


@pytest.mark.slow
def test_demo_trains_both_attentions_and_translates_through_the_export(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLLAB_KERAS_VERBOSE", "0")
    outcome = demo.main([
        "--output-dir", str(tmp_path), "--steps", "3", "--batch-size", "8",
        "--sequence-length", "16", "--vocabulary-size", "300",
        "--vocabulary-examples", "200", "--eval-examples", "4",
    ])
    results, translated = outcome["results"], outcome["translated"]
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.startswith(("concatenate ", "collaborative "))]
    assert [row[0] for row in rows] == ["concatenate", "collaborative"]
    params = {row[0]: int(row[1].replace(",", "")) for row in rows}
    assert params["collaborative"] < params["concatenate"]  # D̃_k = 32 < 64
    assert params == {a: m["parameters"] for a, m in results.items()}
    assert "nrefs:1|case:mixed" in out  # the sacrebleu signature
    assert len(translated) == len(demo.SENTENCES)
    assert os.path.isdir(results["collaborative"]["export"])
    assert "export" not in results["concatenate"]
    for attention in ("concatenate", "collaborative"):
        assert os.path.exists(tmp_path / attention / "learning_curves.png")
