"""Anomaly likelihood per slot: how unusual a short average of raw scores is against their history."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from models.state import SlotState, SlotStateful, as_batch


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _likelihood_loop(
    slots: np.ndarray,
    raw: np.ndarray,
    long_alpha: float,
    short_alpha: float,
    warmup: int,
    mean: np.ndarray,
    var: np.ndarray,
    short: np.ndarray,
    count: np.ndarray,
    out: np.ndarray,
) -> None:
    for i in range(slots.shape[0]):
        s = slots[i]
        r = raw[i]
        if not math.isfinite(r):
            out[i] = np.nan
            continue
        c = count[s]
        sh = r if c == 0 else short[s] + short_alpha * (r - short[s])
        short[s] = sh
        m = mean[s]
        sd = max(math.sqrt(var[s]), 1e-3)
        if c < warmup:
            out[i] = 0.0
        else:
            # -log10 of the Gaussian tail probability, squashed to [0, 1) without ties at 1.
            tail = 0.5 * math.erfc((sh - m) / sd / math.sqrt(2.0))
            nl = -math.log10(max(tail, 1e-300))
            out[i] = nl / (1.0 + nl)
        a = max(long_alpha, 1.0 / (c + 1.0))
        d = r - m
        mean[s] = m + a * d
        var[s] = (1.0 - a) * (var[s] + a * d * d)
        count[s] = c + 1


class AnomalyLikelihood(SlotStateful):
    """Post-processing of raw anomaly scores in the spirit of Numenta's anomaly likelihood.

    Raw scores are summarised by a long EWMA mean/variance (weight ``long_alpha``); the short EWMA
    (``short_alpha``) of recent raw scores is compared with it through the Gaussian tail, so a
    detector that is always a little noisy stops alerting while a sustained change stands out.
    """

    kind = "anomaly_likelihood"

    def __init__(
        self,
        long_alpha: float = 1e-3,
        short_alpha: float = 0.2,
        warmup: int = 100,
        n_slots: int = 1,
    ) -> None:
        self.long_alpha = long_alpha
        self.short_alpha = short_alpha
        self.warmup = warmup
        self.state = SlotState(
            self.kind,
            {"long_alpha": long_alpha, "short_alpha": short_alpha, "warmup": warmup},
            {
                "mean": np.zeros(n_slots),
                "var": np.zeros(n_slots),
                "short": np.zeros(n_slots),
                "count": np.zeros(n_slots, np.int64),
            },
        )

    def score_learn_many(self, slots: Any, raw: Any, ts: Any = None) -> np.ndarray:
        s, v, _t = as_batch(slots, raw, ts)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        out = np.empty(s.shape[0])
        st = self.state
        _likelihood_loop(
            s, v, self.long_alpha, self.short_alpha, self.warmup,
            st["mean"], st["var"], st["short"], st["count"], out,
        )  # fmt: skip
        return out
