"""Convert `keras.layers.MultiHeadAttention` into `CollaborativeAttention`."""

import contextlib
import inspect
import math
import time
import warnings

import keras
import numpy as np

from collab_keras.argument_checks import check_bool
from collab_keras.argument_checks import check_float
from collab_keras.argument_checks import check_integer
from collab_keras.layers import CollaborativeAttention
from collab_keras.reparametrization.calibration import HeldOutStatistics
from collab_keras.reparametrization.cp_decomposition import check_finite
from collab_keras.reparametrization.cp_decomposition import cp_decompose_heads
from collab_keras.reparametrization.cp_decomposition import (
    weighted_relative_error,
)
from collab_keras.reparametrization.report import ConversionReport

# The layers `reparametrize` converts (subclasses only in a model that
# rebuilds itself collaborative).
_SOURCES = (keras.layers.MultiHeadAttention, CollaborativeAttention)

# Batch size of the forward passes that record calibration activations.
_CALIBRATION_BATCH_SIZE = 32
# Arguments of MultiHeadAttention's call that `_compute_attention_mask` takes.
_MASK_ARGUMENTS = (
    "query_mask",
    "value_mask",
    "key_mask",
    "attention_mask",
    "use_causal_mask",
)


def reparametrize(
    obj,
    shared_key_dim,
    calibration_data=None,
    method="als",
    max_iterations=100,
    tolerance=1e-6,
    seed=None,
    verbose=True,
    num_threads=1,
):
    """Turns multi-head attention into collaborative attention, or
    collaborative attention into a smaller one.

    The query/key part of head `h` is the matrix `T_h = Wq_h Wk_h^T`; a
    collaborative layer with shared key size `R` computes
    `Wq diag(m_h) Wk^T`, so the conversion is a rank-`R` CP decomposition of
    the `(d_q, heads, d_k)` tensor `T` (see `cp_decompose_heads`). The query
    bias survives the softmax only through the content bias
    `content_bias[:, h] = Wk_h bq_h`, which is exact; the key bias cancels;
    values and the output projection are copied. When
    `shared_key_dim >= num_heads * key_dim` the heads' projections are copied
    side by side and the result equals the input up to float rounding.

    A `CollaborativeAttention` layer converts the same way, to another
    `shared_key_dim`: its head `h` is `T_h = Wq diag(m_h) Wk^T`, so a
    smaller key is a CP decomposition of lower rank of the same tensor
    (the content bias, values and output are copied). At or above its own
    `shared_key_dim` the factors are copied, padded with zero columns:
    exact.

    Given a Keras model (functional, Sequential or a keras-hub backbone),
    every `MultiHeadAttention` and `CollaborativeAttention` layer is
    converted in a copy of the model; all other weights are kept. A keras-hub BERT or ViT backbone or task is first
    turned into its `collab_keras.models` counterpart (same weights,
    tokenizer and preprocessing), so that the result saves and loads whole. The input
    is never modified. A model with an attention switch (its config has
    `"attention": "concatenate"` or `"collaborative"`, as the backbones and
    tasks of `collab_keras.models`) is instead rebuilt from its
    config with `attention="collaborative"` and `shared_key_dim`, so that it
    also saves and loads as collaborative; there, subclasses of
    `MultiHeadAttention` (keras-hub's `CachedMultiHeadAttention`) and of
    `CollaborativeAttention` convert too, to the counterpart the model
    builds.

    With `calibration_data` the decomposition minimizes the mean squared
    error of the attention logits on those activations (keys centered per
    sequence, since softmax ignores shifts along the keys) instead of the
    plain error of `T`; see `LogitStatistics`. Calibration cannot make a
    layer worse than none: about a quarter of the sequences are held out
    (`HeldOutStatistics`), and per layer the data-aware fit is kept (then
    refitted on all the data) only if its logit error on the held-out part
    is lower than the tensor-only solution's; otherwise the layer falls
    back to the tensor-only solution. The calibrated fits are warm-started
    from a tensor-only start of 3/10 of `max_iterations` sweeps (the
    data-aware fit takes 1/5 of them, its refit 1/20; a fallback continues
    the start to the full tensor-only solution), so that calibration costs
    about as much as none. With fewer than 32 sequences or fewer
    tokens than `max(d_q, d_k)` a warning says how much data a reliable fit
    needs.

    Args:
        obj: a built `keras.layers.MultiHeadAttention` or
            `CollaborativeAttention` layer, or a Keras model containing such
            layers.
        shared_key_dim: positive integer, the shared key/query size `R` of
            the new layers.
        calibration_data: optional data for the data-aware mode. For a
            layer: an array of query activations `(batch, length, d_q)`
            (self-attention) or a tuple `(query, key)` of such arrays. For a
            model: model inputs as accepted by `model(...)` (an array, a list
            or a dict of arrays with a common first axis), run through the
            model in batches of 32 to record the activations reaching each
            attention layer; or `"synthetic"`, data-free: the inputs of the
            model's (or its backbone's) `synthetic_inputs()`, random token
            sequences for the zoo's `BertBackbone`.
        method: `"als"` (the default: implicit alternating least squares
            from an SVD start, fast) or `"parafac"` (the paper's reference:
            tensorly's parafac from a random start on the dense tensor).
        max_iterations: maximum number of ALS sweeps per layer.
        tolerance: stop a layer's ALS when its relative error improves by
            less than this between two sweeps.
        seed: integer seed; the result is deterministic for a given seed.
        verbose: whether to show a progress bar over layers (models only).
        num_threads: BLAS threads for the decompositions (set with
            `threadpoolctl` and restored afterwards; `None` leaves BLAS as
            it is). One is the fastest on small machines shared with other
            work, where several threads spin against each other.

    Returns:
        A tuple `(converted, report)`: a built `CollaborativeAttention` (for
        a layer) or a new model, and a `ConversionReport`: a list with one
        dict per converted layer, `"name"` (its path), `"shared_key_dim"`,
        `"relative_error"` (`||T - T_hat|| / ||T||`),
        `"logit_relative_error"` (the error under the calibration metrics of
        all the data; `None` without calibration data), `"calibration"`
        (`None` without data, else `"data-aware"` or `"tensor-only"`, the
        fallback), `"held_out_logit_error"` (`None`, or a dict of the
        held-out logit errors of the `"tensor-only"` and `"data-aware"`
        fits), `"calibration_source"` (`None`, `"synthetic"` or
        `"given"`: what the conversion was calibrated on), `"iterations"`
        and `"seconds"`; `report.seconds` is the whole conversion's wall
        time, `report.calibration_source` the calibration source and
        `report.summary()` one line.

    Example:

    ```python
    mha = keras.layers.MultiHeadAttention(num_heads=8, key_dim=32)
    mha(x, x)  # builds it
    layer, report = reparametrize(mha, shared_key_dim=128)
    ```
    """
    shared_key_dim = check_integer("shared_key_dim", shared_key_dim)
    max_iterations = check_integer("max_iterations", max_iterations)
    tolerance = check_float("tolerance", tolerance)
    seed = check_integer("seed", seed, minimum=None, allow_none=True)
    verbose = check_bool("verbose", verbose)
    num_threads = check_integer("num_threads", num_threads, allow_none=True)
    if method not in ("als", "parafac"):
        raise ValueError(
            f"`method` must be 'als' or 'parafac'. Received: method={method!r}"
        )
    options = {
        "rank": shared_key_dim,
        "method": method,
        "max_iterations": max_iterations,
        "tolerance": tolerance,
        "seed": seed,
    }
    start = time.perf_counter()
    with _blas_threads(num_threads):
        if isinstance(obj, keras.Model):
            obj = _zoo_counterpart(obj)
            converted, entries = _reparametrize_model(
                obj, calibration_data, options, verbose
            )
        else:
            _check_attention(obj, "obj")
            statistics = None
            if calibration_data is not None:
                statistics = _layer_statistics(obj, calibration_data)
                _warn_if_too_little(statistics, stacklevel=3)
            converted, entry = _convert(obj, statistics, options, obj.name)
            entries = [entry]
    source = None
    if calibration_data is not None:
        synthetic = isinstance(calibration_data, str) and (
            calibration_data == "synthetic"
        )
        source = "synthetic" if synthetic else "given"
    for entry in entries:
        entry["calibration_source"] = source
    return converted, ConversionReport(
        entries, time.perf_counter() - start, calibration_source=source
    )


