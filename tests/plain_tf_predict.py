"""Answer serialized PredictRequests from SavedModels with TensorFlow alone.

Run by tests/test_export.py in a fresh process, as a stand-in for TF Serving:
it imports only tensorflow and tensorflow-serving-api's protos (never keras,
keras_hub or tensorflow_text), lists every op type of each SavedModel graph
(functions of the graph_def library included) and which of them this plain
process has not registered, loads each export with tf.saved_model.load, and
answers each request file (a serialized PredictRequest, as a gRPC client
sends it) with a serialized PredictResponse.

    python tests/plain_tf_predict.py JOBS.json  ->  prints a JSON report

JOBS.json: [{"export": DIR, "load": true, "requests": [[REQUEST, RESPONSE]]}].

`import tensorflow` imports Keras when it is installed (to register its
optimizers); this process first makes keras, keras_hub, keras_nlp, tf_keras
and tensorflow_text unimportable, as on a machine where only TensorFlow is
installed, and reports whatever of them got imported anyway.
"""

import json
import sys

ABSENT = ("keras", "keras_hub", "keras_nlp", "tensorflow_text", "tf_keras")
if __name__ == "__main__":  # not when a test imports registered_ops()
    for _name in ABSENT:
        sys.modules[_name] = None  # `import` raises, find_spec answers None

import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import op_def_pb2  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow.python.client import pywrap_tf_session  # noqa: E402
from tensorflow.python.framework import op_def_registry  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402


def registered_ops():
    """Every op type registered in this process."""
    buffer = pywrap_tf_session.TF_GetAllOpList()
    op_list = op_def_pb2.OpList.FromString(
        pywrap_tf_session.TF_GetBuffer(buffer)
    )
    return sorted(op.name for op in op_list.op)


def graph_op_types(export):
    """Op types of the SavedModel's graph and of every function it holds."""
    saved_model = saved_model_pb2.SavedModel()
    with open(f"{export}/saved_model.pb", "rb") as f:
        saved_model.ParseFromString(f.read())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return sorted(ops)


def answer(loaded, request):
    signature = request.model_spec.signature_name or "serving_default"
    function = loaded.signatures[signature]
    feeds = {
        name: tf.constant(tf.make_ndarray(proto))
        for name, proto in request.inputs.items()
    }
    outputs = function(**feeds)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


def main(jobs_file):
    with open(jobs_file) as f:
        jobs = json.load(f)
    report = {"registered_ops": registered_ops(), "exports": {}}
    for job in jobs:
        op_types = graph_op_types(job["export"])
        report["exports"][job["export"]] = {
            "op_types": op_types,
            # Checked before any load, against this plain process's registry.
            "unregistered": [
                op for op in op_types if op_def_registry.get(op) is None
            ],
        }
        if not job["load"]:
            continue
        loaded = tf.saved_model.load(job["export"])
        for request_file, response_file in job["requests"]:
            with open(request_file, "rb") as f:
                request = predict_pb2.PredictRequest.FromString(f.read())
            with open(response_file, "wb") as f:
                f.write(answer(loaded, request).SerializeToString())
    report["imported"] = sorted(
        name
        for name, module in sys.modules.items()
        if name.split(".")[0] in ABSENT and module is not None
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
