"""The one implementation of argument checks (collab_keras.argument_checks)."""

import re

import numpy as np
import pytest

from collab_keras.argument_checks import check_bool
from collab_keras.argument_checks import check_float
from collab_keras.argument_checks import check_integer
from collab_keras.argument_checks import check_rate


@pytest.mark.parametrize(
    "check,value,expected",
    [
        (lambda v: check_integer("n", v), 3, 3),
        (lambda v: check_integer("n", v), np.int64(3), 3),
        (lambda v: check_integer("n", v, minimum=0), np.uint8(0), 0),
        (lambda v: check_integer("n", v, minimum=None), -7, -7),
        (lambda v: check_integer("n", v, allow_none=True), None, None),
        (lambda v: check_rate("p", v), np.float32(0.5), 0.5),
        (lambda v: check_rate("p", v), 0, 0.0),
        (lambda v: check_rate("p", v, allow_none=True), None, None),
        (lambda v: check_float("x", v), 0, 0.0),
        (lambda v: check_float("x", v, minimum=-1.0), np.float64(1e9), 1e9),
        (lambda v: check_bool("b", v), np.bool_(True), True),
        (lambda v: check_bool("b", v, allow_none=True), None, None),
        # Keras' MultiHeadAttention test calls use_causal_mask=0 (issue 22).
        (lambda v: check_bool("use_causal_mask", v), 0, False),
        (lambda v: check_bool("b", v), np.int64(1), True),
        (lambda v: check_float("x", v, strict=True), 1e-9, 1e-9),
    ],
)
def test_valid_values_come_back_as_python_types(check, value, expected):
    result = check(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "check,value,message",
    [
        (lambda v: check_integer("n", v), 0,
         "Argument `n` must be a positive integer. Received: n=0"),
        (lambda v: check_integer("n", v), True,
         "Argument `n` must be a positive integer. Received: n=True"),
        (lambda v: check_integer("n", v), 2.0,
         "Argument `n` must be a positive integer. Received: n=2.0"),
        (lambda v: check_integer("n", v), None,
         "Argument `n` must be a positive integer. Received: n=None"),
        (lambda v: check_integer("n", v, minimum=0), -1,
         "Argument `n` must be an integer >= 0. Received: n=-1"),
        (lambda v: check_integer("n", v, 5, allow_none=True), 4,
         "Argument `n` must be an integer >= 5 or None. Received: n=4"),
        (lambda v: check_integer("seed", v, None, allow_none=True), "1",
         "Argument `seed` must be an integer or None. Received: seed='1'"),
        (lambda v: check_integer("n", v), np.float32(2),
         "Argument `n` must be a positive integer. "
         "Received: n=np.float32(2.0)"),
        (lambda v: check_rate("p", v), 1.0,
         "Argument `p` must be a float in [0, 1). Received: p=1.0"),
        (lambda v: check_rate("p", v), False,
         "Argument `p` must be a float in [0, 1). Received: p=False"),
        (lambda v: check_rate("p", v, allow_none=True), float("nan"),
         "Argument `p` must be a float in [0, 1) or None. Received: p=nan"),
        (lambda v: check_float("x", v), -0.5,
         "Argument `x` must be a finite number >= 0. Received: x=-0.5"),
        (lambda v: check_float("x", v), "small",
         "Argument `x` must be a finite number >= 0. Received: x='small'"),
        (lambda v: check_float("x", v), float("inf"),
         "Argument `x` must be a finite number >= 0. Received: x=inf"),
        (lambda v: check_float("x", v, strict=True), 0.0,
         "Argument `x` must be a finite number > 0. Received: x=0.0"),
        (lambda v: check_float("x", v, 0.5, 2.0), 2.0,
         "Argument `x` must be a float in [0.5, 2). Received: x=2.0"),
        (lambda v: check_bool("b", v), 2,
         "Argument `b` must be True or False. Received: b=2"),
        (lambda v: check_bool("b", v, allow_none=True), "false",
         "Argument `b` must be True, False or None. Received: b='false'"),
    ],
)
def test_invalid_values_raise_naming_the_argument(check, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check(value)