def _blas_threads(num_threads):
    """A context running BLAS with `num_threads` threads (restored on exit)."""
    if num_threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=num_threads, user_api="blas")


def _warn_if_too_little(statistics, stacklevel):
    """Warns when calibration data is too small for a reliable fit;
    `stacklevel` points the warning at `reparametrize`'s caller."""
    shortfall = statistics.shortfall()
    if shortfall is None:
        return
    warnings.warn(
        "`calibration_data` is too small for a reliable data-aware "
        f"conversion: it has {shortfall['sequences']} sequences and "
        f"{shortfall['tokens']} tokens reaching an attention layer; at least "
        f"{shortfall['sequences_needed']} sequences and "
        f"{shortfall['tokens_needed']} tokens are needed. Layers whose "
        "data-aware fit does worse on the held-out sequences use the "
        "tensor-only solution (see the report's 'calibration').",
        stacklevel=stacklevel,
    )


def _zoo_counterpart(model):
    """A keras-hub BERT or ViT backbone or task as this project's zoo model.

    The zoo model has the same weights, tokenizer and preprocessing and an
    attention switch, so the converted model saves and loads whole
    (`collab_keras.models.from_keras_hub`). Other models are returned as is.

    The one use of the upper floor `collab_keras.models` by this package,
    at call time and only for a keras-hub model: importing
    `collab_keras.reparametrization` imports nothing above it. Without the
    zoo (not importable) the model is converted as any other.
    """
    if not type(model).__module__.startswith("keras_hub"):
        return model
    try:
        from collab_keras.models import keras_hub_weights
    except ImportError:
        return model
    if keras_hub_weights.zoo_class(type(model)) is None:
        return model
    return keras_hub_weights.from_keras_hub(model)


