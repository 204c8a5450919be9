"""Cross-signal residual detector: online ridge regression per vehicle model, z-scored residuals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from models.state import SlotState, SlotStateful, as_batch


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _ridge_loop(
    groups: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    learn: bool,
    forgetting: float,
    alpha: float,
    warmup: int,
    p: np.ndarray,
    w: np.ndarray,
    res_var: np.ndarray,
    count: np.ndarray,
    phi: np.ndarray,
    px: np.ndarray,
    out: np.ndarray,
) -> int:
    dropped = 0
    d = phi.shape[0]
    for i in range(groups.shape[0]):
        g = groups[i]
        ok = math.isfinite(y[i])
        for j in range(d - 1):
            ok = ok and math.isfinite(x[i, j])
        if not ok:
            out[i] = np.nan
            dropped += 1
            continue
        # Intercept first, then the features.
        phi[0] = 1.0
        for j in range(d - 1):
            phi[j + 1] = x[i, j]
        pred = 0.0
        for j in range(d):
            pred += w[g, j] * phi[j]
        r = y[i] - pred
        c = count[g]
        sd = math.sqrt(res_var[g])
        out[i] = 0.0 if c < warmup else r / max(sd, 1e-9 * (1.0 + abs(pred)))
        if not learn:
            continue
        # Recursive least squares; with P0 = I/lambda and forgetting 1 this is exact ridge.
        denom = forgetting
        for j in range(d):
            acc = 0.0
            for k in range(d):
                acc += p[g, j, k] * phi[k]
            px[j] = acc
            denom += phi[j] * acc
        for j in range(d):
            w[g, j] += px[j] / denom * r
        for j in range(d):
            for k in range(d):
                p[g, j, k] = (p[g, j, k] - px[j] * px[k] / denom) / forgetting
        a = max(alpha, 1.0 / (c + 1.0))
        res_var[g] = (1.0 - a) * res_var[g] + a * r * r
        count[g] = c + 1
    return dropped


class CrossSignalResidual(SlotStateful):
    """Predicts one signal from others (e.g. coolant temperature from load and time since start).

    One online ridge regression (recursive least squares, penalty ``lam``, optional
    ``forgetting`` < 1 to track slow change) per slot = vehicle model, learned from normal
    driving with ``learn_many``; ``score_many`` returns the residual in units of that model's
    residual sd (EWMA with weight ``alpha``), 0 until ``warmup`` samples were learned.
    """

    kind = "cross_signal_residual"

    def __init__(
        self,
        n_features: int,
        lam: float = 1.0,
        forgetting: float = 1.0,
        alpha: float = 0.01,
        warmup: int = 30,
        n_slots: int = 1,
    ) -> None:
        if lam <= 0 or not 0 < forgetting <= 1:
            raise ValueError(f"need lam > 0 and 0 < forgetting <= 1, got {lam}, {forgetting}")
        self.n_features = n_features
        self.lam = lam
        self.forgetting = forgetting
        self.alpha = alpha
        self.warmup = warmup
        self.dropped = 0
        d = n_features + 1
        self.state = SlotState(
            self.kind,
            {"n_features": n_features, "lam": lam, "forgetting": forgetting,
             "alpha": alpha, "warmup": warmup},
            {
                "p": np.tile(np.eye(d) / lam, (n_slots, 1, 1)),
                "w": np.zeros((n_slots, d)),
                "res_var": np.zeros(n_slots),
                "count": np.zeros(n_slots, np.int64),
            },
        )  # fmt: skip
        self._phi = np.zeros(d)
        self._px = np.zeros(d)

    def _run(self, slots: Any, x: Any, y: Any, learn: bool) -> np.ndarray:
        s, xv, _t = as_batch(slots, x, n_features=self.n_features)
        yv = np.ascontiguousarray(y, np.float64).reshape(-1)
        if yv.shape[0] != s.shape[0]:
            raise ValueError(f"batch: {s.shape[0]} slots but {yv.shape[0]} targets")
        if s.size:
            have = self.state.n_slots
            self.state.ensure(int(s.max()) + 1)
            # New groups start from the ridge prior P = I/lambda, not zeros.
            self.state["p"][have:] = np.eye(self.n_features + 1) / self.lam
        out = np.empty(s.shape[0])
        st = self.state
        self.dropped += _ridge_loop(
            s, xv, yv, learn, self.forgetting, self.alpha, self.warmup,
            st["p"], st["w"], st["res_var"], st["count"], self._phi, self._px, out,
        )  # fmt: skip
        return out

    def score_learn_many(self, slots: Any, x: Any, y: Any) -> np.ndarray:
        return self._run(slots, x, y, True)

    def score_many(self, slots: Any, x: Any, y: Any) -> np.ndarray:
        return self._run(slots, x, y, False)

    def learn_many(self, slots: Any, x: Any, y: Any) -> None:
        self._run(slots, x, y, True)

    def learn_one(self, x: Any, y: float, slot: int = 0) -> None:
        self._run([slot], np.asarray(x, np.float64).reshape(1, -1), [y], True)

    def score_one(self, x: Any, y: float, slot: int = 0) -> float:
        return float(self._run([slot], np.asarray(x, np.float64).reshape(1, -1), [y], False)[0])

    def coef(self, slot: int = 0) -> np.ndarray:
        """(intercept, weights...) of one slot's regression."""
        return self.state["w"][slot].copy()
