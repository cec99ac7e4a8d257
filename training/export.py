"""Export a keras-hub task as a SavedModel that stock TF Serving serves.

`export_saved_model(task, export_dir)` writes `<export_dir>/<version>/` (TF
Serving's layout: one integer folder per version) with
`keras.export.ExportArchive`. Every signature takes token ids (or images)
and returns logits or token ids; tokenization stays in the client, so the
served graph holds only core TensorFlow ops (no tensorflow-text op, which
stock TF Serving does not register). The task's preprocessor (its config and
vocabulary) is written beside the graph in `<version>/assets.extra/`
(SavedModel's folder for files the graph does not read) so that a client can
tokenize and detokenize: see `collab_keras.training.serving`.

Signatures (token ids and padding masks int32, `(batch, length)`):

- every task: `logits`, the task's inputs named as the task's (e.g.
  `token_ids`, `segment_ids`, `padding_mask`; `images` float32) -> `logits`.
- `Seq2SeqLM`: `translate` (= `serving_default`) and `translate_beam`,
  `encoder_token_ids`, `encoder_padding_mask` -> `decoder_token_ids`,
  `decoder_padding_mask`.

`translate` runs the task's own `generate_step` (the keras-hub `Seq2SeqLM`
contract) with a greedy sampler, `translate_beam` with a
`keras_hub.samplers.BeamSampler(num_beams)`; the whole decoding loop is a
`tf.while_loop` inside the graph. The decoder prompt is the one
`preprocessor.generate_preprocess` builds for an empty decoder text
(`decoder_sequence_length` long) and decoding stops at the tokenizer's end
token, exactly as `task.generate(text)`. For any other task `logits` is also
`serving_default`.

Token ids outside `[0, vocabulary_size)` are rejected inside the graph (a
stock `tf.debugging.assert_non_negative` / `assert_less`): TF Serving answers
such a request with an `InvalidArgumentError` naming the input, instead of
wrapping the id round to another token's embedding. The version folder and
its files get the modes the umask gives (readable by TF Serving running as
another user under the usual umask 022).
"""

import contextlib
import json
import os
import re
import shutil
import tempfile

import keras

from collab_keras.argument_checks import check_integer
from collab_keras.training.checkpoint import TMP_PREFIX
from collab_keras.training.checkpoint import honour_umask

INFO_DIR = "assets.extra"
PREPROCESSOR_DIR = "preprocessor"
EXPORT_FILE = "export.json"
# Preprocessor settings saved in export.json as well: keras-hub's
# Seq2SeqLMPreprocessor.get_config leaves its sequence lengths out.
LENGTHS = (
    "sequence_length",
    "encoder_sequence_length",
    "decoder_sequence_length",
)


