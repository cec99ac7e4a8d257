"""Translate text with an exported Seq2SeqLM (a local SavedModel or TF Serving)
or with a translator preset.

The exported graph takes token ids (see `collab_keras.training.export`); this
client does the text part with the preprocessor saved beside it in
`<version>/assets.extra/preprocessor/` (config and vocabulary): it tokenizes
with `generate_preprocess`, calls the `translate` (greedy) or
`translate_beam` signature, and detokenizes with `generate_postprocess`.

    collab-keras translate --model exports/nmt "In the beginning"
    collab-keras translate --server localhost:8501 --model-name nmt \\
        --vocabulary exports/nmt "In the beginning"
    collab-keras translate --preset bible_en_de_collaborative "In the beginning"

A preset (`--preset`, a registered name or a preset folder) is loaded with
`from_preset` and decodes in this process with beam search
(`collab_keras.training.preset.translate`); no export is involved.

Python: `translate(texts, model=...)` or `translate(texts, server=...,
vocabulary=...)`.

An export that is not a translator (no `translate` signature in its
`export.json`) is refused with a ValueError; a text longer than the model's
`encoder_sequence_length` (start and end tokens included) is truncated with a
`UserWarning` naming it; a TF Serving reply that is not the expected
predictions (a missing key, a wrong shape) is a RuntimeError quoting it.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
import warnings

from collab_keras.training.export import EXPORT_FILE
from collab_keras.training.export import INFO_DIR
from collab_keras.training.export import PREPROCESSOR_DIR
from collab_keras.training.export import existing_versions

SIGNATURES = {False: "translate", True: "translate_beam"}


def resolve_version_dir(path, argument="model"):
    """A SavedModel version folder, or a base folder's newest version."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = existing_versions(path)
        if versions:
            return os.path.join(path, str(versions[-1]))
    raise ValueError(
        f"`{argument}` must be an exported SavedModel folder (holding "
        "saved_model.pb) or a base folder of integer versions. "
        f"Received: {argument}={path!r}"
    )


def load_preprocessor(path, argument="model"):
    """The preprocessor a translator export saved in `assets.extra/preprocessor`."""
    import keras

    import collab_keras.models  # noqa: F401  (registers the zoo's classes)

    info_file = os.path.join(resolve_version_dir(path, argument), INFO_DIR, EXPORT_FILE)
    try:
        with open(info_file, encoding="utf-8") as f:
            info = json.load(f)
        task, signatures = info["task"], info["signatures"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"`{argument}` holds no readable {INFO_DIR}/{EXPORT_FILE} ({error}): was "
            f"it written by collab_keras.training.export? Received: {argument}={path!r}"
        ) from None
    if SIGNATURES[False] not in signatures:
        raise ValueError(
            f"`{argument}` is an export of a {task}, not a translator (its "
            f"signatures: {', '.join(sorted(signatures))}; `translate` needs a "
            f"Seq2SeqLM export). Received: {argument}={path!r}"
        )
    preset = os.path.join(os.path.dirname(info_file), PREPROCESSOR_DIR)
    config_file = os.path.join(preset, "preprocessor.json")
    if not os.path.isfile(config_file):
        raise ValueError(
            f"No saved preprocessor in {preset!r}: was `{argument}` written by "
            f"collab_keras.training.export? Received: {argument}={path!r}"
        )
    with open(config_file) as f:
        preprocessor = keras.saving.deserialize_keras_object(json.load(f))
    preprocessor.load_preset_assets(preset)
    for name, value in info["preprocessor"].items():  # what get_config may leave out
        setattr(preprocessor, name, value)
    return preprocessor


def translate(
    texts,
    model=None,
    server=None,
    vocabulary=None,
    model_name="nmt",
    beam=False,
    timeout=60.0,
):
    """Translate `texts` with an exported Seq2SeqLM.

    Args:
        texts: a string or a list of strings.
        model: an export folder (a version, or the base folder: newest
            version) loaded with `tf.saved_model.load`.
        server: `"HOST:PORT"` of a TF Serving REST API (instead of `model`).
        vocabulary: with `server`, the export folder whose saved
            preprocessor tokenizes (the folder the server serves).
        model_name: with `server`, the served model's name.
        beam: use the `translate_beam` signature instead of greedy `translate`.
        timeout: with `server`, seconds to wait for the reply.

    Returns:
        A string for a string, else a list of strings.
    """
    import numpy as np

    if (model is None) == (server is None):
        raise ValueError(
            "Pass exactly one of `model` (a local export) and `server` "
            f"(HOST:PORT). Received: model={model!r}, server={server!r}"
        )
    if server is not None and vocabulary is None:
        raise ValueError(
            "With `server`, pass `vocabulary`: the export folder whose saved "
            f"preprocessor tokenizes. Received: vocabulary=None, server={server!r}"
        )
    scalar = isinstance(texts, str)
    texts = [texts] if scalar else list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(
            f"`texts` must be a string or a non-empty list of strings. Received: texts={texts!r}"
        )
    preprocessor = load_preprocessor(
        model if model is not None else vocabulary,
        "model" if model is not None else "vocabulary",
    )
    from collab_keras.training.evaluation import warn_truncated

    warn_truncated(preprocessor, texts)
    x = preprocessor.generate_preprocess(texts)
    inputs = {
        # (batch, encoder_length) int32
        name: np.asarray(x[name]).astype("int32")
        for name in ("encoder_token_ids", "encoder_padding_mask")
    }
    signature = SIGNATURES[bool(beam)]
    if model is not None:
        outputs = _predict_local(model, signature, inputs)
    else:
        outputs = predict_rest(server, model_name, signature, inputs, timeout)
    translations = preprocessor.generate_postprocess(
        {
            "decoder_token_ids": outputs["decoder_token_ids"],
            "decoder_padding_mask": outputs["decoder_padding_mask"].astype(
                bool
            ),
        }
    )
    translations = [
        t.decode("utf-8") if isinstance(t, bytes) else str(t)
        for t in np.asarray(translations).reshape(-1).tolist()
    ]
    return translations[0] if scalar else translations


