"""benchmarks/experiments/translation_recipe.py: its variants, batches, the
detokenization without TensorFlow, the model it builds, and (slow) the whole
`--quick` run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

EXPERIMENTS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "experiments")
sys.path.insert(0, os.path.abspath(EXPERIMENTS))
recipe = pytest.importorskip("translation_recipe")


def test_variants_change_one_thing_each():
    concat, collab = recipe.settings("concat-128"), recipe.settings("collab-128")
    assert (concat["attention"], concat["keys"], concat["key_dim"]) == ("concatenate", 128, 32)
    # The setting: key_dim 64, so the scale is 1/8 at every width.
    assert (collab["attention"], collab["keys"], collab["key_dim"]) == ("collaborative", 128, 64)
    scale = recipe.settings("collab-128-scale")
    assert scale["key_dim"] == 32 and not scale["frozen_mixing"]
    assert recipe.settings("collab-128-frozen")["frozen_mixing"]
    assert not recipe.settings("collab-128-nodecay")["decay_mixing"]
    paper = recipe.settings("paper-concat-128")
    assert (paper["weight_decay"], paper["label_smoothing"], paper["dropout"]) == (0.0, 0.1, 0.3)
    with pytest.raises(ValueError, match="variant='collab-7'"):
        recipe.settings("collab-7")


def test_batches_are_bucketed_shifted_and_masked():
    source = [[5, 6, 7], [8] * 40, [9]]
    target = [[10, 11], [12] * 33, [13, 14, 15]]
    out = list(recipe.batches(source, target, batch_size=2))
    assert sum(len(x["source"]) for x, _, _ in out) == 3
    for x, labels, weights in out:
        length = x["source"].shape[1]
        assert length in recipe.BUCKETS and x["target"].shape == labels.shape == weights.shape == (len(labels), length)
        assert np.all(x["target"][:, 0] == recipe.START)
        for row in range(len(labels)):
            n = int(weights[row].sum())  # target + [END]
            assert labels[row, n - 1] == recipe.END and np.all(labels[row, n:] == recipe.PAD)
            # The decoder input is the labels shifted right by one.
            np.testing.assert_array_equal(x["target"][row, 1:n], labels[row, : n - 1])
    # The 40-token verse needs the 48 bucket; short ones share a 32 batch.
    assert sorted(x["source"].shape[1] for x, _, _ in out) == [32, 48]


def test_detokenization_needs_no_tensorflow_and_matches_its_path():
    # The runs detokenize on keras-hub's Python path (the GPU machine has no
    # TensorFlow); `prepare` checks it against the TensorFlow path.
    from collab_keras.models import TransformerNMTTokenizer

    vocabulary = ["[PAD]", "[START]", "[END]", "[UNK]", "Es", "werde", "Li", "##cht", "!", "»", "«", "##"]
    tokenizer = TransformerNMTTokenizer(vocabulary=vocabulary)
    ids = [[9, 4, 5, 6, 7, 8, 10], [7, 4, 11, 6]]  # a leading and a bare suffix token
    python = tokenizer.detokenize(ids)
    assert python[0] == "»Es werde Licht!«"
    assert python == recipe.detokenize_with_tensorflow(tokenizer, ids)


def test_frozen_mixing_is_not_trained_and_the_scale_follows_key_dim():
    import keras

    policy = keras.config.dtype_policy().name
    model = recipe.build_model(recipe.settings("collab-128-frozen"), vocabulary_size=50, seed=0)
    # The model is mixed_bfloat16; the process's policy is left as it was.
    assert model.dtype_policy.name == "mixed_bfloat16" and keras.config.dtype_policy().name == policy
    assert os.environ.get("KERAS_BACKEND") != "jax" or keras.backend.backend() == "jax"
    layers = [layer for layer in model.layers if hasattr(layer, "mixing")]
    assert len(layers) == 3 * recipe.MODEL["layers"]  # encoder self, decoder self and cross
    assert all(not layer.mixing.trainable and layer._scale == pytest.approx(32**-0.5) for layer in layers)
    assert all(layer.shared_key_dim == 128 for layer in layers)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    # In a process of its own: the runs train on JAX, the suite runs on TensorFlow.
    env = dict(os.environ, KERAS_BACKEND="jax")
    subprocess.run([sys.executable, recipe.__file__, "--quick", "--output", str(tmp_path)], env=env, check=True,
                   capture_output=True, timeout=1200)
    records = sorted((tmp_path / "records").glob("*_seed0.json"))
    assert [p.name for p in records] == ["collab-128-scale_seed0.json", "concat-128_seed0.json"]
    record = json.loads(records[0].read_text())
    assert record["steps"] == 2 and np.isfinite(record["final_validation_ce"]) and "nrefs:1" in record["bleu_signature"]


def test_at_step_0_only_the_score_scale_differs(capsys):
    recipe.initial_logits(("concat-128", "collab-128", "collab-128-scale"))
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    kernel_std = {r[0].strip(): float(r[2]) for r in rows}
    logit_std = {r[0].strip(): float(r[3]) for r in rows}
    # The same initial query kernels (glorot on (F, N, H) and on (F, K))...
    assert abs(kernel_std["collab-128"] / kernel_std["concat-128"] - 1) < 0.05
    # ... so the logits differ by the scale alone: 1/sqrt(64) against 1/sqrt(32).
    assert abs(logit_std["collab-128-scale"] / logit_std["concat-128"] - 1) < 0.1
    assert abs(logit_std["collab-128"] / logit_std["concat-128"] - 2**-0.5) < 0.1


def test_normal_mixing_is_dense_with_the_logit_spread_of_concatenated(capsys):
    normal = recipe.settings("collab-128-normal")
    assert (normal["mixing"], normal["key_dim"], normal["frozen_mixing"]) == ("normal", 32, False)
    model = recipe.build_model(normal, vocabulary_size=50, seed=0)
    mixing = np.concatenate([np.asarray(layer.mixing) for layer in model.layers if hasattr(layer, "mixing")])
    assert mixing.shape == (3 * recipe.MODEL["layers"] * recipe.MODEL["heads"], 128)
    # Every head sees every shared dimension: no block one-hot zeros.
    assert np.all(mixing != 0) and abs(mixing.std() - 0.5) < 0.02 and abs(mixing.mean()) < 0.02
    recipe.initial_logits(("concat-128", "collab-128-normal"))
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    logit_std = {r[0].strip(): float(r[3]) for r in rows}
    assert abs(logit_std["collab-128-normal"] / logit_std["concat-128"] - 1) < 0.1


def test_nobias_pair_has_the_same_parameters_reshaped():
    counts = {}
    for variant in ("concat-128-nobias", "collab-128-frozen-nobias"):
        model = recipe.build_model(recipe.settings(variant), vocabulary_size=50, seed=0)
        attention = [layer for layer in model.layers if "attention" in layer.name and layer.weights]
        assert attention and all(not layer.use_bias for layer in attention)
        counts[variant] = sum(int(np.prod(w.shape)) for layer in attention for w in layer.trainable_weights)
        if variant.startswith("collab"):
            assert all(layer.content_bias is None and not layer.mixing.trainable for layer in attention)
    # Query and key kernels (256, 4, 32) against (256, 128): the same count.
    assert counts["concat-128-nobias"] == counts["collab-128-frozen-nobias"]


def test_memory_share_outside_the_card_is_refused(capsys):
    with pytest.raises(SystemExit):
        recipe.main(["run", "--memory-share", "1.5"])
    assert "Received: --memory-share=1.5" in capsys.readouterr().err
