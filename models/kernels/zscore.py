"""Robust streaming z-score: EWMA mean and variance with Huber-clipped updates, per slot."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from models.state import SlotState, SlotStateful, as_batch


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _zscore_loop(
    slots: np.ndarray,
    x: np.ndarray,
    ts: np.ndarray,
    learn: bool,
    alpha: float,
    clip: float,
    warmup: int,
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    last_ts: np.ndarray,
    out: np.ndarray,
) -> int:
    dropped = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        v = x[i]
        # NaN/inf values and samples older than the slot's last one are dropped and counted.
        if not math.isfinite(v) or ts[i] < last_ts[s]:
            out[i] = np.nan
            dropped += 1
            continue
        c = count[s]
        m = mean[s]
        r = v - m
        sd = math.sqrt(var[s])
        # A flat signal has sd == 0: a floor relative to the level keeps the first step finite.
        floor = 1e-9 * (1.0 + abs(m))
        out[i] = 0.0 if c < warmup else r / max(sd, floor)
        if not learn:
            continue
        last_ts[s] = ts[i]
        if c == 0:
            mean[s] = v
            var[s] = 0.0
        else:
            # Cumulative average first (no start-up bias), then a fixed forgetting factor.
            a = max(alpha, 1.0 / (c + 1.0))
            if c >= warmup:
                lim = clip * max(sd, floor)
                r = min(max(r, -lim), lim)  # Huber: one outlier moves the baseline by <= clip sd
            mean[s] = m + a * r
            var[s] = (1.0 - a) * (var[s] + a * r * r)
        count[s] = c + 1
    return dropped


class RobustZScore(SlotStateful):
    """Streaming z-score of each slot's signal against its own EWMA baseline.

    ``alpha`` is the EWMA weight of a new sample; after ``warmup`` samples every update is clipped
    to ``clip`` standard deviations, so a spike barely moves the baseline (a level shift still does,
    at ``clip`` sd per sample). Scores are signed z; 0 during warm-up; NaN for dropped samples.
    """

    kind = "robust_zscore"

    def __init__(
        self, alpha: float = 0.01, clip: float = 3.0, warmup: int = 30, n_slots: int = 1
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if clip <= 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        self.alpha = alpha
        self.clip = clip
        self.warmup = warmup
        self.n_slots = n_slots
        self.dropped = 0
        self.state = SlotState(
            self.kind,
            {"alpha": alpha, "clip": clip, "warmup": warmup},
            {
                "mean": np.zeros(n_slots),
                "var": np.zeros(n_slots),
                "count": np.zeros(n_slots, np.int64),
                "last_ts": np.full(n_slots, -np.inf),
            },
            fill={"last_ts": -np.inf},
        )

    def _run(self, slots: Any, x: Any, ts: Any, learn: bool) -> np.ndarray:
        s, v, t = as_batch(slots, x, ts)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        out = np.empty(s.shape[0])
        st = self.state
        self.dropped += _zscore_loop(
            s, v, t, learn, self.alpha, self.clip, self.warmup,
            st["mean"], st["var"], st["count"], st["last_ts"], out,
        )  # fmt: skip
        return out

    def score_learn_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        """Score each sample against its slot's state, then learn it (in batch order)."""
        return self._run(slots, x, ts, True)

    def score_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        return self._run(slots, x, ts, False)

    def learn_many(self, slots: Any, x: Any, ts: Any = None) -> None:
        self._run(slots, x, ts, True)

    def learn_one(self, x: float, slot: int = 0, ts: float = 0.0) -> None:
        self._run([slot], [x], [ts], True)

    def score_one(self, x: float, slot: int = 0) -> float:
        return float(self._run([slot], [x], [np.inf], False)[0])


def zscore_numpy(x: np.ndarray, alpha: float, clip: float, warmup: int) -> np.ndarray:
    """Vectorised NumPy baseline: ``x`` is (steps, slots), every slot updated at once per step."""
    steps, n = x.shape
    mean = np.zeros(n)
    var = np.zeros(n)
    out = np.empty_like(x)
    for t in range(steps):
        v = x[t]
        if t == 0:
            out[t] = 0.0
            mean[:] = v
            continue
        r = v - mean
        sd = np.sqrt(var)
        floor = 1e-9 * (1.0 + np.abs(mean))
        sdf = np.maximum(sd, floor)
        out[t] = 0.0 if t < warmup else r / sdf
        a = max(alpha, 1.0 / (t + 1.0))
        if t >= warmup:
            r = np.clip(r, -clip * sdf, clip * sdf)
        mean += a * r
        var = (1.0 - a) * (var + a * r * r)
    return out