def _reparametrize_model(model, calibration_data, options, verbose):
    """Converts every attention layer of a copy of `model`."""
    try:
        config = keras.saving.serialize_keras_object(model)
        # An attention switch in the config (the collab_keras zoo's
        # convention): the model rebuilds itself collaborative, so it also
        # saves as such; `model` itself is only read (its attention calls
        # are recorded, then restored), no copy is needed.
        switch = config["config"].get("attention") in (
            "concatenate",
            "collaborative",
        )
        copy = model
        if not switch:
            # Compiled state is not copied: restoring a custom `compile()`
            # from a config only warns that it cannot.
            config.pop("compile_config", None)
            copy = keras.saving.deserialize_keras_object(config)
            copy.set_weights(model.get_weights())
    except Exception as error:
        raise ValueError(
            "`obj` must be a model that can be rebuilt from its config "
            "(functional, Sequential, or a registered subclass with "
            f"`get_config`). Received: obj={model.name!r}, which failed "
            f"with: {error}"
        ) from error
    sites = _attention_sites(copy, subclasses=switch)
    if not sites:
        raise ValueError(
            "The model has no keras.layers.MultiHeadAttention or "
            f"CollaborativeAttention layer to reparametrize. Received: obj={model.name!r} with layers "
            f"{[layer.name for layer in model.layers]}"
        )
    targets = {}
    if switch:
        switched, targets = _collaborative_twin(copy, sites, options["rank"])
        sites = [site for site in sites if id(site[2]) in targets]
    statistics = {}
    if isinstance(calibration_data, str) and calibration_data == "synthetic":
        calibration_data = _synthetic_inputs(copy)
    if calibration_data is not None:
        statistics = _model_statistics(copy, sites, calibration_data)
        _warn_if_too_little(next(iter(statistics.values())), stacklevel=4)

    report = []
    graph_replacements = {}
    progbar = keras.utils.Progbar(
        len(sites), verbose=1 if verbose else 0, unit_name="layer"
    )
    for parent, attribute, layer, path in sites:
        new_layer, entry = _convert(
            layer, statistics.get(id(layer)), options, path
        )
        report.append(entry)
        if switch:
            _assign_to_twin(targets[id(layer)], new_layer)
        elif attribute is None:
            graph_replacements[id(layer)] = new_layer
        else:
            _swap_sublayer(parent, attribute, layer, new_layer)
        progbar.add(1)
    if switch:
        return switched, report
    for layer in copy._flatten_layers(include_self=True, recursive=True):
        if hasattr(layer, "_torch_params"):
            # torch backend: refresh the parameters torch sees.
            layer._track_variables()
    if graph_replacements:
        # Nodes of a functional graph: call the new layers on the same
        # inputs. The copy's other layers (and weights) are reused.
        copy = keras.models.clone_model(
            copy,
            clone_function=lambda x: graph_replacements.get(id(x), x),
            recursive=True,
        )
    return copy, report


