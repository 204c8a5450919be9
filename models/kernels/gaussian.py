"""NAB's own windowed Gaussian detector as a numba kernel: the baseline every NAB score is read against."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from core import kernel_flags


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _mean_std(x: np.ndarray, a: int, b: int) -> tuple[float, float]:
    m = 0.0
    for i in range(a, b):
        m += x[i]
    m /= b - a
    v = 0.0
    for i in range(a, b):
        v += (x[i] - m) * (x[i] - m)
    sd = math.sqrt(v / (b - a))
    # NAB replaces a zero spread by 1e-6 so a flat start still gives finite z.
    return m, sd if sd != 0.0 else 0.000001


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _windowed_gaussian_loop(
    offsets: np.ndarray, x: np.ndarray, window: int, step: int, out: np.ndarray
) -> None:
    for seg in range(offsets.shape[0] - 1):
        lo = offsets[seg]
        hi = offsets[seg + 1]
        mean = 0.0
        std = 1.0
        start = lo  # first row of the window
        end = lo  # one past its last row
        buffered = 0
        for i in range(lo, hi):
            v = x[i]
            score = 0.0
            if end > start:
                z = abs(v - mean) / std
                score = 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))
            out[i] = score
            if end - start < window:
                end += 1
                mean, std = _mean_std(x, start, end)
            else:
                # Full window: slide by `step` rows at once, as NAB's stepBuffer does.
                buffered += 1
                if buffered == step:
                    # NAB drops the oldest `step` values and appends the buffer: with step > window
                    # the new window is the whole buffer.
                    start = min(start + step, end)
                    end += step
                    buffered = 0
                    mean, std = _mean_std(x, start, end)


def windowed_gaussian(
    values: np.ndarray, offsets: np.ndarray | None = None, window: int = 6400, step: int = 100
) -> np.ndarray:
    """Scores of NAB's ``windowedGaussian`` detector, one series per ``offsets`` segment.

    Each score is ``1 - Q(|x - mean| / std)`` against the previous ``window`` values (all of them
    until the window is full, then refreshed every ``step`` rows); the first row scores 0. These
    are NAB's published settings (window 6400, step 100).
    """
    x = np.ascontiguousarray(values, np.float64)
    off = _offsets(x, offsets)
    if window < 1 or step < 1:
        raise ValueError(f"window and step must be >= 1, got {window}, {step}")
    out = np.zeros(x.shape[0])
    _windowed_gaussian_loop(off, x, int(window), int(step), out)
    return out


def _offsets(x: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Segment bounds ``[0, ..., len(x)]``: each series is scored from an empty state."""
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    off = np.array([0, x.shape[0]] if offsets is None else offsets, np.int64)
    if off.ndim != 1 or off.size < 2 or off[0] != 0 or off[-1] != x.shape[0]:
        raise ValueError(f"offsets must run from 0 to {x.shape[0]}, got {off.tolist()[:5]}...")
    if np.any(np.diff(off) < 0):
        raise ValueError("offsets must not decrease")
    return off
