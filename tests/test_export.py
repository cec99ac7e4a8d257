"""export_saved_model: TF Serving layout, signatures, and a plain-TF client.

The exports are answered in a fresh process that imports only tensorflow
(tests/plain_tf_predict.py): requests are PredictRequest protos built from
numpy as a gRPC client builds them, and the answers are compared with the
in-process task (forward pass, and `generate_step` ids for greedy and beam).
The tasks are collab_keras' (collaborative attention; Transformer-NMT also
with concatenated heads).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests import serving_tasks

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="writes a TensorFlow SavedModel",
    ),
    pytest.mark.slow,  # about 35 s of CPU: a short training, 4 exports, a process
]

NUM_BEAMS = 4
TEXTS = serving_tasks.SENTENCES + ["zzzz yy", "the the the"]


def _int32(x):
    return np.asarray(x).astype("int32")


def _generate_ids(task, inputs, sampler):
    """`task.generate_step` ids and mask with `sampler`, as generate() runs it."""
    previous, task.sampler = task.sampler, sampler
    try:
        outputs = task.generate_step(
            inputs, stop_token_ids=[task.preprocessor.tokenizer.end_token_id]
        )
    finally:
        task.sampler = previous
    return {name: _int32(value) for name, value in outputs.items()}


def _cases():
    """(task, signature -> (inputs, expected outputs)) for every task kind."""
    import keras_hub

    cases = {}
    for name, task in [
        ("seq2seq", serving_tasks.trained_nmt_seq2seq_lm()),
        ("seq2seq_concatenate", serving_tasks.nmt_seq2seq_lm("concatenate")),
    ]:
        x = task.preprocessor.generate_preprocess(TEXTS)
        encoder = {
            key: _int32(x[key])
            for key in ("encoder_token_ids", "encoder_padding_mask")
        }
        greedy = _generate_ids(task, x, keras_hub.samplers.GreedySampler())
        beam = _generate_ids(
            task, x, keras_hub.samplers.BeamSampler(num_beams=NUM_BEAMS)
        )
        forward, _, _ = keras.utils.unpack_x_y_sample_weight(
            task.preprocessor(
                {"encoder_text": TEXTS, "decoder_text": TEXTS[::-1]}
            )
        )
        forward = {key: _int32(value) for key, value in forward.items()}
        cases[name] = (
            task,
            {
                "translate": (encoder, greedy),
                "": (encoder, greedy),  # serving_default
                "translate_beam": (encoder, beam),
                "logits": (
                    forward,
                    {"logits": keras.ops.convert_to_numpy(task(forward))},
                ),
            },
        )
    for name, build in [
        ("classifier", serving_tasks.bert_text_classifier),
        ("masked_lm", serving_tasks.bert_masked_lm),
    ]:
        task = build()
        x, _, _ = keras.utils.unpack_x_y_sample_weight(task.preprocessor(TEXTS))
        x = {key: _int32(value) for key, value in x.items()}
        logits = {"logits": keras.ops.convert_to_numpy(task(x))}
        cases[name] = (task, {"": (x, logits), "logits": (x, logits)})
    task = serving_tasks.vit_image_classifier()
    images = (
        np.random.default_rng(0)
        .integers(0, 256, (3, 16, 16, 3))
        .astype("float32")
    )
    images = keras.ops.convert_to_numpy(task.preprocessor(images))
    logits = {"logits": keras.ops.convert_to_numpy(task(images))}
    cases["vit"] = (task, {"": (images, logits), "logits": (images, logits)})
    return cases


def _tensorflow_text_module(path):
    """A SavedModel that tokenizes in the graph: what stock TF Serving rejects."""
    import tensorflow as tf
    import tensorflow_text

    class Tokenize(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def split(self, text):
            tokens = tensorflow_text.WhitespaceTokenizer().tokenize(text)
            return {"tokens": tokens.flat_values}

    tf.saved_model.save(Tokenize(), path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Exports, requests answered in a plain-TF process, and its report."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from collab_keras.training.export import export_saved_model

    root = tmp_path_factory.mktemp("exports")
    cases = _cases()
    jobs, results = [], {}
    for name, (task, signatures) in cases.items():
        path = export_saved_model(task, root / name, num_beams=NUM_BEAMS)
        job = {"export": path, "load": True, "requests": []}
        for signature, (inputs, expected) in signatures.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.model_spec.signature_name = signature
            if not isinstance(inputs, dict):
                inputs = {"images": inputs}
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            stem = root / f"{name}-{signature or 'serving_default'}"
            request_file, response_file = f"{stem}.request", f"{stem}.response"
            with open(request_file, "wb") as f:
                f.write(request.SerializeToString())
            job["requests"].append([request_file, response_file])
            results[(name, signature)] = (response_file, expected)
        jobs.append(job)
    control = _tensorflow_text_module(str(root / "tensorflow_text_control"))
    jobs.append({"export": control, "load": False, "requests": []})
    jobs_file = root / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    script = os.path.join(os.path.dirname(__file__), "plain_tf_predict.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run(
        [sys.executable, script, str(jobs_file)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(root),  # not the checkout: nothing of collab_keras on the path
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    responses = {}
    for key, (response_file, expected) in results.items():
        with open(response_file, "rb") as f:
            response = predict_pb2.PredictResponse.FromString(f.read())
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        responses[key] = (outputs, expected)
    paths = {name: job["export"] for name, job in zip(cases, jobs)}
    return {
        "report": report,
        "responses": responses,
        "paths": paths,
        "control": control,
    }


@pytest.mark.parametrize("name", ["seq2seq", "seq2seq_concatenate"])
@pytest.mark.parametrize("signature", ["translate", "", "translate_beam"])
def test_translate_returns_generate_step_ids(served, name, signature):
    outputs, expected = served["responses"][(name, signature)]
    assert sorted(outputs) == ["decoder_padding_mask", "decoder_token_ids"]
    for name in expected:
        np.testing.assert_array_equal(outputs[name], expected[name])


def test_decodes_are_not_trivial(served):
    # The comparison above could not tell a decoder that ignores its input.
    greedy = served["responses"][("seq2seq", "translate")][1]
    beam = served["responses"][("seq2seq", "translate_beam")][1]
    ids = greedy["decoder_token_ids"]
    assert len({tuple(row) for row in ids}) > 1
    assert (
        greedy["decoder_padding_mask"].sum()
        < greedy["decoder_padding_mask"].size
    )
    assert not np.array_equal(ids, beam["decoder_token_ids"])


@pytest.mark.parametrize(
    "name,signature",
    [
        ("seq2seq", "logits"),
        ("seq2seq_concatenate", "logits"),
        ("classifier", ""),
        ("classifier", "logits"),
        ("masked_lm", ""),
        ("vit", ""),
        ("vit", "logits"),
    ],
)
def test_logits_match_in_process_task(served, name, signature):
    outputs, expected = served["responses"][(name, signature)]
    assert list(outputs) == ["logits"]
    np.testing.assert_allclose(
        outputs["logits"], expected["logits"], rtol=1e-5, atol=1e-5
    )


def test_graphs_use_only_ops_of_stock_tensorflow(served):
    import tensorflow_text  # noqa: F401  (registers its ops here)

    from tests.plain_tf_predict import registered_ops

    report = served["report"]
    text_ops = set(registered_ops()) - set(report["registered_ops"])
    assert "RegexSplitWithOffsets" in text_ops  # the check below can fail
    for name, path in served["paths"].items():
        ops = report["exports"][path]
        assert ops["unregistered"] == [], name
        assert not text_ops & set(ops["op_types"]), name
        # XLA ops run in stock TF Serving only with --xla_cpu_compilation_enabled.
        assert not [op for op in ops["op_types"] if op.startswith("Xla")], name
    assert "While" in report["exports"][served["paths"]["seq2seq"]]["op_types"]


def test_op_check_flags_a_tensorflow_text_graph(served):
    import tensorflow_text  # noqa: F401

    from tests.plain_tf_predict import registered_ops

    report = served["report"]
    control = report["exports"][served["control"]]
    text_ops = set(registered_ops()) - set(report["registered_ops"])
    assert control["unregistered"]
    assert set(control["unregistered"]) <= text_ops


def test_fresh_process_imported_only_tensorflow(served):
    assert served["report"]["imported"] == []


def test_layout_versions_and_saved_preprocessor(served):
    from collab_keras.training.export import export_saved_model

    path = served["paths"]["classifier"]
    base = os.path.dirname(path)
    assert os.path.basename(path) == "1"
    assert sorted(os.listdir(path)) == [
        "assets",
        "assets.extra",
        "fingerprint.pb",
        "saved_model.pb",
        "variables",
    ]
    assert sorted(os.listdir(os.path.join(path, "assets.extra"))) == [
        "export.json",
        "preprocessor",
    ]
    with open(os.path.join(path, "assets.extra", "export.json")) as f:
        info = json.load(f)
    assert info["task"] == "BertTextClassifier"
    assert sorted(info["signatures"]) == ["logits", "serving_default"]
    assert info["signatures"]["logits"]["outputs"] == {
        "logits": {"dtype": "float32", "shape": [-1, 3]}
    }
    assert info["preprocessor"] == {"sequence_length": 8}
    preset = os.path.join(path, "assets.extra", "preprocessor")
    with open(os.path.join(preset, "preprocessor.json")) as f:
        assert json.load(f)["class_name"] == "BertTextClassifierPreprocessor"
    assert os.path.isfile(
        os.path.join(preset, "assets", "tokenizer", "vocabulary.txt")
    )

    task = serving_tasks.bert_text_classifier()
    before = {
        name: os.path.getmtime(os.path.join(path, name))
        for name in os.listdir(path)
    }
    with pytest.raises(
        ValueError, match="Version 1 already exists.*Received: version=1"
    ):
        export_saved_model(task, base, version=1)
    after = {
        name: os.path.getmtime(os.path.join(path, name))
        for name in os.listdir(path)
    }
    assert before == after
    assert export_saved_model(task, base) == os.path.join(base, "2")
    assert export_saved_model(task, base, version=7) == os.path.join(base, "7")
    assert export_saved_model(task, base) == os.path.join(base, "8")
    # Nothing but versions: the staging folders were renamed.
    assert sorted(os.listdir(base)) == ["1", "2", "7", "8"]


def test_bad_arguments(tmp_path):
    from collab_keras.training.export import export_saved_model

    task = serving_tasks.bert_text_classifier()
    with pytest.raises(TypeError, match="Received: task="):
        export_saved_model(keras.Sequential([keras.layers.Dense(2)]), tmp_path)
    for version in (0, -1, "1", 1.0, True):
        with pytest.raises(ValueError, match="Received: version="):
            export_saved_model(task, tmp_path, version=version)
    with pytest.raises(ValueError, match="Received: num_beams=0"):
        export_saved_model(task, tmp_path, num_beams=0)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="Received: export_dir="):
        export_saved_model(task, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
    from collab_keras.models import TransformerNMTSeq2SeqLM

    lm = TransformerNMTSeq2SeqLM(
        serving_tasks.nmt_seq2seq_lm().backbone, preprocessor=None
    )
    with pytest.raises(ValueError, match="task.preprocessor=None"):
        export_saved_model(lm, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.parametrize(
    "shape,update_shape,start",
    [
        ((2, 6, 4), (2, 1, 4), (0, 3, 0)),  # one cache position
        ((2, 6, 4), (2, 3, 4), (0, 5, 0)),  # past the end: XLA clamps to 3
        ((3, 5), (2, 2), (-1, 1)),  # negative: clamped to 0
    ],
)
def test_serving_slice_update_equals_xla(shape, update_shape, start):
    import tensorflow as tf

    from collab_keras.training.export import _slice_update

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=shape).astype("float32")
    updates = rng.normal(size=update_shape).astype("float32")
    start = [tf.constant(s) for s in start]  # as traced: tensors
    expected = keras.ops.slice_update(inputs, start, updates)  # XLA op
    np.testing.assert_array_equal(
        _slice_update(inputs, start, updates), expected
    )