def _collaborative_twin(model, sites, rank):
    """`model` rebuilt from its config with `attention="collaborative"`.

    Args:
        model: a model whose config has `"attention"` (`"concatenate"` or
            `"collaborative"`) and accepts `attention="collaborative"` with
            `shared_key_dim`.
        sites: `model`'s attention sites, from `_attention_sites`.
        rank: the shared key size of the new attention layers.

    Returns:
        A tuple `(twin, targets)`: the new model, holding `model`'s weights
        outside the attention layers, and a dict from the `id` of each
        site's layer to the `CollaborativeAttention` at its path in `twin`
        (a layer the switch leaves concatenated, such as an explicit
        `cross_attention="concatenate"`, has none and keeps its weights).
    """
    config = model.get_config()
    config.update(attention="collaborative", shared_key_dim=rank)
    if rank < max(layer.num_heads for _, _, layer, _ in sites):
        # Block one-hot mixing needs a dimension per head; the weights are
        # set afterwards.
        kwargs = config.get("attention_kwargs") or {}
        config["attention_kwargs"] = {
            **kwargs,
            "mixing_initializer": "random_normal",
        }
    try:
        twin = model.__class__.from_config(config)
    except Exception as error:
        raise ValueError(
            "A model whose config has an attention switch must rebuild "
            "from it with attention='collaborative' and shared_key_dim. "
            f"Received: obj={model.name!r}, which failed with: {error}"
        ) from error
    weights = {variable.path: variable for variable in model.weights}
    for variable in twin.weights:
        old = weights.get(variable.path)
        if old is not None and tuple(old.shape) == tuple(variable.shape):
            variable.assign(old)
    layers = {
        layer.path: layer
        for layer in twin._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, CollaborativeAttention)
    }
    targets = {
        id(layer): layers[layer.path]
        for _, _, layer, _ in sites
        if layer.path in layers
    }
    return twin, targets


def _assign_to_twin(target, layer):
    """Sets `layer`'s weights (a conversion) into `target`, the rebuilt
    model's layer at its path.

    The twin scales its scores by `1 / sqrt(target.key_dim)`, the model's
    per-head size; concatenated heads of a reduced key size scaled theirs by
    `1 / sqrt(layer.key_dim)`. The mixing matrix and the content bias, the
    two factors of every logit, take the ratio: the same logits.
    """
    target.set_weights(layer.get_weights())
    ratio = math.sqrt(target.key_dim / layer.key_dim)
    if ratio != 1.0:
        for variable in (target.mixing, target.content_bias):
            if variable is not None:
                variable.assign(variable * ratio)


