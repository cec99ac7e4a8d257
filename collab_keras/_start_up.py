"""A quiet start for the `collab-keras` command.

Importing TensorFlow 2.21 writes absl INFO lines to stderr ("oneDNN custom
operations are on", "Could not find cuda drivers", each after absl's banner
"WARNING: All log messages before absl::InitializeLog() is called are written
to STDERR") before it reads `TF_CPP_MIN_LOG_LEVEL`, so that variable alone
does not keep them off the command's usage text. And the command's module is
imported after the `collab_keras` package, whose Keras import loads
TensorFlow. So `collab_keras/__init__.py` calls `quiet_command_start_up()`
before anything else.
"""

import contextlib
import os
import re
import sys
import threading

# What TensorFlow writes while it loads, below the level the command sets:
# absl INFO/WARNING lines ("I0000 00:00:...", "W0000 ..."), absl's banner,
# the second line of TensorFlow's CPU-instructions notice, and the ERROR line
# of a machine with CUDA libraries but no GPU ("E0000 ... failed call to
# cuInit: ..."): the command runs on the CPU then, as it says elsewhere.
_START_UP_LINE = re.compile(
    rb"(WARNING: All log messages before absl::InitializeLog"
    rb"|[IW]\d{4} |E\d{4} .*cuInit|To enable the following instructions)"
)


def quiet_command_start_up():
    """In the `collab-keras` command, imports TensorFlow without its start-up
    lines.

    Does nothing in any other process, when TensorFlow is already imported,
    or when the user has set `TF_CPP_MIN_LOG_LEVEL` (their level stands and
    TensorFlow logs as they asked). Otherwise sets `TF_CPP_MIN_LOG_LEVEL=2`
    (INFO and WARNING off, errors on) and, while TensorFlow loads, drops the
    INFO and WARNING lines it writes before reading that level; every other
    line written to stderr meanwhile passes through as it comes.
    """
    if (
        not _is_command()
        or "tensorflow" in sys.modules
        or "TF_CPP_MIN_LOG_LEVEL" in os.environ
    ):
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with _stderr_without_start_up_lines():
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass  # The command's own imports report it.


def _is_command():
    """Whether this process is `collab-keras ...` (pip's script is
    `sys.argv[0]`; `.exe` or `-script.py` on Windows) or
    `python -m collab_keras.training[...] ...`."""
    script = os.path.basename((getattr(sys, "argv", None) or [""])[0])
    if re.sub(r"(-script\.pyw?|\.exe)$", "", script) == "collab-keras":
        return True
    argv = getattr(sys, "orig_argv", [])
    return any(
        flag == "-m" and module.startswith("collab_keras.training")
        for flag, module in zip(argv, argv[1:])
    )


@contextlib.contextmanager
def _stderr_without_start_up_lines():
    """Routes file descriptor 2 through a thread that drops start-up lines."""
    sys.stderr.flush()
    stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not _START_UP_LINE.match(line):
                    os.write(stderr, line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(stderr, 2)  # Closes the pipe's last write end: forward() ends.
        thread.join()
        os.close(stderr)
