"""Spatial anomaly per slot: a value beyond the range seen so far (NAB's HTM wrapper), in fixed arrays.

NAB's Numenta detector sets its final score to 1 when a value leaves the running [min, max] by more
than ``tolerance`` of that range (``SPATIAL_TOLERANCE`` = 0.05 in nab/detectors/numenta). It needs
no look-ahead and costs three numbers per slot, so it pairs with ARTime, whose discretisation clips
values beyond its calibrated range and so cannot see them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from models.state import SlotState, SlotStateful, as_batch


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _spatial_loop(
    slots: np.ndarray, x: np.ndarray, tolerance: float, warmup: int,
    lo: np.ndarray, hi: np.ndarray, count: np.ndarray, out: np.ndarray,
) -> int:  # fmt: skip
    dropped = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        v = x[i]
        if not math.isfinite(v):
            out[i] = np.nan
            dropped += 1
            continue
        out[i] = 0.0
        if count[s] == 0:
            lo[s] = v
            hi[s] = v
        else:
            if hi[s] > lo[s] and count[s] >= warmup:
                # Scaled before subtracting so huge finite ranges do not overflow to inf.
                tol = hi[s] * tolerance - lo[s] * tolerance
                if v > hi[s] + tol or v < lo[s] - tol:
                    out[i] = 1.0
            lo[s] = min(lo[s], v)
            hi[s] = max(hi[s], v)
        count[s] += 1
    return dropped


class SpatialAnomaly(SlotStateful):
    """1.0 when a value leaves its slot's running range by more than ``tolerance`` of it, else 0.

    The first ``warmup`` values of a slot only set the range (score 0), like a detector's
    calibration rows. Non-finite values score NaN and are not learned (counted in ``dropped``).
    """

    kind = "spatial_anomaly"

    def __init__(self, tolerance: float = 0.05, warmup: int = 0, n_slots: int = 1) -> None:
        if not (math.isfinite(tolerance) and tolerance >= 0.0) or warmup < 0:
            raise ValueError(
                f"tolerance must be a finite number >= 0 and warmup >= 0, got {tolerance}, {warmup}"
            )
        self.tolerance = tolerance
        self.warmup = warmup
        self.dropped = 0
        self.state = SlotState(
            self.kind,
            {"tolerance": tolerance, "warmup": warmup},
            {
                "lo": np.zeros(n_slots),
                "hi": np.zeros(n_slots),
                "count": np.zeros(n_slots, np.int64),
            },
        )

    def score_learn_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        s, v, _t = as_batch(slots, x, ts)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        out = np.empty(s.shape[0])
        st = self.state
        # a range near +-1e308 plus its tolerance is inf: no anomaly past it, as compiled (the
        # plain-Python loop under NUMBA_DISABLE_JIT=1 would warn of the overflow)
        with np.errstate(over="ignore"):
            self.dropped += _spatial_loop(
                s, v, self.tolerance, self.warmup, st["lo"], st["hi"], st["count"], out
            )
        return out

    def score_learn_one(self, x: float, slot: int = 0) -> float:
        return float(self.score_learn_many([slot], [x])[0])
