"""Analysis tools for attention layers."""

from collab_keras.analysis.head_redundancy import head_redundancy
from collab_keras.analysis.plot import plot_head_redundancy
