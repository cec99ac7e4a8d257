"""`collab-keras` starts without TensorFlow's start-up lines (subprocesses)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
# What TensorFlow 2.21 writes to stderr while it loads, whatever
# TF_CPP_MIN_LOG_LEVEL says (see collab_keras/_start_up.py).
START_UP = ("absl::InitializeLog", "I0000", "oneDNN", "cuda drivers")


def _run(args, level=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    env["KERAS_BACKEND"] = "tensorflow"
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )


def test_no_arguments_prints_only_the_usage():
    result = _run(["-m", "collab_keras.training"])
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: collab-keras ")
    assert not any(noise in result.stderr for noise in START_UP), result.stderr


def test_help_prints_only_the_usage():
    result = _run(["-m", "collab_keras.training", "--help"])
    assert result.returncode == 0
    assert result.stdout.startswith("usage: collab-keras ")
    assert result.stderr == ""


# As pip's `collab-keras` script: `sys.argv[0]` is the script's path. Lines
# written to stderr while TensorFlow loads pass, but for its INFO/WARNING
# start-up lines; a level the user set is kept; a library import (any other
# program) is left alone.
PROGRAM = """
import os, sys
if sys.argv[1] == "command":
    sys.argv[0] = os.path.join("bin", "collab-keras")
import collab_keras
from collab_keras._start_up import _stderr_without_start_up_lines
with _stderr_without_start_up_lines():
    os.write(2, b"I0000 00:00:1.5 1 port.cc:153] noise\\nW0000 noise\\n"
                b"E0000 00:00:1.5 1 cuda_executor.cc:1228] INTERNAL: CUDA error: "
                b"Failed call to cuInit: UNKNOWN ERROR (303)\\n"
                b"E0000 00:00:1.5 1 x.cc:1] an error\\nother line\\n")
    print("python line", file=sys.stderr)
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
"""


@pytest.mark.parametrize(
    "process,level,expected_level",
    # A library import leaves the level to others (JAX sets 1 if unset).
    [("command", None, "2"), ("command", "0", "0"), ("library", None, None)],
)
def test_command_quiets_only_what_the_user_left_unset(
    process, level, expected_level
):
    result = _run(["-c", PROGRAM, process], level=level)
    assert result.returncode == 0, result.stderr
    if expected_level is None:
        assert result.stdout != "2\n"
    else:
        assert result.stdout == expected_level + "\n"
    kept = "E0000 00:00:1.5 1 x.cc:1] an error\nother line\npython line\n"
    assert result.stderr.endswith(kept)
    if process == "command" and level is None:
        assert result.stderr == kept
    else:  # TensorFlow logs as it does without collab-keras.
        assert "absl::InitializeLog" in result.stderr