def _attention_sites(root, subclasses=False):
    """`(parent, attribute or None, layer, path)` of every attention layer.

    `attribute` names the parent's attribute holding the layer; `None` for a
    node of a functional graph. With `subclasses`, subclasses of
    MultiHeadAttention (keras-hub's cached one) and of CollaborativeAttention
    are accepted too.
    """
    sites = []

    def visit(parent, path):
        graph = set()
        if isinstance(parent, keras.Model) and hasattr(parent, "operations"):
            graph = {id(op) for op in parent.operations}
        for child in parent._flatten_layers(include_self=False, recursive=False):
            child_path = f"{path}/{child.name}"
            if not isinstance(child, _SOURCES):
                visit(child, child_path)
                continue
            _check_attention(child, child_path, subclasses)
            attribute = next(
                (k for k, v in _attributes(parent).items() if v is child), None
            )
            if attribute is None and id(child) not in graph:
                raise ValueError(
                    f"Cannot replace the attention layer {child_path!r}: it "
                    "is neither an attribute of its parent layer nor a node "
                    f"of a functional model. Received: parent={parent!r}"
                )
            sites.append((parent, attribute, child, child_path))

    visit(root, root.name)
    return sites


def _attributes(parent):
    """`parent`'s attributes; torch modules keep sublayers in `_modules`."""
    attributes = vars(parent)
    return {**attributes, **attributes.get("_modules", {})}


def _swap_sublayer(parent, attribute, layer, new_layer):
    """Replaces `parent.<attribute>`, a sublayer, in place."""
    index = next(i for i, x in enumerate(parent._layers) if x is layer)
    parent._layers[index] = new_layer  # what Keras tracks
    modules = vars(parent).get("_modules", {})
    if attribute in modules:
        modules[attribute] = new_layer  # torch backend
    else:
        object.__setattr__(parent, attribute, new_layer)


def _check_attention(layer, argument, subclasses=False):
    """Checks that `layer` is a built, convertible attention layer.

    Subclasses are rejected unless `subclasses`: only a model that rebuilds
    itself collaborative knows their counterpart.
    """
    is_attention = isinstance(layer, _SOURCES)
    if type(layer) not in _SOURCES and not (subclasses and is_attention):
        kind = (
            f"a subclass of {type(layer).__mro__[1].__name__} with its own call"
            if is_attention
            else "not an attention layer or a Keras model"
        )
        raise ValueError(
            f"`{argument}` must be a keras.layers.MultiHeadAttention or "
            "CollaborativeAttention layer, or a Keras model; this is "
            f"{kind}. Received: {argument}={layer!r}"
        )
    if not layer.built:
        raise ValueError(
            f"`{argument}` must be built (call it once or call `build()`) "
            f"so that its weights exist. Received: {argument}={layer.name!r} "
            "with built=False"
        )


def _head_kernels(layer):
    """The query and key kernels `(d_q, H, k)` and `(d_k, H, k)` of
    `layer`'s heads, `T_h = Wq_h Wk_h^T`, as numpy arrays.

    A MultiHeadAttention's own; for a CollaborativeAttention
    `Wq_h = Wq diag(m_h)` against the shared `Wk` (`k = shared_key_dim`).
    """
    query_kernel = keras.ops.convert_to_numpy(layer._query_dense.kernel)
    key_kernel = keras.ops.convert_to_numpy(layer._key_dense.kernel)
    if not isinstance(layer, CollaborativeAttention):
        return query_kernel, key_kernel
    mixing = keras.ops.convert_to_numpy(layer.mixing)
    query_kernel = query_kernel[:, None, :] * mixing[None]  # (d_q, H, k)
    heads = query_kernel.shape[1]
    key_kernel = np.repeat(key_kernel[:, None, :], heads, axis=1)  # (d_k, H, k)
    return query_kernel, key_kernel


def _copied_factors(layer, rank, statistics):
    """A CollaborativeAttention's own factors, padded with zero columns to
    `rank` (`>= shared_key_dim`): the exact solution, in `_decompose`'s
    form."""
    padding = [(0, 0), (0, rank - layer.shared_key_dim)]
    factors = [
        np.pad(keras.ops.convert_to_numpy(weight), padding)
        for weight in (
            layer._query_dense.kernel,  # (d_q, R)
            layer.mixing,  # (H, R)
            layer._key_dense.kernel,  # (d_k, R)
        )
    ]
    info = {
        "relative_error": 0.0,
        "iterations": 0,
        "logit_relative_error": None if statistics is None else 0.0,
    }
    return (*factors, info, {})


