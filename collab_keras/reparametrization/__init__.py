"""Converting multi-head attention into collaborative attention."""

from collab_keras.reparametrization.calibration import HeldOutStatistics
from collab_keras.reparametrization.calibration import LogitStatistics
from collab_keras.reparametrization.cp_decomposition import cp_decompose_heads
from collab_keras.reparametrization.cp_decomposition import weighted_relative_error
from collab_keras.reparametrization.reparametrize import reparametrize
