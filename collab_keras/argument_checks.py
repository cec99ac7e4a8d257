"""Argument checks shared by the layers, `reparametrize`, the zoo and training.

Each check returns the value as a plain Python `int`, `float` or `bool` (so
configs stay JSON) or raises a ValueError that names the argument and echoes
the value, e.g. "Argument `num_heads` must be a positive integer. Received:
num_heads=0". numpy scalars (`np.int64(2)`, `np.bool_(True)`) are accepted
wherever Python ones are; `True` and `False` are not numbers here, and
floats are finite (NaN and infinities are refused).
"""

import numbers

import numpy as np


def check_integer(name, value, minimum=1, allow_none=False):
    """`value` as a Python int, or a ValueError naming `name`.

    Args:
        name: Argument name for the message.
        value: Python or numpy integer (bools are refused).
        minimum: Smallest accepted value; `None` accepts any integer.
        allow_none: Whether `None` passes through (and is returned).
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or (minimum is not None and value < minimum)
    ):
        if minimum is None:
            expected = "an integer"
        elif minimum == 1:
            expected = "a positive integer"
        else:
            expected = f"an integer >= {minimum}"
        _fail(name, value, expected + (" or None" if allow_none else ""))
    return int(value)


def check_float(
    name, value, minimum=0.0, below=None, allow_none=False, strict=False
):
    """`value` as a finite Python float in `[minimum, below)` (no upper bound
    when `below` is None; `(minimum, below)` when `strict`), or a ValueError
    naming `name`. NaN and infinities are refused."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or not (minimum < value if strict else minimum <= value)
        or (below is not None and not value < below)
    ):
        if below is None:
            expected = f"a finite number {'>' if strict else '>='} {minimum:g}"
        else:
            expected = f"a float in {'(' if strict else '['}{minimum:g}, {below:g})"
        _fail(name, value, expected + (" or None" if allow_none else ""))
    return float(value)


# How much wider than the heads' concatenated query/key width (`num_heads *
# key_dim`) the shared width may be.
MAX_SHARED_KEY_DIM_FACTOR = 16


def check_shared_key_dim(shared_key_dim, num_heads, key_dim):
    """`shared_key_dim` as a Python int in `[1, 16 * num_heads * key_dim]`,
    or a ValueError saying why.

    The shared query/key projections replace heads of `num_heads * key_dim`
    columns in all; a shared width many times that adds parameters and
    memory (a typo such as 10**6 exhausts memory while building) without
    adding heads.
    """
    shared_key_dim = check_integer("shared_key_dim", shared_key_dim)
    limit = MAX_SHARED_KEY_DIM_FACTOR * num_heads * key_dim
    if shared_key_dim > limit:
        raise ValueError(
            f"Argument `shared_key_dim` must be at most {MAX_SHARED_KEY_DIM_FACTOR} * "
            f"num_heads * key_dim = {limit}: the shared query/key width replaces "
            f"the heads' {num_heads * key_dim} columns, and a far wider one only "
            "adds parameters and memory. Received: "
            f"shared_key_dim={shared_key_dim}"
        )
    return shared_key_dim


def check_rate(name, value, allow_none=False):
    """`value` as a Python float in `[0, 1)` (a dropout rate), or a
    ValueError naming `name`."""
    return check_float(name, value, 0.0, 1.0, allow_none)


def check_bool(name, value, allow_none=False):
    """`value` as a Python bool, or a ValueError naming `name`.

    As Keras' layers read flags by their truth (`MultiHeadAttention` is
    called with `use_causal_mask=0` in Keras' own tests), the integers 0 and
    1 are accepted as False and True; any other value (a string such as
    "false", which Python reads as true) is refused.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)) and not (
        isinstance(value, numbers.Integral) and value in (0, 1)
    ):
        expected = "True, False or None" if allow_none else "True or False"
        _fail(name, value, expected)
    return bool(value)


def _fail(name, value, expected):
    raise ValueError(
        f"Argument `{name}` must be {expected}. Received: {name}={value!r}"
    )
