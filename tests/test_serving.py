"""translate / translate_main: text in, text out, from a local export and
through TF Serving's REST API (a stand-in server on 127.0.0.1 that answers
`POST /v1/models/<name>:predict` from the SavedModel, as TF Serving does)."""

import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import keras
import numpy as np
import pytest

from tests import serving_tasks

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="writes a TensorFlow SavedModel",
    ),
    pytest.mark.slow,  # a short training and an export (shared with test_export)
]

TEXTS = serving_tasks.SENTENCES + ["zzzz yy"]
MODEL_NAME = "nmt"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from collab_keras.training.export import export_saved_model

    task = serving_tasks.trained_nmt_seq2seq_lm()
    base = tmp_path_factory.mktemp("models") / MODEL_NAME
    export_saved_model(task, base, num_beams=4)
    return task, str(base)


@pytest.fixture(scope="module")
def expected(export):
    """What the in-process task generates, greedy and beam."""
    import keras_hub

    task, _ = export
    outputs = {}
    for beam, sampler in [
        (False, keras_hub.samplers.GreedySampler()),
        (True, keras_hub.samplers.BeamSampler(num_beams=4)),
    ]:
        task.compile(sampler=sampler)
        outputs[beam] = task.generate(TEXTS)
    assert (
        outputs[False] != outputs[True]
    )  # the comparisons can tell them apart
    return outputs


class _Predict(BaseHTTPRequestHandler):
    """TF Serving's REST predict, row format, for one model."""

    PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/\d+)?:predict")

    def do_POST(self):
        import tensorflow as tf

        match = self.PATH.fullmatch(self.path)
        if not match or match.group(1) != self.server.model_name:
            return self._reply(
                404, {"error": f"Servable not found for request: {self.path}"}
            )
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        signature = body.get("signature_name", "serving_default")
        if signature not in self.server.loaded.signatures:
            return self._reply(
                400,
                {"error": f"Serving signature name: {signature!r} not found"},
            )
        function = self.server.loaded.signatures[signature]
        instances = body["instances"]
        specs = function.structured_input_signature[1]
        feeds = {
            name: tf.constant(
                [instance[name] for instance in instances], spec.dtype
            )
            for name, spec in specs.items()
        }
        outputs = {
            name: value.numpy().tolist()
            for name, value in function(**feeds).items()
        }
        predictions = [
            {name: value[i] for name, value in outputs.items()}
            for i in range(len(instances))
        ]
        self._reply(200, {"predictions": predictions})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(export):
    import tensorflow as tf

    from collab_keras.training.serving import resolve_version_dir

    _, base = export
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Predict)  # loopback only
    httpd.timeout = 30
    httpd.model_name = MODEL_NAME
    httpd.loaded = tf.saved_model.load(resolve_version_dir(base))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize("beam", [False, True])
def test_local_export_translates_as_generate(export, expected, beam):
    from collab_keras.training.serving import translate

    _, base = export
    assert translate(TEXTS, model=base, beam=beam) == expected[beam]
    assert (
        translate(TEXTS[0], model=base + "/1", beam=beam) == expected[beam][0]
    )


@pytest.mark.parametrize("beam", [False, True])
def test_rest_server_translates_as_generate(export, expected, server, beam):
    from collab_keras.training.serving import translate

    _, base = export
    translations = translate(
        TEXTS, server=server, vocabulary=base, model_name=MODEL_NAME, beam=beam
    )
    assert translations == expected[beam]


def test_translate_main(export, expected, server, capsys, monkeypatch):
    from collab_keras.training.serving import translate_main

    _, base = export
    assert translate_main(["--model", base, *TEXTS]) == 0
    assert capsys.readouterr().out.splitlines() == expected[False]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n"))
    argv = [
        "--server",
        server,
        "--vocabulary",
        base,
        "--model-name",
        MODEL_NAME,
        "--beam",
    ]
    assert translate_main(argv) == 0
    assert capsys.readouterr().out.splitlines() == expected[True]


def test_errors(export, server, tmp_path, capsys):
    from collab_keras.training.serving import translate
    from collab_keras.training.serving import translate_main

    _, base = export
    with pytest.raises(ValueError, match="Received: model=.*server="):
        translate("a", model=base, server=server)
    with pytest.raises(ValueError, match="Received: vocabulary=None"):
        translate("a", server=server)
    with pytest.raises(ValueError, match="Received: server='nohost'"):
        translate("a", server="nohost", vocabulary=base)
    with pytest.raises(ValueError, match="Received: texts="):
        translate([], model=base)
    with pytest.raises(ValueError, match="Received: model="):
        translate("a", model=str(tmp_path))
    with pytest.raises(RuntimeError, match="404.*Servable not found"):
        translate("a", server=server, vocabulary=base, model_name="other")
    assert translate_main(["--model", str(tmp_path), "a"]) == 2
    assert "Received: model=" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        translate_main(["--server", server, "a"])  # no --vocabulary
    assert "--vocabulary" in capsys.readouterr().err
    np.testing.assert_array_equal(
        sorted((tmp_path).iterdir()), []
    )  # nothing written
