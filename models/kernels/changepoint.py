"""Level-shift and drift detectors per slot: Page-Hinkley (as River's) and two-sided CUSUM."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from models.state import SlotState, SlotStateful, as_batch

_MODES = {"up": 1, "down": 2, "both": 3}


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _page_hinkley_loop(
    slots: np.ndarray,
    x: np.ndarray,
    min_instances: int,
    delta: float,
    threshold: float,
    alpha: float,
    mode: int,
    n: np.ndarray,
    mean: np.ndarray,
    sum_inc: np.ndarray,
    sum_dec: np.ndarray,
    min_inc: np.ndarray,
    max_dec: np.ndarray,
    drift: np.ndarray,
    out: np.ndarray,
) -> int:
    dropped = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        v = x[i]
        if not math.isfinite(v):
            out[i] = np.nan
            dropped += 1
            continue
        if drift[s]:
            # River resets on the update after a detection; the same here.
            n[s] = 0
            mean[s] = 0.0
            sum_inc[s] = 0.0
            sum_dec[s] = 0.0
            min_inc[s] = np.inf
            max_dec[s] = -1.0
            drift[s] = False
        n[s] += 1
        mean[s] += (1.0 / n[s]) * (v - mean[s])
        dev = v - mean[s]
        sum_inc[s] = alpha * sum_inc[s] + dev - delta
        sum_dec[s] = alpha * sum_dec[s] + dev + delta
        if sum_inc[s] < min_inc[s]:
            min_inc[s] = sum_inc[s]
        if sum_dec[s] > max_dec[s]:
            max_dec[s] = sum_dec[s]
        stat = 0.0
        if n[s] >= min_instances:
            up = sum_inc[s] - min_inc[s]
            down = max_dec[s] - sum_dec[s]
            if mode == 1:
                stat = up
            elif mode == 2:
                stat = down
            else:
                stat = max(up, down)
            drift[s] = stat > threshold
        out[i] = stat / threshold
    return dropped


class PageHinkley(SlotStateful):
    """Page-Hinkley test per slot, the same recursion and reset as River's ``drift.PageHinkley``.

    ``update_many`` returns the test statistic divided by ``threshold``: > 1 means drift detected
    at that sample (the slot then resets on its next sample, as River does).
    """

    kind = "page_hinkley"

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
        n_slots: int = 1,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"Invalid 'mode'. Valid values are: {sorted(_MODES)}")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self.dropped = 0
        self.state = SlotState(
            self.kind,
            {"min_instances": min_instances, "delta": delta, "threshold": threshold,
             "alpha": alpha, "mode": mode},
            {
                "n": np.zeros(n_slots, np.int64),
                "mean": np.zeros(n_slots),
                "sum_inc": np.zeros(n_slots),
                "sum_dec": np.zeros(n_slots),
                "min_inc": np.full(n_slots, np.inf),
                "max_dec": np.full(n_slots, -1.0),
                "drift": np.zeros(n_slots, np.bool_),
            },
            fill={"min_inc": np.inf, "max_dec": -1.0},
        )  # fmt: skip

    def update_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        """Feed a micro-batch; returns statistic/threshold per sample (> 1: drift)."""
        s, v, _t = as_batch(slots, x, ts)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        out = np.empty(s.shape[0])
        st = self.state
        self.dropped += _page_hinkley_loop(
            s, v, self.min_instances, self.delta, self.threshold, self.alpha, _MODES[self.mode],
            st["n"], st["mean"], st["sum_inc"], st["sum_dec"], st["min_inc"], st["max_dec"],
            st["drift"], out,
        )  # fmt: skip
        return out

    score_learn_many = update_many

    def update(self, x: float, slot: int = 0) -> float:
        return float(self.update_many([slot], [x])[0])

    def drift_detected(self, slot: int = 0) -> bool:
        return bool(slot < self.state.n_slots and self.state["drift"][slot])


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _cusum_loop(
    slots: np.ndarray,
    x: np.ndarray,
    learn: bool,
    alpha: float,
    k: float,
    h: float,
    warmup: int,
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    g_pos: np.ndarray,
    g_neg: np.ndarray,
    out: np.ndarray,
) -> int:
    dropped = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        v = x[i]
        if not math.isfinite(v):
            out[i] = np.nan
            dropped += 1
            continue
        c = count[s]
        m = mean[s]
        sd = max(math.sqrt(var[s]), 1e-9 * (1.0 + abs(m)))
        z = (v - m) / sd
        gp = g_pos[s]
        gn = g_neg[s]
        if c >= warmup:
            gp = max(0.0, gp + z - k)
            gn = max(0.0, gn - z - k)
        stat = max(gp, gn) / h
        out[i] = stat
        if not learn:
            continue
        if stat > 1.0:
            # Alarm: restart both sums so the next shift is reported afresh.
            gp = 0.0
            gn = 0.0
        g_pos[s] = gp
        g_neg[s] = gn
        # The baseline follows slowly, with updates clipped at k + h sd so one spike cannot drag it.
        r = v - m
        if c == 0:
            mean[s] = v
            var[s] = 0.0
        else:
            a = max(alpha, 1.0 / (c + 1.0))
            if c >= warmup:
                lim = (k + h) * sd
                r = min(max(r, -lim), lim)
            mean[s] = m + a * r
            var[s] = (1.0 - a) * (var[s] + a * r * r)
        count[s] = c + 1
    return dropped


class Cusum(SlotStateful):
    """Two-sided tabular CUSUM on the z-score against a slow EWMA baseline, per slot.

    ``k`` is the allowance (half the shift to detect, in sd), ``h`` the decision interval: the
    score is max(g+, g-)/h, so > 1 is an alarm (and the sums restart).
    """

    kind = "cusum"

    def __init__(
        self, alpha: float = 0.005, k: float = 0.5, h: float = 5.0, warmup: int = 30,
        n_slots: int = 1,
    ) -> None:  # fmt: skip
        if h <= 0 or k < 0:
            raise ValueError(f"need h > 0 and k >= 0, got h={h}, k={k}")
        self.alpha = alpha
        self.k = k
        self.h = h
        self.warmup = warmup
        self.dropped = 0
        self.state = SlotState(
            self.kind,
            {"alpha": alpha, "k": k, "h": h, "warmup": warmup},
            {
                "mean": np.zeros(n_slots),
                "var": np.zeros(n_slots),
                "count": np.zeros(n_slots, np.int64),
                "g_pos": np.zeros(n_slots),
                "g_neg": np.zeros(n_slots),
            },
        )

    def _run(self, slots: Any, x: Any, learn: bool) -> np.ndarray:
        s, v, _t = as_batch(slots, x)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        out = np.empty(s.shape[0])
        st = self.state
        self.dropped += _cusum_loop(
            s, v, learn, self.alpha, self.k, self.h, self.warmup,
            st["mean"], st["var"], st["count"], st["g_pos"], st["g_neg"], out,
        )  # fmt: skip
        return out

    def score_learn_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        return self._run(slots, x, True)

    def score_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        return self._run(slots, x, False)

    def learn_one(self, x: float, slot: int = 0) -> None:
        self._run([slot], [x], True)

    def score_one(self, x: float, slot: int = 0) -> float:
        return float(self._run([slot], [x], False)[0])
