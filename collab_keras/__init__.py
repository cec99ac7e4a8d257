"""collab_keras: collaborative multi-head attention for Keras 3."""

from collab_keras import initializers
from collab_keras import layers
from collab_keras.layers import CollaborativeAttention

__version__ = "0.1.0"
