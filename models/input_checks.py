"""Input validation shared by the model builders: clear errors early."""

from keras import backend


def check_inputs(inputs, specs):
    """Checks the dict `inputs` against `specs`.

    Args:
        inputs: dict of tensors (or a single tensor for one-input models).
        specs: dict `name -> (kind, rank, max_length)`: `kind` is `"int"`
            (integer ids), `"mask"` (integer, bool or float 0/1) or `"float"`;
            `max_length` (or `None`) bounds axis 1, with the name of the
            argument that sets it: `(value, "max_sequence_length")`.

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
        dtype = backend.standardize_dtype(x.dtype)
        if kind == "int" and "int" not in dtype:
            raise ValueError(
                f"Input `{name}` must hold integer token ids. "
                f"Received: {name}.dtype={dtype}"
            )
        if kind == "float" and "float" not in dtype:
            raise ValueError(
                f"Input `{name}` must be floating point. "
                f"Received: {name}.dtype={dtype}"
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
