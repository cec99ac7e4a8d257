"""benchmarks/experiments/translation_bible.py: its grid of `RunConfig`s and
the records it reads back from the runs' metrics.json (no training here)."""

import json
import os
import sys

import pytest

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "experiments")
sys.path.insert(0, os.path.abspath(EXPERIMENTS))
translation_bible = pytest.importorskip("translation_bible")


def test_the_grid_is_every_kind_size_and_seed_through_run_config(tmp_path):
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("".join(f"{t}\n" for t in ["[PAD]", "[START]", "[END]", "[UNK]", "a", "b"]))
    args = translation_bible.parse(["--steps", "400", "--seeds", "3"])
    assert (args.key_sizes, args.checkpoint_every, args.warmup_steps) == ("64,32,16,8", 200, 40)
    grid = translation_bible.run_configs(args, str(vocabulary), str(tmp_path / "runs"))
    assert len(grid) == 2 * 4 * 3
    assert len({config.output_dir for _, _, config in grid}) == 24
    for kind, size, config in grid:
        assert config.attention == kind and config.task == "nmt"
        assert config.vocabulary_file == str(vocabulary)  # one vocabulary for all
        assert (config.steps, config.batch_size, config.eval_examples) == (400, 64, 301)
        # Concatenated at d: the standard model; otherwise the total key size.
        assert config.shared_key_dim == (None if (kind, size) == ("concatenate", 64) else size)
    quick = translation_bible.parse(["--quick"])
    assert (quick.key_sizes, quick.seeds, quick.steps) == ("64,8", 1, 20)


def test_a_record_is_read_from_metrics_json(tmp_path):
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("".join(f"{t}\n" for t in ["[PAD]", "[START]", "[END]", "[UNK]", "a", "b"]))
    args = translation_bible.parse(["--key-sizes", "16", "--seeds", "1", "--kinds", "concatenate"])
    ((kind, size, config),) = translation_bible.run_configs(args, str(vocabulary), str(tmp_path / "runs"))
    os.makedirs(config.output_dir)
    example = {"source": "s", "reference": "r", "translation": "t"}
    final = {"bleu": 3.5, "chrf": 20.0, "test_loss": 3.0, "train_seconds": 10.0, "steps_per_second": 5.0,
             "bleu_signature": "b", "chrf_signature": "c", "examples": [example]}
    with open(os.path.join(config.output_dir, "metrics.json"), "w") as f:
        json.dump({"final": final, "history": [{"loss": 4.0}, {"loss": 3.25}]}, f)
    record = translation_bible.record(kind, size, config, os.path.join(config.output_dir, "metrics.json"))
    assert record["kind"] == "concatenated" and record["shared_key_dim"] == 16
    assert (record["bleu"], record["chrf"], record["final_train_loss"]) == (3.5, 20.0, 3.25)
    # Query/key: 2 layers x (encoder self) + 2 x (decoder self, cross) = 6
    # attention layers of two (64 -> 16) projections with biases.
    assert record["query_key_parameters"] == 6 * 2 * (64 * 16 + 16)
