"""Input checks shared by the zoo: clear errors early.

Model inputs are checked for rank and length whenever shapes are known;
values (integer dtype, token ids inside `[0, vocabulary_size)`) only in eager
calls on concrete tensors.
Inside compiled graphs (`fit`, `predict`, `tf.function`, `jit_compile`)
Keras has already cast the inputs to the dtype of the `keras.Input`s (under
`tf.distribute` it builds the model from a float64 batch), so a dtype
check there would reject valid training, and values are not known.
Constructor arguments are checked by `collab_keras.argument_checks`.
"""

import numpy as np
from keras import backend


def concrete_value(x):
    """`x` as a numpy array when it holds values (eager), else `None`."""
    if isinstance(x, (np.ndarray, np.generic, list, tuple)):
        return np.asarray(x)
    if backend.is_keras_tensor(x):
        return None
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly() or not hasattr(x, "numpy"):
            return None
        return x.numpy()
    if backend.backend() == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
        return np.asarray(x)
    if backend.backend() == "torch":
        import torch

        if torch.compiler.is_compiling() or x.device.type == "meta":
            return None
        return x.detach().cpu().numpy()
    return None


def check_inputs(inputs, specs):
    """Checks the dict `inputs` against `specs`.

    Args:
        inputs: dict of tensors (or a single tensor for one-input models).
        specs: dict `name -> (kind, rank, max_length)`: `kind` is `"int"`
            (integer ids, or `("int", limit, "argument")` to also bound the
            values by `limit`, the size set by `argument`), `"mask"` or
            `"float"`; `max_length` (or `None`) bounds axis 1, with the
            name of the argument that sets it: `(value, "argument")`.
            Axis 1 of every rank >= 2 input with a `"int"`/`"mask"` kind
            must agree.

    Raises:
        ValueError: naming the input and what was received.
    """
    if not isinstance(inputs, dict):
        if len(specs) != 1:
            raise ValueError(
                f"Inputs must be a dict with keys {sorted(specs)}. "
                f"Received: inputs of type {type(inputs).__name__}"
            )
        inputs = {next(iter(specs)): inputs}
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise ValueError(
            f"Missing inputs {missing}; expected keys {sorted(specs)}. "
            f"Received: keys {sorted(inputs)}"
        )
    lengths = {}
    for name, (kind, rank, max_length) in specs.items():
        x = inputs[name]
        if x is None:
            continue
        shape = tuple(x.shape)
        if len(shape) != rank:
            raise ValueError(
                f"Input `{name}` must have rank {rank}. "
                f"Received: {name}.shape={shape}"
            )
        if max_length is not None:
            limit, argument = max_length
            length = shape[1]
            if length is not None and length > limit:
                raise ValueError(
                    f"Input `{name}` is longer than the position table "
                    f"(`{argument}={limit}`). "
                    f"Received: {name}.shape={shape}"
                )
        if isinstance(kind, tuple) or kind == "mask":
            lengths[name] = shape[:2]
        value = concrete_value(x)
        if value is None:
            continue  # symbolic: Keras casts to the `keras.Input` dtypes.
        dtype = backend.standardize_dtype(value.dtype)
        if isinstance(kind, tuple) or kind == "int":
            if "int" not in dtype:
                raise TypeError(
                    f"Input `{name}` must hold integer token ids. "
                    f"Received: {name}.dtype={dtype}"
                )
        if isinstance(kind, tuple) and value.size:
            _, limit, argument = kind
            low, high = int(value.min()), int(value.max())
            if low < 0 or high >= limit:
                raise ValueError(
                    f"Input `{name}` must hold ids in [0, {argument}={limit}). "
                    f"Received: {name} with values in [{low}, {high}]"
                )
        if kind == "float" and "float" not in dtype and "int" not in dtype:
            raise TypeError(
                f"Input `{name}` must be a float or integer image tensor. "
                f"Received: {name}.dtype={dtype}"
            )
    shapes = {s for s in lengths.values() if None not in s}
    if len(shapes) > 1:
        received = ", ".join(f"{k}.shape={v}" for k, v in lengths.items())
        raise ValueError(
            f"Inputs {sorted(lengths)} must share (batch, length). "
            f"Received: {received}"
        )
