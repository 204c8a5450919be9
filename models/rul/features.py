"""Per-sensor features of run-to-failure series (numba): window level/mean/std/slope/drift, smoothed levels."""

from __future__ import annotations

import numpy as np
from numba import njit

from core import kernel_flags

# Per sensor: last value, window mean, window std, least-squares slope, window mean minus the
# unit's own baseline (engines start with different wear, so drift from the start matters most).
PER_SENSOR = ("last", "mean", "std", "slope", "drift")
N_PER_SENSOR = len(PER_SENSOR)


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _window_features(
    unit: np.ndarray, x: np.ndarray, window: int, baseline: int, out: np.ndarray
) -> None:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    n, m = x.shape
    start = 0  # first row of the current unit
    for i in range(n):
        if i > 0 and unit[i] != unit[i - 1]:
            start = i
        lo = max(start, i - window + 1)
        k = i - lo + 1
        nb = min(baseline, i - start + 1)  # baseline only uses rows seen so far (causal)
        # x positions 0..k-1 centred, for the slope
        tmean = (k - 1) / 2.0
        tvar = 0.0
        for t in range(k):
            tvar += (t - tmean) * (t - tmean)
        for j in range(m):
            s = 0.0
            for r in range(lo, i + 1):
                s += x[r, j]
            mean = s / k
            ss = 0.0
            st = 0.0
            for r in range(lo, i + 1):
                d = x[r, j] - mean
                ss += d * d
                st += (r - lo - tmean) * d
            b = 0.0
            for r in range(start, start + nb):
                b += x[r, j]
            b /= nb
            o = j * 5
            out[i, o] = x[i, j]
            out[i, o + 1] = mean
            out[i, o + 2] = np.sqrt(ss / k)
            out[i, o + 3] = st / tvar if tvar > 0.0 else 0.0
            out[i, o + 4] = mean - b
        out[i, m * 5] = i - start + 1  # cycles seen so far


def window_features(
    unit: np.ndarray, x: np.ndarray, window: int = 30, baseline: int = 20
) -> np.ndarray:
    """Features for every row, using only that unit's rows up to it (causal, like a live engine).

    ``unit`` (n,) groups rows, which must be contiguous per unit and in time order; ``x`` (n, m)
    holds the sensors. Returns float64 (n, m * 5 + 1): per sensor ``PER_SENSOR``, then the number
    of cycles seen.
    """
    u = np.ascontiguousarray(unit, dtype=np.int64)
    xs = np.ascontiguousarray(x, dtype=np.float64)
    if xs.ndim != 2 or u.shape != (xs.shape[0],):
        raise ValueError(f"unit must be (n,) and x (n, m); got {u.shape} and {xs.shape}")
    if window < 1 or baseline < 1:
        raise ValueError(f"window and baseline must be >= 1, got {window} and {baseline}")
    out = np.empty((xs.shape[0], xs.shape[1] * N_PER_SENSOR + 1), dtype=np.float64)
    if len(u):
        _window_features(u, xs, int(window), int(baseline), out)
    return out


def feature_names(sensors: list[str]) -> list[str]:
    return [f"{s}_{f}" for s in sensors for f in PER_SENSOR] + ["cycles"]


# Per sensor: fast and slow exponentially smoothed level, the slow level minus the unit's own
# baseline, and the least-squares slope over a long window (wear is slow; 30 cycles are noisy).
PER_SENSOR_SMOOTH = ("ewm_fast", "ewm_slow", "ewm_drift", "long_slope")
N_PER_SENSOR_SMOOTH = len(PER_SENSOR_SMOOTH)


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _smooth_features(
    unit: np.ndarray,
    x: np.ndarray,
    fast: float,
    slow: float,
    long_window: int,
    baseline: int,
    ef: np.ndarray,
    es: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    n, m = x.shape
    start = 0
    for i in range(n):
        new_unit = i == 0 or unit[i] != unit[i - 1]
        if new_unit:
            start = i
        for j in range(m):
            if new_unit:  # a smoothed level starts at the unit's first value, not at zero
                ef[j] = x[i, j]
                es[j] = x[i, j]
            else:
                ef[j] += fast * (x[i, j] - ef[j])
                es[j] += slow * (x[i, j] - es[j])
        nb = min(baseline, i - start + 1)
        lo = max(start, i - long_window + 1)
        k = i - lo + 1
        tmean = (k - 1) / 2.0
        tvar = 0.0
        for t in range(k):
            tvar += (t - tmean) * (t - tmean)
        for j in range(m):
            b = 0.0
            for r in range(start, start + nb):
                b += x[r, j]
            b /= nb
            s = 0.0
            for r in range(lo, i + 1):
                s += x[r, j]
            mean = s / k
            st = 0.0
            for r in range(lo, i + 1):
                st += (r - lo - tmean) * (x[r, j] - mean)
            o = j * 4
            out[i, o] = ef[j]
            out[i, o + 1] = es[j]
            out[i, o + 2] = es[j] - b
            out[i, o + 3] = st / tvar if tvar > 0.0 else 0.0


def smooth_features(
    unit: np.ndarray,
    x: np.ndarray,
    fast: float = 0.3,
    slow: float = 0.1,
    long_window: int = 80,
    baseline: int = 20,
) -> np.ndarray:
    """Causal smoothed features for every row: float64 (n, m * 4), per sensor ``PER_SENSOR_SMOOTH``.

    Rows must be contiguous per ``unit`` and in time order, as for ``window_features``.
    """
    u = np.ascontiguousarray(unit, dtype=np.int64)
    xs = np.ascontiguousarray(x, dtype=np.float64)
    if xs.ndim != 2 or u.shape != (xs.shape[0],):
        raise ValueError(f"unit must be (n,) and x (n, m); got {u.shape} and {xs.shape}")
    if not (0.0 < fast <= 1.0 and 0.0 < slow <= 1.0):
        raise ValueError(f"smoothing factors must be in (0, 1], got {fast} and {slow}")
    if long_window < 1 or baseline < 1:
        raise ValueError(f"long_window and baseline must be >= 1, got {long_window} and {baseline}")
    m = xs.shape[1]
    out = np.empty((xs.shape[0], m * N_PER_SENSOR_SMOOTH), dtype=np.float64)
    if len(u):
        ef = np.empty(m, dtype=np.float64)
        es = np.empty(m, dtype=np.float64)
        _smooth_features(
            u, xs, float(fast), float(slow), int(long_window), int(baseline), ef, es, out
        )
    return out


def smooth_feature_names(sensors: list[str]) -> list[str]:
    return [f"{s}_{f}" for s in sensors for f in PER_SENSOR_SMOOTH]
