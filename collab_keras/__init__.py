"""collab_keras: collaborative multi-head attention for Keras 3."""

import os

# The model zoo and the training package live in the checkout's top-level
# `models/` and `training/` folders and are installed as
# `collab_keras.models` and `collab_keras.training`. In a source checkout
# (this folder beside `setup.cfg`) look for those subpackages there too, so
# that `import collab_keras.models` works from the repository root whatever
# the install (editable, non-editable, none).
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_checkout, "setup.cfg")) and os.path.isdir(
    os.path.join(_checkout, "models")
):
    __path__.append(_checkout)
del _checkout

# The `collab-keras` command (collab_keras.training.cli) imports this package
# before its own module, and Keras (imported below) loads TensorFlow, which
# writes its start-up lines while it loads: the command's start-up filter
# must be in place first. It lives on this floor (no import of the training
# package) and does nothing in any other process.
from collab_keras._start_up import quiet_command_start_up  # noqa: E402

quiet_command_start_up()
del quiet_command_start_up

from collab_keras import analysis  # noqa: E402
from collab_keras import initializers  # noqa: E402
from collab_keras import layers  # noqa: E402
from collab_keras import reparametrization  # noqa: E402
from collab_keras.layers import CollaborativeAttention  # noqa: E402
from collab_keras.reparametrization import reparametrize  # noqa: E402

__version__ = "0.1.0"
