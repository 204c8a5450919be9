"""The exported RUL model: run with onnxruntime on numba features, plus the NASA scoring function."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import ConfigError
from models.rul.features import N_PER_SENSOR, smooth_features, window_features

MODEL_PATH = Path(__file__).with_name("fd001_rul.onnx")
RUL_CAP = 125.0  # piecewise-linear target as in Heimes 2008 / Zheng 2017 (125 customary for FD001)
WINDOW = 30
BASELINE = 20
# Smoothed features (issue 20): EWMA factors and the long slope's window, picked on the tuning CV.
FAST, SLOW, LONG_WINDOW = 0.3, 0.1, 80


def rul_features(unit: np.ndarray, sensors: np.ndarray) -> np.ndarray:
    """The shipped model's input: window mean/std/slope/drift (not the raw last value: noise),
    smoothed levels, long slopes, cycles seen. float64 (n, m * 8 + 1), causal per unit."""
    w = window_features(unit, sensors, WINDOW, BASELINE)
    m = w.shape[1] // N_PER_SENSOR
    keep = [c for c in range(w.shape[1]) if c >= m * N_PER_SENSOR or c % N_PER_SENSOR != 0]
    sm = smooth_features(unit, sensors, FAST, SLOW, LONG_WINDOW, BASELINE)
    return np.hstack([w[:, keep[:-1]], sm, w[:, -1:]])


def n_features(n_sensors: int) -> int:
    return n_sensors * 8 + 1


def nasa_score(pred: np.ndarray, true: np.ndarray) -> float:
    """PHM08 asymmetric score: late predictions (pred > true) cost more (exp(d/10)) than early (exp(-d/13))."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    d = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sqrt(np.mean(d * d))) if len(d) else float("nan")


class RulModel:
    """An ONNX regressor from features to capped RUL; ``predict`` clips to ``[0, cap]``."""

    def __init__(self, path: Path | str = MODEL_PATH, cap: float = RUL_CAP) -> None:
        try:
            import onnxruntime as ort
        except ModuleNotFoundError as err:  # pragma: no cover - onnxruntime is in the models extra
            raise ConfigError(
                "the RUL model needs onnxruntime (pip install carpulse[models])"
            ) from err
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"RUL model {p} does not exist; build it with `python -m models.rul.train`"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # the machine is shared; one core scores a fleet anyway
        self.session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.cap = cap

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        (y,) = self.session.run(None, {self.input_name: x})[:1]
        return np.clip(np.asarray(y, dtype=np.float64).reshape(-1), 0.0, self.cap)

    def predict_rows(self, unit: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        """RUL estimate after every row (each row sees its unit's history up to it)."""
        return self.predict_features(rul_features(unit, sensors))