def _convert(source, statistics, options, path):
    """One built CollaborativeAttention equal to `source` up to its rank.

    `source`: a MultiHeadAttention or CollaborativeAttention layer;
    `statistics`: `None` (tensor-only) or the layer's `HeldOutStatistics`;
    `path` names the layer in errors and in the report.
    """
    start = time.perf_counter()
    for variable in source.weights:
        check_finite(
            keras.ops.convert_to_numpy(variable.value),
            "`obj` must have finite weights to be reparametrized.",
            f"obj whose attention layer {path!r} has {variable.path!r}",
        )
    rank = options["rank"]
    collaborative = isinstance(source, CollaborativeAttention)
    if collaborative and rank >= source.shared_key_dim:
        decomposition = _copied_factors(source, rank, statistics)
    else:
        decomposition = _decompose(*_head_kernels(source), statistics, options)
    query_factor, mixing, key_factor, info, calibration = decomposition

    heads = source.num_heads
    config = source.get_config()  # use_gate and sliding_window carry over
    config["shared_key_dim"] = rank
    # Weights are set below; the initializer only matters for a rebuild, and
    # block one-hot mixing needs at least one dimension per head.
    if rank < heads:
        config["mixing_initializer"] = "random_normal"
    layer = CollaborativeAttention.from_config(config)
    layer.build(**source._build_shapes_dict)

    assignments = [
        (layer._query_dense.kernel, query_factor),  # (d_q, R)
        (layer._key_dense.kernel, key_factor),  # (d_k, R)
        (layer.mixing, mixing),  # (H, R)
        (layer._value_dense.kernel, source._value_dense.kernel),
        (layer._output_dense.kernel, source._output_dense.kernel),
    ]
    if layer.use_gate:
        assignments += [
            (new, old)
            for new, old in zip(
                layer._gate_dense.weights, source._gate_dense.weights
            )
        ]
    if layer.use_bias:
        if collaborative:
            content_bias = source.content_bias
        else:
            key_kernel = keras.ops.convert_to_numpy(source._key_dense.kernel)
            query_bias = keras.ops.convert_to_numpy(source._query_dense.bias)
            # c_h = Wk_h bq_h: the only query/key bias term softmax keeps.
            content_bias = np.einsum("jhk,hk->jh", key_kernel, query_bias)
        assignments += [
            (layer.content_bias, content_bias),  # (d_k, H)
            (layer._value_dense.bias, source._value_dense.bias),
            (layer._output_dense.bias, source._output_dense.bias),
        ]
    for variable, value in assignments:
        value = keras.ops.convert_to_numpy(value).astype(variable.dtype)
        variable.assign(value)

    entry = {
        "name": path,
        "shared_key_dim": rank,
        "relative_error": info["relative_error"],
        "logit_relative_error": info.get("logit_relative_error"),
        "calibration": calibration.get("calibration"),
        "held_out_logit_error": calibration.get("held_out_logit_error"),
        "iterations": info["iterations"],
        "seconds": time.perf_counter() - start,
    }
    return layer, entry


