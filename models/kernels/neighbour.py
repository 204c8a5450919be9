"""Nearest-neighbour discord scores with HTM-style anomaly likelihood, alert refractory and range checks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from models.kernels.gaussian import _offsets
from models.state import SlotState, SlotStateful, as_batch


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _left_nn_distance(
    x: np.ndarray, lo: int, hi: int, length: int, history: int, out: np.ndarray
) -> None:
    """RMS distance of the last ``length`` values to their nearest earlier match (left discord)."""
    for t in range(lo, hi):
        out[t] = 0.0
        if t - lo < length + 10:
            continue
        best = 1e300
        for u in range(max(lo + length - 1, t - history), t - length + 1):
            d = 0.0
            for k in range(length):
                e = x[t - k] - x[u - k]
                d += e * e
                if d >= best:  # early abandon: this candidate cannot be the nearest any more
                    break
            if d < best:
                best = d
        out[t] = math.sqrt(best / length)


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _nn_likelihood_loop(
    offsets: np.ndarray,
    x: np.ndarray,
    calib: np.ndarray,
    length: int,
    history: int,
    learn: int,
    avg_window: int,
    lik_history: int,
    red: float,
    yellow: float,
    refractory: int,
    tolerance: float,
    raw: np.ndarray,
    avgs: np.ndarray,
    out: np.ndarray,
) -> None:
    for seg in range(offsets.shape[0] - 1):
        lo = offsets[seg]
        hi = offsets[seg + 1]
        if hi == lo:
            continue
        _left_nn_distance(x, lo, hi, length, history, raw)
        # Scale of the series and of its distances from the calibration (probationary) rows only.
        c = min(max(calib[seg], 30), hi - lo)
        head_lo = x[lo]
        head_hi = x[lo]
        for i in range(lo, lo + c):
            head_lo = min(head_lo, x[i])
            head_hi = max(head_hi, x[i])
        span = head_hi - head_lo if head_hi > head_lo else max(abs(head_hi), 1.0)
        med = np.median(raw[lo : lo + c]) + 1e-9 * span
        for i in range(lo, hi):
            raw[i] = min(raw[i] / med / 10.0, 1.0)
        acc = 0.0
        s1 = 0.0  # sum and sum of squares of the averaged raw scores in the history window
        s2 = 0.0
        last = -(1 << 62)
        vmin = x[lo]
        vmax = x[lo]
        for t in range(lo, hi):
            i = t - lo
            acc += raw[t]
            if i >= avg_window:
                acc -= raw[t - avg_window]
            avgs[t] = acc / min(i + 1, avg_window)
            # HTM's spatial check: a value beyond the range seen so far (plus a margin) is anomalous.
            beyond = False
            if vmax > vmin:
                tol = (vmax - vmin) * tolerance
                beyond = x[t] > vmax + tol or x[t] < vmin - tol
            vmin = min(vmin, x[t])
            vmax = max(vmax, x[t])
            if i > 0:
                s1 += avgs[t - 1]
                s2 += avgs[t - 1] * avgs[t - 1]
                if i - 1 >= lik_history:
                    old = avgs[t - 1 - lik_history]
                    s1 -= old
                    s2 -= old * old
            if i < learn:
                out[t] = 0.0
                continue
            cnt = min(i, lik_history)
            m = s1 / cnt
            var = max(s2 / cnt - m * m, 0.0)
            # Numenta's floors: a near-silent history must not turn the first blip into an alert.
            m = max(m, 0.03)
            var = max(var, 0.0003)
            q = 0.5 * math.erfc((avgs[t] - m) / math.sqrt(var) / math.sqrt(2.0))
            if beyond:
                q = 1e-10
            if q <= red:
                # One alert per episode: a red value soon after the last alert is demoted to yellow.
                if t - last <= refractory:
                    q = max(q, yellow)
                else:
                    last = t
            out[t] = math.log10(q + 1e-10) / -10.0


@dataclass(frozen=True)
class NNLikelihoodParams:
    """Settings of :func:`nn_likelihood` (defaults tuned on half of the shared NAB files)."""

    length: int = 8  # values per subsequence compared
    history: int = 2000  # how far back the nearest neighbour is searched (rows)
    learn: int = 388  # rows before any score (Numenta's learning period + estimation samples)
    avg_window: int = 10  # short average of raw scores compared with their history
    lik_history: int = 8640  # rows of averaged raw scores the likelihood is estimated on
    red: float = 1e-5  # tail probability of an alert
    yellow: float = 1e-3  # what a repeated alert inside the refractory period is demoted to
    refractory: int = 100  # rows after an alert during which another one is demoted
    tolerance: float = 0.05  # margin beyond the seen range that makes a value anomalous


def nn_likelihood(
    values: np.ndarray,
    offsets: np.ndarray | None = None,
    calib: np.ndarray | None = None,
    params: NNLikelihoodParams | None = None,
) -> np.ndarray:
    """Anomaly scores in [0, 1] of each series (``offsets`` segments), causal except the scale.

    The raw score of row t is the distance of its last ``length`` values to the nearest earlier
    subsequence (a left discord), scaled by its median over the first ``calib[k]`` rows of the
    series (NAB's probationary rows, which are never scored). Raw scores go through Numenta's
    anomaly likelihood (short average against the history's Gaussian, log scaled so 0.5 is a
    tail probability of 1e-5), alerts within ``refractory`` rows of the previous one are demoted,
    and values beyond the range seen so far score 1.
    """
    p = params or NNLikelihoodParams()
    if min(p.length, p.learn, p.avg_window, p.lik_history) < 1 or p.history < p.length:
        raise ValueError(f"invalid NN-likelihood parameters: {asdict(p)}")
    x = np.ascontiguousarray(values, np.float64)
    off = _offsets(x, offsets)
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite (drop or fill NaN/inf before scoring)")
    n_seg = off.shape[0] - 1
    cal = np.zeros(n_seg, np.int64) if calib is None else np.asarray(calib, np.int64)
    if cal.shape != (n_seg,):
        raise ValueError(f"calib needs one row count per series ({n_seg}), got {cal.shape}")
    out = np.zeros(x.shape[0])
    raw = np.empty(x.shape[0])
    avgs = np.empty(x.shape[0])
    _nn_likelihood_loop(
        off, x, cal, p.length, p.history, p.learn, p.avg_window, p.lik_history,
        p.red, p.yellow, p.refractory, p.tolerance, raw, avgs, out,
    )  # fmt: skip
    return out


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _lik_row(
    s: int, i: int, r: float, v: float, p_avg: int, p_hist: int, learn: int,
    red: float, yellow: float, refractory: int, tolerance: float,
    rr: np.ndarray, ar: np.ndarray, acc: np.ndarray, s1: np.ndarray, s2: np.ndarray,
    vmin: np.ndarray, vmax: np.ndarray, last: np.ndarray,
) -> float:  # fmt: skip
    """Row ``i`` of a slot through the likelihood part, in the batch kernel's order exactly."""
    a = acc[s] + r
    if i >= p_avg:
        a -= rr[s, i % p_avg]
    acc[s] = a
    rr[s, i % p_avg] = r
    avg = a / min(i + 1, p_avg)
    ring = ar.shape[1]  # p_hist + 2: the row leaving the history is read after this one is stored
    ar[s, i % ring] = avg
    if i == 0:
        vmin[s] = v
        vmax[s] = v
    beyond = False
    if vmax[s] > vmin[s]:
        tol = (vmax[s] - vmin[s]) * tolerance
        beyond = v > vmax[s] + tol or v < vmin[s] - tol
    vmin[s] = min(vmin[s], v)
    vmax[s] = max(vmax[s], v)
    if i > 0:
        prev = ar[s, (i - 1) % ring]
        s1[s] += prev
        s2[s] += prev * prev
        if i - 1 >= p_hist:
            old = ar[s, (i - 1 - p_hist) % ring]
            s1[s] -= old
            s2[s] -= old * old
    if i < learn:
        return 0.0
    cnt = min(i, p_hist)
    m = s1[s] / cnt
    var = max(s2[s] / cnt - m * m, 0.0)
    m = max(m, 0.03)
    var = max(var, 0.0003)
    q = 0.5 * math.erfc((avg - m) / math.sqrt(var) / math.sqrt(2.0))
    if beyond:
        q = 1e-10
    if q <= red:
        if i - last[s] <= refractory:
            q = max(q, yellow)
        else:
            last[s] = i
    return math.log10(q + 1e-10) / -10.0


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _nn_stream_loop(
    slots: np.ndarray, x: np.ndarray, calib: int, length: int, history: int, learn: int,
    p_avg: int, p_hist: int, red: float, yellow: float, refractory: int, tolerance: float,
    count: np.ndarray, xr: np.ndarray, rawbuf: np.ndarray, valbuf: np.ndarray, med: np.ndarray,
    rr: np.ndarray, ar: np.ndarray, acc: np.ndarray, s1: np.ndarray, s2: np.ndarray,
    vmin: np.ndarray, vmax: np.ndarray, last: np.ndarray, out: np.ndarray,
) -> int:  # fmt: skip
    ring = history + length
    q = np.empty(length)  # the query: the last ``length`` values of the current slot
    dropped = 0
    for j in range(slots.shape[0]):
        s = slots[j]
        v = x[j]
        if not math.isfinite(v):
            out[j] = np.nan
            dropped += 1
            continue
        i = count[s]
        count[s] = i + 1
        xr[s, i % ring] = v
        raw = 0.0
        if i >= length + 10:
            # Left discord: nearest earlier subsequence of the last ``length`` values.
            best = 1e300
            for k in range(length):
                q[k] = xr[s, (i - k) % ring]
            for u in range(max(length - 1, i - history), i - length + 1):
                pu = u % ring  # one modulo per candidate; the walk back wraps at most once
                d = 0.0
                for k in range(length):
                    b = pu - k
                    if b < 0:
                        b += ring
                    e = q[k] - xr[s, b]
                    d += e * e
                    if d >= best:
                        break
                if d < best:
                    best = d
            raw = math.sqrt(best / length)
        if i < calib:
            out[j] = 0.0
            rawbuf[s, i] = raw
            valbuf[s, i] = v
            if i + 1 < calib:
                continue
            # Calibrated: the distance scale from these rows, then replay them (scores not sent).
            lo_v = valbuf[s, 0]
            hi_v = valbuf[s, 0]
            for k in range(calib):
                lo_v = min(lo_v, valbuf[s, k])
                hi_v = max(hi_v, valbuf[s, k])
            span = hi_v - lo_v if hi_v > lo_v else max(abs(hi_v), 1.0)
            med[s] = np.median(rawbuf[s, :calib]) + 1e-9 * span
            for k in range(calib):
                r = min(rawbuf[s, k] / med[s] / 10.0, 1.0)
                _lik_row(s, k, r, valbuf[s, k], p_avg, p_hist, learn, red, yellow, refractory,
                         tolerance, rr, ar, acc, s1, s2, vmin, vmax, last)  # fmt: skip
            continue
        r = min(raw / med[s] / 10.0, 1.0)
        out[j] = _lik_row(s, i, r, v, p_avg, p_hist, learn, red, yellow, refractory, tolerance,
                          rr, ar, acc, s1, s2, vmin, vmax, last)  # fmt: skip
    return dropped


class NNLikelihood(SlotStateful):
    """:func:`nn_likelihood` one sample at a time for many slots (what the stream runs).

    A slot's first ``calib`` samples (at least 30) set its distance scale and score 0; from then on
    every score equals the batch function's on the same series with ``calib`` calibration rows.
    """

    kind = "nn_likelihood"

    def __init__(self, calib: int = 750, n_slots: int = 1, **params: Any) -> None:
        p = NNLikelihoodParams(**params)
        if min(p.length, p.learn, p.avg_window, p.lik_history) < 1 or p.history < p.length:
            raise ValueError(f"invalid NN-likelihood parameters: {asdict(p)}")
        self.calib = max(int(calib), 30)
        self.params = p
        self.dropped = 0
        n = n_slots
        self.state = SlotState(
            self.kind,
            {"calib": self.calib, **asdict(p)},
            {
                "count": np.zeros(n, np.int64),
                "xr": np.zeros((n, p.history + p.length)),
                "rawbuf": np.zeros((n, self.calib)),
                "valbuf": np.zeros((n, self.calib)),
                "med": np.ones(n),
                "rr": np.zeros((n, p.avg_window)),
                "ar": np.zeros((n, p.lik_history + 2)),
                "acc": np.zeros(n),
                "s1": np.zeros(n),
                "s2": np.zeros(n),
                "vmin": np.zeros(n),
                "vmax": np.zeros(n),
                "last": np.full(n, -(1 << 62), np.int64),
            },
            fill={"med": 1.0, "last": float(-(1 << 62))},
        )

    def score_learn_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        s, v, _t = as_batch(slots, x, ts)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        out = np.empty(s.shape[0])
        p, st = self.params, self.state
        self.dropped += _nn_stream_loop(
            s, v, self.calib, p.length, p.history, p.learn, p.avg_window, p.lik_history,
            p.red, p.yellow, p.refractory, p.tolerance,
            st["count"], st["xr"], st["rawbuf"], st["valbuf"], st["med"], st["rr"], st["ar"],
            st["acc"], st["s1"], st["s2"], st["vmin"], st["vmax"], st["last"], out,
        )  # fmt: skip
        return out

    def score_learn_one(self, x: float, slot: int = 0) -> float:
        return float(self.score_learn_many([slot], [x])[0])
