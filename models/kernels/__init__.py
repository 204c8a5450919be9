"""Numba anomaly-detection kernels with River-like detector classes over per-slot state."""

from models.kernels.changepoint import Cusum, PageHinkley
from models.kernels.hst import HalfSpaceTrees
from models.kernels.residual import CrossSignalResidual
from models.kernels.zscore import RobustZScore

__all__ = ["CrossSignalResidual", "Cusum", "HalfSpaceTrees", "PageHinkley", "RobustZScore"]