def _calibration_sweeps(max_iterations):
    """ALS sweeps of the stages of a calibrated layer, from `max_iterations`.

    `(start, aware, refit)`: the tensor-only start (3/10 of the sweeps),
    the data-aware fit on the fit part warm-started from it (1/5) and its
    refit on all the data (1/20); 30, 20 and 5 for the default 100. The
    start is continued to `max_iterations` only if the layer falls back.
    """
    return (
        max(1, (3 * max_iterations) // 10),
        max(1, max_iterations // 5),
        max(1, max_iterations // 20),
    )


def _decompose(query_kernel, key_kernel, statistics, options):
    """The layer's CP factors, with calibration that cannot hurt.

    Without `statistics`: the tensor-only solution (`max_iterations`
    sweeps). With them (see `_calibration_sweeps` for the sweeps): a
    tensor-only start; from it, the data-aware fit on the fit part; both
    scored by their logit error on the held-out part. The data-aware fit
    is kept, refitted on all the data, only if it is lower; otherwise the
    start is continued to the full tensor-only solution, as without data.

    Returns `(query_factor, mixing, key_factor, info, calibration)`:
    `info` as `cp_decompose_heads` gives it plus `"logit_relative_error"`
    (under all the data's metrics), `calibration` a dict with the report's
    `"calibration"` and `"held_out_logit_error"` (empty without data).
    """
    if statistics is None:
        return (*cp_decompose_heads(query_kernel, key_kernel, **options), {})

    def fit(sweeps, metric_pair=(None, None), initial=None):
        query_metric, key_metric = metric_pair
        return cp_decompose_heads(
            query_kernel,
            key_kernel,
            query_metric=query_metric,
            key_metric=key_metric,
            initial=initial,
            **{**options, "max_iterations": sweeps},
        )

    start_sweeps, aware_sweeps, refit_sweeps = _calibration_sweeps(
        options["max_iterations"]
    )
    start = fit(start_sweeps)
    metrics = statistics.all.metrics()
    chosen = None
    held_out = None
    if statistics.held_out.num_tokens and statistics.fit.num_tokens:
        aware = fit(aware_sweeps, statistics.fit.metrics(), start[:3])
        validation = statistics.held_out.metrics()
        held_out = {
            name: weighted_relative_error(
                query_kernel, key_kernel, factors[:3], *validation
            )
            for name, factors in (("tensor-only", start), ("data-aware", aware))
        }
        if held_out["data-aware"] < held_out["tensor-only"]:
            # Refit on all the data, from the fit part's solution.
            chosen = fit(refit_sweeps, metrics, aware[:3])
    if chosen is None:
        # Fall back: the tensor-only solution, continued from its start.
        chosen = start
        remaining = options["max_iterations"] - start[3]["iterations"]
        if remaining > 0 and start[3]["iterations"] == start_sweeps:
            chosen = fit(remaining, initial=start[:3])
            info = dict(chosen[3])
            info["iterations"] += start[3]["iterations"]
            chosen = (*chosen[:3], info)
    query_factor, mixing, key_factor, info = chosen
    info = dict(info)
    info["logit_relative_error"] = weighted_relative_error(
        query_kernel, key_kernel, chosen[:3], *metrics
    )
    calibration = {
        "calibration": "tensor-only" if held_out is None or (
            held_out["data-aware"] >= held_out["tensor-only"]
        ) else "data-aware",
        "held_out_logit_error": held_out,
    }
    return query_factor, mixing, key_factor, info, calibration


def _synthetic_inputs(model):
    """`model`'s own data-free calibration inputs (`synthetic_inputs()` of
    the model or of its backbone, as the zoo's `BertBackbone` has)."""
    for candidate in (model, getattr(model, "backbone", None)):
        if hasattr(candidate, "synthetic_inputs"):
            return candidate.synthetic_inputs()
    raise ValueError(
        "`calibration_data='synthetic'` needs a model (or a task whose "
        "backbone) has a `synthetic_inputs()` method, such as "
        "collab_keras.models.BertBackbone. Received: calibration_data="
        f"'synthetic' for obj={model.name!r} of type {type(model).__name__}"
    )


def _check_calibration_data(calibration_data):
    """Rejects calibration data that holds no sequences (or is text where
    arrays are needed) with an error echoing it."""
    if isinstance(calibration_data, (str, bytes)):
        raise ValueError(
            "`calibration_data` must be arrays of model (or layer) inputs "
            "with a batch axis, or 'synthetic' (models only); a single "
            "string is not (zoo tasks and their `from_preset` accept a list "
            f"of strings). Received: calibration_data={calibration_data!r}"
        )
    leaves = keras.tree.flatten(calibration_data)
    if not leaves or any(np.ndim(leaf) == 0 for leaf in leaves) or not len(
        leaves[0]
    ):
        raise ValueError(
            "`calibration_data` must hold at least one sequence (arrays with "
            "a batch axis of size >= 1). Received: calibration_data="
            f"{_describe(calibration_data)}"
        )
    return len(leaves[0])


def _describe(data):
    """A short description of `data` for error messages."""
    try:
        return repr(keras.tree.map_structure(np.shape, data)) + " (shapes)"
    except Exception:  # noqa: BLE001 - any structure: fall back to repr
        return repr(data)[:200]


def _layer_statistics(layer, calibration_data):
    """HeldOutStatistics of activations given for one layer."""
    _check_calibration_data(calibration_data)
    if isinstance(calibration_data, (tuple, list)):
        query, key = calibration_data
    else:
        query = key = calibration_data
    query, key = np.asarray(query), np.asarray(key)
    statistics = _empty_statistics(layer, len(query) if query.ndim > 2 else 1)
    query_dim, key_dim = statistics.query_dim, statistics.key_dim
    if (
        query.ndim < 2
        or key.ndim < 2
        or query.shape[-1] != query_dim
        or key.shape[-1] != key_dim
        or len(query) != len(key)
    ):
        raise ValueError(
            "`calibration_data` must be query activations of shape "
            f"(batch, length, {query_dim}) or a tuple (query, key) with key "
            f"activations of shape (batch, length, {key_dim}). Received: "
            f"calibration_data with shapes {query.shape} and {key.shape}"
        )
    statistics.update(query, key, self_attention=query is key)
    return statistics


def _empty_statistics(layer, num_sequences):
    """HeldOutStatistics sized for `layer`'s query and key features."""
    # Kernels (d_q, H, dk) and (d_k, H, dk), or (d_q, R) and (d_k, R).
    return HeldOutStatistics(
        layer._query_dense.kernel.shape[0],
        layer._key_dense.kernel.shape[0],
        num_sequences,
    )


def _model_statistics(model, sites, calibration_data):
    """Runs `model` on the data, recording each attention layer's inputs."""
    size = _check_calibration_data(calibration_data)
    statistics = {}
    position = {"start": 0}  # index of the batch's first sequence
    for _, _, layer, _ in sites:
        statistics[id(layer)] = _empty_statistics(layer, size)
        layer.call = _recording_call(layer, statistics[id(layer)], position)
    try:
        for start in range(0, size, _CALIBRATION_BATCH_SIZE):
            position["start"] = start
            batch = keras.tree.map_structure(
                lambda x: x[start : start + _CALIBRATION_BATCH_SIZE],
                calibration_data,
            )
            model(batch, training=False)
    except Exception as error:
        shapes = keras.tree.map_structure(np.shape, calibration_data)
        raise ValueError(
            "`calibration_data` must be inputs that the model accepts. "
            f"Received: calibration_data with shapes {shapes}, which failed "
            f"with: {error}"
        ) from error
    finally:
        for _, _, layer, _ in sites:
            del layer.call
    return statistics


def _recording_call(layer, statistics, position):
    """`layer.call`, also adding its query and key to `statistics`.

    Arguments are matched by name, so that subclasses with another
    signature (keras-hub's cached attention) are recorded too.
    """
    call = layer.call
    signature = inspect.signature(call)

    def recording_call(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        query, value = arguments["query"], arguments["value"]
        key = arguments.get("key")
        key = value if key is None else key
        masks = {k: arguments[k] for k in _MASK_ARGUMENTS if k in arguments}
        mask = layer._compute_attention_mask(query, value, **masks)
        statistics.update(
            keras.ops.convert_to_numpy(query),
            keras.ops.convert_to_numpy(key),
            None if mask is None else keras.ops.convert_to_numpy(mask),
            self_attention=query is key,
            first_index=position["start"],
        )
        return call(*args, **kwargs)

    return recording_call