def _predict_local(model, signature, inputs):
    import tensorflow as tf

    loaded = tf.saved_model.load(resolve_version_dir(model))
    if signature not in loaded.signatures:
        raise ValueError(
            f"The export has no {signature!r} signature (not a Seq2SeqLM?). "
            f"Signatures: {sorted(loaded.signatures)}. Received: model={model!r}"
        )
    outputs = loaded.signatures[signature](
        **{k: tf.constant(v) for k, v in inputs.items()}
    )
    return {name: value.numpy() for name, value in outputs.items()}


def predict_rest(server, model_name, signature, inputs, timeout=60.0):
    """POST `inputs` (dict of arrays) to TF Serving's REST predict API.

    Uses the row format (`"instances"`, one dict per example) and returns
    the `"predictions"` as a dict of numpy arrays.
    """
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"`server` must be HOST:PORT. Received: server={server!r}"
        )
    names = sorted(inputs)
    instances = [
        {name: inputs[name][i].tolist() for name in names}
        for i in range(len(inputs[names[0]]))
    ]
    body = json.dumps({"signature_name": signature, "instances": instances})
    url = f"http://{server}/v1/models/{model_name}:predict"
    request = urllib.request.Request(
        url,
        data=body.encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            text = reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        message = error.read().decode("utf-8", "replace")
        raise RuntimeError(
            f"TF Serving at {url} answered {error.code}: {message}"
        ) from None
    return _predictions(text, url, len(instances))


def _predictions(text, url, count):
    """The row-format predictions of a TF Serving reply as a dict of
    `(count, length)` int arrays; a RuntimeError quoting a malformed one."""
    import numpy as np

    def malformed(why):
        return RuntimeError(
            f"TF Serving at {url} sent a malformed reply ({why}). "
            f"Received: {text[:200]!r}"
        )

    try:
        predictions = json.loads(text)["predictions"]
    except (ValueError, KeyError, TypeError):
        raise malformed('not a JSON object with "predictions"') from None
    if not isinstance(predictions, list) or len(predictions) != count:
        raise malformed(f"expected a list of {count} predictions")
    names = ("decoder_token_ids", "decoder_padding_mask")
    if not all(isinstance(p, dict) and set(names) <= set(p) for p in predictions):
        raise malformed(f"every prediction must hold {list(names)}")
    outputs = {}
    for name in names:
        try:
            outputs[name] = np.asarray([p[name] for p in predictions], dtype="int64")
        except (ValueError, TypeError):
            raise malformed(f"`{name}` must be equally long lists of integers") from None
        if outputs[name].ndim != 2:
            raise malformed(f"`{name}` must be one list of integers per text")
    if outputs[names[0]].shape != outputs[names[1]].shape:
        raise malformed("token ids and padding mask differ in shape")
    return outputs


def translate_main(argv=None):
    """`collab-keras translate`: text in (arguments or stdin lines), text out."""
    parser = argparse.ArgumentParser(
        prog="collab-keras translate",
        description="Translate with an exported Transformer-NMT model, locally "
        "or through TF Serving's REST API, or with a translator preset.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--model", help="export folder (a version or the base folder)"
    )
    where.add_argument("--server", help="TF Serving REST address HOST:PORT")
    where.add_argument(
        "--preset",
        help="a translator preset: bible_en_de_collaborative or a preset folder",
    )
    parser.add_argument(
        "--vocabulary",
        help="with --server: the export folder whose saved vocabulary tokenizes",
    )
    parser.add_argument(
        "--model-name", default="nmt", help="served model name (--server)"
    )
    parser.add_argument(
        "--beam", action="store_true", help="beam search (translate_beam)"
    )
    parser.add_argument(
        "--beam-width",
        type=int,
        help="with --preset: beams of the beam search, 1 for greedy (default: "
        "the width of the preset's recorded test scores)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds (--server)"
    )
    parser.add_argument(
        "texts", nargs="*", help="sentences (default: stdin lines)"
    )
    args = parser.parse_args(argv)
    if args.server is not None and args.vocabulary is None:
        parser.error("--server needs --vocabulary (the exported model folder)")
    if args.preset is not None and args.beam:
        parser.error("--beam picks an export's signature; with --preset pass --beam-width")
    if args.preset is None and args.beam_width is not None:
        parser.error("--beam-width goes with --preset (an export's beams are fixed: --beam)")
    texts = args.texts or [
        line.rstrip("\n") for line in sys.stdin if line.strip()
    ]
    if not texts:
        parser.error("no text to translate (give sentences or lines on stdin)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            if args.preset is not None:
                from collab_keras.training import preset

                translations = preset.translate(
                    texts, args.preset, args.beam_width
                )
            else:
                translations = translate(
                    texts,
                    model=args.model,
                    server=args.server,
                    vocabulary=args.vocabulary,
                    model_name=args.model_name,
                    beam=args.beam,
                    timeout=args.timeout,
                )
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                print(f"collab-keras translate: warning: {warning.message}", file=sys.stderr)
    except (ValueError, RuntimeError, OSError) as error:
        print(f"collab-keras translate: error: {error}", file=sys.stderr)
        return 2
    for line in translations:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(translate_main())