def export_saved_model(task, export_dir, version=None, *, num_beams=4):
    """Write `task` as a TF Serving SavedModel in `<export_dir>/<version>/`.

    Args:
        task: a built `keras_hub.models.Task` (text classifier, masked LM,
            image classifier, `Seq2SeqLM`, or the collab_keras subclasses).
            A `Seq2SeqLM` needs its `preprocessor` (decoder prompt and end
            token). Export runs on the TensorFlow backend.
        export_dir: the model's base folder, as TF Serving's `--model_base_path`
            expects; created if missing.
        version: positive int, or `None` for one more than the largest
            existing version (1 for an empty folder). An existing version is
            never overwritten.
        num_beams: int, beams of the `translate_beam` signature (Seq2SeqLM).

    Returns:
        The path of the written version folder. The folder appears
        atomically (written aside, then renamed), so a TF Serving instance
        watching `export_dir` never loads a half-written version.
    """
    import keras_hub

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "export_saved_model() writes a TensorFlow graph and needs the "
            "TensorFlow backend (set KERAS_BACKEND=tensorflow and load the "
            "trained weights there). "
            f"Received: backend={keras.backend.backend()!r}"
        )
    if not isinstance(task, keras_hub.models.Task):
        raise TypeError(
            "`task` must be a keras_hub.models.Task (or a collab_keras task). "
            f"Received: task={task!r} of type {type(task).__name__}"
        )
    if not task.built or not getattr(task, "inputs", None):
        raise ValueError(
            "`task` must be a built functional task (call it or build it "
            f"first). Received: task={task.name!r} (built={task.built})"
        )
    version = check_integer("version", version, allow_none=True)
    num_beams = check_integer("num_beams", num_beams)
    is_seq2seq = isinstance(task, keras_hub.models.Seq2SeqLM)
    if is_seq2seq and task.preprocessor is None:
        raise ValueError(
            "Exporting a Seq2SeqLM needs its preprocessor (decoder prompt, end "
            f"token, vocabulary). Received: task.preprocessor=None for task={task.name!r}"
        )
    export_dir = os.fspath(export_dir)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(
            f"`export_dir` must be a folder. Received: export_dir={export_dir!r}"
        )
    os.makedirs(export_dir, exist_ok=True)
    if version is None:
        version = 1 + max(existing_versions(export_dir), default=0)
    version_dir = os.path.join(export_dir, str(version))
    if os.path.exists(version_dir):
        raise ValueError(
            f"Version {version} already exists in {export_dir!r}; an export never "
            f"overwrites one. Pass another version or None. Received: version={version}"
        )

    # Endpoints track the variables they use; the task itself is not tracked
    # (that would save its preprocessor's lookup tables into the graph).
    archive = keras.export.ExportArchive()
    if is_seq2seq:
        _add_translate_endpoints(archive, task, num_beams)
    _add_logits_endpoint(archive, task)

    # Write aside (a name TF Serving ignores: not an integer), then rename.
    staging = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}export-{version}-", dir=export_dir)
    try:
        archive.write_out(staging, verbose=False)
        _write_info(staging, task)
        honour_umask(staging)
        os.rename(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version_dir


def _write_info(version_dir, task):
    """`export.json` (task, signatures, lengths) and the preprocessor preset."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    info_dir = os.path.join(version_dir, INFO_DIR)
    os.makedirs(info_dir)
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())

    def tensors(infos):  # {name: {"dtype", "shape"}} as TF Serving sees them
        return {
            name: {
                "dtype": tf.as_dtype(info.dtype).name,
                "shape": [d.size for d in info.tensor_shape.dim],
            }
            for name, info in sorted(infos.items())
        }

    signatures = {
        name: {"inputs": tensors(s.inputs), "outputs": tensors(s.outputs)}
        for name, s in sorted(saved_model.meta_graphs[0].signature_def.items())
        if not name.startswith("__")  # TF's internal __saved_model_init_op
    }
    info = {
        "task": type(task).__name__,
        "signatures": signatures,
        "preprocessor": None,
    }
    preprocessor = task.preprocessor
    if preprocessor is not None:
        preprocessor.save_to_preset(os.path.join(info_dir, PREPROCESSOR_DIR))
        info["preprocessor"] = {
            name: getattr(preprocessor, name)
            for name in LENGTHS
            if isinstance(getattr(preprocessor, name, None), int)
        }
    with open(os.path.join(info_dir, EXPORT_FILE), "w") as f:
        json.dump(info, f, indent=2)


def existing_versions(export_dir):
    """The integer version folders in a TF Serving model base folder."""
    return sorted(
        int(name)
        for name in os.listdir(export_dir)
        if re.fullmatch(r"[0-9]+", name)
        and os.path.isdir(os.path.join(export_dir, name))
    )


def _int_spec(name):
    import tensorflow as tf

    return tf.TensorSpec((None, None), tf.int32, name=name)


def _checked_ids(inputs, task):
    """`inputs` with every `*token_ids` tensor checked to lie in
    `[0, vocabulary_size)` (an InvalidArgumentError at run time if not)."""
    import tensorflow as tf

    vocabulary_size = getattr(getattr(task, "backbone", None), "vocabulary_size", None)
    if not isinstance(inputs, dict) or vocabulary_size is None:
        return inputs
    checked = dict(inputs)
    for name, ids in inputs.items():
        if name.endswith("token_ids"):
            message = (f"`{name}` must hold ids in [0, vocabulary_size={vocabulary_size}) "
                       f"(the exported model's vocabulary). Received: {name}")
            with tf.control_dependencies([
                tf.debugging.assert_non_negative(ids, message=message),
                tf.debugging.assert_less(ids, tf.cast(vocabulary_size, ids.dtype),
                                         message=message),
            ]):
                checked[name] = tf.identity(ids)
    return checked


def _add_logits_endpoint(archive, task):
    """`logits`: the task's forward pass, inputs named as the task's."""
    import tensorflow as tf

    def spec(x, name):  # (batch, ...) as the task's keras.Input
        return tf.TensorSpec(x.shape, x.dtype, name=name)

    inputs = task.input  # a dict of keras.Input, or one (e.g. images)
    if isinstance(inputs, dict):
        signature = {key: spec(x, key) for key, x in inputs.items()}
    else:
        signature = spec(inputs, inputs.name)

    def logits(inputs):
        with _stock_tensorflow_ops():
            return {"logits": task(_checked_ids(inputs, task), training=False)}

    archive.add_endpoint("logits", logits, input_signature=[signature])


def _add_translate_endpoints(archive, task, num_beams):
    """`translate` (greedy) and `translate_beam`: the task's generate_step."""
    import keras_hub
    import tensorflow as tf

    preprocessor = task.preprocessor
    prompt = preprocessor.generate_preprocess([""])
    prompt_ids = tf.constant(
        keras.ops.convert_to_numpy(prompt["decoder_token_ids"])[0], tf.int32
    )
    prompt_mask = tf.constant(
        keras.ops.convert_to_numpy(prompt["decoder_padding_mask"])[0], tf.bool
    )
    tokenizer = preprocessor.tokenizer
    stop_token_ids = [tokenizer.end_token_id]
    if hasattr(tokenizer, "end_token2_id"):  # as Seq2SeqLM.generate's "auto"
        stop_token_ids.append(tokenizer.end_token2_id)

    def make_translate(sampler):
        def translate(inputs):
            # (batch, encoder_length) int32 in; the decoder prompt is a constant
            encoder_token_ids = _checked_ids(inputs, task)["encoder_token_ids"]
            batch = tf.shape(encoder_token_ids)[0]
            generate_inputs = {
                "encoder_token_ids": encoder_token_ids,
                "encoder_padding_mask": tf.cast(
                    inputs["encoder_padding_mask"], tf.bool
                ),
                # (batch, decoder_length)
                "decoder_token_ids": tf.tile(prompt_ids[None], [batch, 1]),
                "decoder_padding_mask": tf.tile(prompt_mask[None], [batch, 1]),
            }
            # generate_step samples with `task.sampler`: this one while tracing.
            with _sampler(task, sampler), _stock_tensorflow_ops():
                outputs = task.generate_step(
                    generate_inputs, stop_token_ids=stop_token_ids
                )
            return {
                "decoder_token_ids": tf.cast(
                    outputs["decoder_token_ids"], tf.int32
                ),
                "decoder_padding_mask": tf.cast(
                    outputs["decoder_padding_mask"], tf.int32
                ),
            }

        return translate

    spec = {
        "encoder_token_ids": _int_spec("encoder_token_ids"),
        "encoder_padding_mask": _int_spec("encoder_padding_mask"),
    }
    samplers = {
        "translate": keras_hub.samplers.GreedySampler(),
        "translate_beam": keras_hub.samplers.BeamSampler(num_beams=num_beams),
    }
    for name, sampler in samplers.items():
        archive.add_endpoint(
            name, make_translate(sampler), input_signature=[spec]
        )
        # Samplers hold a seed variable that the traced loop captures.
        archive.add_variable_collection(
            f"{name}_sampler_variables", sampler.variables
        )


@contextlib.contextmanager
def _sampler(task, sampler):
    previous = getattr(task, "sampler", None)
    task.sampler = sampler
    try:
        yield
    finally:
        task.sampler = previous


@contextlib.contextmanager
def _stock_tensorflow_ops():
    """Trace `keras.ops.slice_update` as core TensorFlow ops.

    Keras' TensorFlow backend writes `slice_update` (the key/value cache
    update of cached decoding) as the XLA op `XlaDynamicUpdateSlice`, which
    stock TF Serving only runs with `--xla_cpu_compilation_enabled` on CPU
    and not at all on its GPU image. While an endpoint is traced this swaps
    in the same update written with `tf.tensor_scatter_nd_update`: the same
    values (a copy), start indices clamped as XLA clamps them.
    """
    from keras.src.backend.tensorflow import core

    original = core.slice_update
    core.slice_update = _slice_update
    try:
        yield
    finally:
        core.slice_update = original


def _slice_update(inputs, start_indices, updates):
    import tensorflow as tf

    inputs = tf.convert_to_tensor(inputs)
    updates = tf.cast(updates, inputs.dtype)
    rank = len(inputs.shape)
    input_shape = tf.shape(inputs, out_type=tf.int32)
    update_shape = tf.shape(updates, out_type=tf.int32)
    start = tf.cast(tf.stack(list(start_indices)), tf.int32)
    # XLA semantics: clamp so that the update lies inside `inputs`.
    start = tf.clip_by_value(start, 0, input_shape - update_shape)
    axes = [tf.range(update_shape[i]) + start[i] for i in range(rank)]
    # (*update_shape, rank): the index in `inputs` of every updated element
    indices = tf.stack(tf.meshgrid(*axes, indexing="ij"), axis=-1)
    return tf.tensor_scatter_nd_update(inputs, indices, updates)
