"""Argument and input checks of the Transformer-NMT classes (private).

Errors name the argument and echo the value ("Received: name=value").
"""

import numbers

import keras
import numpy as np
from keras import ops

# Keyword arguments the Keras base classes take from a config.
BASE_KWARGS = ("name", "trainable")


def check_kwargs(class_name, kwargs, allowed=BASE_KWARGS):
    """Raises on keyword arguments that would otherwise vanish."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        received = ", ".join(f"{key}={kwargs[key]!r}" for key in unknown)
        raise ValueError(
            f"Unknown keyword argument(s) {unknown} for {class_name}. "
            f"Received: {received}"
        )


def positive_int(name, value, minimum=1):
    """`value` as a Python int (numpy integers accepted), at least `minimum`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, numbers.Integral
    ):
        raise TypeError(
            f"`{name}` must be an integer. Received: {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(
            f"`{name}` must be at least {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def check_architecture_name(name, architectures):
    if not isinstance(name, str) or name not in architectures:
        raise ValueError(
            f"Unknown architecture. Expected one of {sorted(architectures)}. "
            f"Received: name={name!r}"
        )


def is_concrete(x):
    """Whether `x` holds values now (eager), not a symbol being traced."""
    if isinstance(x, keras.KerasTensor):
        return False
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.inside_function()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    return True


def check_token_inputs(inputs, names, vocabulary_size, max_length):
    """Checks a dict of `*_token_ids` / `*_padding_mask` inputs.

    Static checks (always): a dict with exactly `names`, rank 2, each mask
    shaped as its ids, one batch size, lengths at most `max_length`. Value
    checks (eager only): integral ids in `[0, vocabulary_size)`, 0/1 masks.

    Returns:
        The inputs, cast to int32 (float or bool inputs holding integral
        values are accepted, as Keras's own input casting does).
    """
    if not isinstance(inputs, dict):
        raise ValueError(
            f"Inputs must be a dict with keys {list(names)}. Received: "
            f"inputs of type {type(inputs).__name__}"
        )
    missing = [name for name in names if name not in inputs]
    unknown = sorted(set(inputs) - set(names))
    if missing or unknown:
        raise ValueError(
            f"Inputs must be a dict with keys {list(names)}; missing "
            f"{missing}, unknown {unknown}. Received: keys {sorted(inputs)}"
        )
    outputs = {}
    batch = None
    for name in names:
        x = inputs[name]
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = np.asarray(x)
        shape = tuple(x.shape)
        if len(shape) != 2:
            raise ValueError(
                f"`{name}` must have shape (batch, length). "
                f"Received: {name}.shape={shape}"
            )
        if name.endswith("_padding_mask"):
            ids_name = name.replace("_padding_mask", "_token_ids")
            ids_shape = tuple(inputs[ids_name].shape)
            if any(
                a is not None and b is not None and a != b
                for a, b in zip(shape, ids_shape)
            ):
                raise ValueError(
                    f"`{name}` must have the shape of `{ids_name}`. "
                    f"Received: {name}.shape={shape}, "
                    f"{ids_name}.shape={ids_shape}"
                )
        elif shape[1] is not None and shape[1] > max_length:
            raise ValueError(
                f"`{name}` is longer than the position table "
                f"(`max_sequence_length={max_length}`). "
                f"Received: {name}.shape={shape}"
            )
        if batch is not None and shape[0] is not None and shape[0] != batch:
            raise ValueError(
                "The encoder and decoder inputs must have one batch size. "
                f"Received: {name}.shape={shape}, batch size {batch} before"
            )
        batch = shape[0] if batch is None else batch
        dtype = keras.backend.standardize_dtype(x.dtype)
        if "int" not in dtype and "float" not in dtype and dtype != "bool":
            raise TypeError(
                f"`{name}` must hold integers. Received: {name}.dtype={dtype}"
            )
        if is_concrete(x):
            _check_values(name, ops.convert_to_numpy(x), vocabulary_size)
        outputs[name] = x if dtype == "int32" else ops.cast(x, "int32")
    return outputs


def _check_values(name, values, vocabulary_size):
    if values.size == 0:
        return
    if values.dtype == bool:
        values = values.astype("int8")
    if values.dtype.kind == "f":
        bad = values[values != np.round(values)]  # NaN, inf, fractions
        if bad.size:
            raise ValueError(
                f"`{name}` must hold integers. Received: {name} holding "
                f"{bad.flat[0].item()!r}"
            )
    if name.endswith("_padding_mask"):
        bad = values[(values != 0) & (values != 1)]
        if bad.size:
            raise ValueError(
                f"`{name}` must hold 0 (padding) or 1 (token). "
                f"Received: {name} holding {bad.flat[0].item()!r}"
            )
        return
    bad = values[(values < 0) | (values >= vocabulary_size)]
    if bad.size:
        raise ValueError(
            f"`{name}` must hold token ids in [0, vocabulary_size="
            f"{vocabulary_size}). Received: {name} holding "
            f"{bad.flat[0].item()!r}"
        )
