"""benchmarks/model_step.py: its FLOP count (collab_keras.training.flops) against hand counts, and a quick
run of every row under JAX with TensorFlow blocked (the GPU machine has
none)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import model_step  # noqa: E402

from collab_keras.training import flops  # noqa: E402


def test_bert_base_step_flops_by_hand():
    """12 layers at batch 32 x 512, width 768, feed-forward 3072: the 9.3
    TFLOP a step of issue 24, as the benchmark counts it."""
    tokens = 32 * 512
    projections = 4 * 2 * tokens * 768 * 768  # Wq, Wk, Wv, Wo
    feedforward = 2 * 2 * tokens * 768 * 3072
    scores_and_values = 2 * 2 * 32 * 512 * 512 * 768
    by_hand = 3 * 12 * (projections + feedforward + scores_and_values)
    assert by_hand == 9_277_129_359_360
    assert flops.transformer_training_flops(32, 512, 768, 3072, 12, 12) == by_hand


def test_attention_flops_by_hand():
    # T 2, S 3, D 4, N 2, key width 6, value width 4.
    # Projections: 2 queries x 4 x (6 + 4) x 2 = 160, 3 keys: 240.
    # Concatenated scores 2 x 2 x 3 x 6 = 72, values 2 x 2 x 3 x 4 = 48.
    assert flops.attention_flops(2, 3, 4, 2, 6, 4, collaborative=False) == 160 + 240 + 72 + 48
    # Collaborative: every head scores with all 6 shared dimensions (144)
    # after its mixing row scales the query (2 x 2 x 6 = 24), content term
    # 2 x 3 keys x 4 x 2 heads = 48.
    assert flops.attention_flops(2, 3, 4, 2, 6, 4, collaborative=True) == 160 + 240 + 144 + 24 + 48 + 48


def test_encoder_decoder_flops_by_hand():
    # B 1, source 3, target 2, D 4, F 8, N 2, concatenated, one block each.
    encoder = (192 + 192 + 72 + 72) + 4 * 3 * 4 * 8  # self-attention, FFN
    decoder_self = 128 + 128 + 32 + 32
    cross = 128 + 192 + 48 + 48  # queries of the target, keys of the source
    decoder = decoder_self + cross + 4 * 2 * 4 * 8
    assert flops.transformer_training_flops(
        1, 3, 4, 8, 2, 1, decoder_length=2, num_decoder_layers=1
    ) == 3 * (encoder + decoder) == 5712


def test_unknown_rows_are_named():
    with pytest.raises(SystemExit):
        model_step.main(["--rows", "plain,bert_huge"])


def test_collaborative_core_pallas_is_patched_in_the_block_only():
    from collab_keras.ops import _pallas_attention

    shipped = _pallas_attention.preferred
    with model_step.collaborative_core("pallas"):
        assert _pallas_attention.preferred is not shipped
        # On the CPU the kernel is never chosen, forced or not.
        assert not _pallas_attention.preferred(512, 192, "bfloat16")
    assert _pallas_attention.preferred is shipped
    with model_step.collaborative_core("auto"):
        assert _pallas_attention.preferred is shipped


BLOCK_TENSORFLOW = """
import runpy, sys

class BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"TensorFlow is blocked: {name}")

sys.meta_path.insert(0, BlockTensorFlow())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
assert "tensorflow" not in sys.modules
"""


@pytest.mark.slow  # about 90 s on 2 CPU cores: 14 models compiled
def test_quick_run_of_every_row_under_jax_without_tensorflow(tmp_path):
    out = tmp_path / "model_step.json"
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TENSORFLOW,
         os.path.join(ROOT, "benchmarks", "model_step.py"), "--quick",
         "--repeats", "1", "--warmup", "0", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    record = json.loads(out.read_text())
    rows = {row["row"]: row for row in record["rows"]}
    assert list(rows) == list(model_step.ROWS)
    assert not [name for name, row in rows.items() if "error" in row]
    for name, row in rows.items():
        assert row["ms"] > 0 and row["flops"] > 0 and row["tokens_per_s"] > 0, name
        assert row["mfu"] is None, name  # on the CPU, tokens/s only
        assert row["attention_paths"], name  # every row traced an attention
        # clear_session() between rows puts the global policy back to
        # float32: every row must still be measured in mixed_bfloat16.
        assert row["dtype_policies"] == ["mixed_bfloat16"], name
    # The same weights and inputs: the segment embedding's form changes no
    # value. (After an update the losses differ a little: the lookup's
    # gradient is a bfloat16 scatter-add, the one-hot product's accumulates
    # in float32.)
    assert rows["bert_concatenated_lookup"]["first_loss"] == rows["bert_concatenated"]["first_loss"]
    # Collaborative rows ran the collaborative layer (the explicit path on
    # CPUs), the others keras' dot_product_attention.
    assert set(rows["bert_collaborative_256"]["attention_paths"]) == {"collaborative explicit"}
    assert set(rows["plain_mask"]["attention_paths"]) == {"xla"}
    assert rows["nmt_concatenated"]["attention_paths"] == {"xla": 6}  # 2 + 2 x 2
    assert "| bert_collaborative_384 |" in result.stdout
