"""Runs `collab-keras ARGS` in a process where TensorFlow cannot be imported.

    python -m tests.without_tensorflow train nmt --data DIR --output-dir RUN ...

An import hook placed first on `sys.meta_path` answers every import of
`tensorflow` and `tensorflow_text` (and their submodules) with an ImportError,
as on a machine without them, although they are installed here: a code path
that needs TensorFlow fails instead of passing by chance. At the end the
process prints `TENSORFLOW_LOADED=<bool>` (whether any such module got
loaded all the same). With COLLAB_KERAS_STOP_AFTER_CHECKPOINTS=N the run is
interrupted (as by Ctrl-C) right after its N-th checkpoint.
"""

import importlib.machinery
import os
import sys

BLOCKED = ("tensorflow", "tensorflow_text")


class BlockTensorFlow:
    """A meta-path finder whose modules fail to load with an ImportError."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ImportError(f"{spec.name} is blocked in this process (tests/without_tensorflow.py)")

    def exec_module(self, module):
        raise ImportError(f"{module.__name__} is blocked in this process")


def block():
    """Blocks TensorFlow for the rest of the process."""
    sys.meta_path.insert(0, BlockTensorFlow())


def tensorflow_loaded():
    return any(name.split(".")[0] in BLOCKED for name in sys.modules)


def main(argv):
    block()
    from collab_keras.training import checkpoint
    from collab_keras.training import cli

    stop_after = int(os.environ.get("COLLAB_KERAS_STOP_AFTER_CHECKPOINTS", "0"))
    if stop_after:
        save, saved = checkpoint.save, []

        def save_then_stop(*args, **kwargs):
            save(*args, **kwargs)
            saved.append(True)
            if len(saved) == stop_after:
                raise KeyboardInterrupt

        checkpoint.save = save_then_stop
    try:
        cli.main(argv)
    finally:
        print(f"TENSORFLOW_LOADED={tensorflow_loaded()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
