"""collab_keras: collaborative multi-head attention for Keras 3."""

from collab_keras import analysis
from collab_keras import initializers
from collab_keras import layers
from collab_keras import reparametrization
from collab_keras.layers import CollaborativeAttention
from collab_keras.reparametrization import reparametrize

__version__ = "0.1.0"
