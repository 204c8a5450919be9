"""NAB scoring as published (v1.1): windows, scaled sigmoid, profiles, corpus threshold, normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# NAB's config/profiles.json (v1.0+): the weight of a true positive, false positive, false negative.
PROFILES: dict[str, dict[str, float]] = {
    "standard": {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0},
    "reward_low_FP_rate": {"tpWeight": 1.0, "fpWeight": 0.22, "fnWeight": 1.0},
    "reward_low_FN_rate": {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 2.0},
}
PROBATION_PERCENT = 0.15


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """2*sigmoid(-5x) - 1: ~0.987 at the window's left edge, 0 at its right edge, -1 far after."""
    p = np.asarray(position, np.float64)
    return np.where(p >= 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * p)) - 1.0)


MAX_TP = float(scaled_sigmoid(-1.0))


def probation_length(n_rows: int) -> float:
    """Rows at the start of a file that are never scored (the detector is learning)."""
    return min(math.floor(PROBATION_PERCENT * n_rows), PROBATION_PERCENT * 5000)


@dataclass
class FileSweep:
    """Per-row NAB bookkeeping of one data file, independent of the detector and profile."""

    name: str
    unweighted: np.ndarray  # scaled sigmoid of the row's position (positive inside a window)
    window: np.ndarray  # window number within the file, -1 outside any window
    scorable: np.ndarray  # False for the probationary rows
    n_windows: int  # windows of this file (what a perfect detector is paid for)


def sweep_file(name: str, timestamps: np.ndarray, windows: Sequence[tuple[str, str]]) -> FileSweep:
    """Row positions relative to the anomaly windows, as NAB's ``Sweeper.calcSweepScore``.

    A row in a window of width w (rows) ending at row b sits at -(b - i + 1)/w; a row after a window
    at |b - i|/(w - 1); a row before any window counts as far away (-1 when it fires).
    """
    ts = np.asarray(timestamps, "datetime64[ns]")
    n = ts.shape[0]
    unweighted = np.full(n, -1.0)
    window = np.full(n, -1, np.int64)
    bounds = []
    for k, (start, end) in enumerate(windows):
        a = int(np.searchsorted(ts, np.datetime64(start, "ns"), "left"))
        b = int(np.searchsorted(ts, np.datetime64(end, "ns"), "right")) - 1
        if b < a:
            continue
        bounds.append((a, b))
        idx = np.arange(a, b + 1)
        width = float(b - a + 1)
        unweighted[a : b + 1] = scaled_sigmoid(-(b - idx + 1) / width)
        window[a : b + 1] = k
    for j, (a, b) in enumerate(bounds):
        stop = bounds[j + 1][0] if j + 1 < len(bounds) else n
        idx = np.arange(b + 1, stop)
        width = float(b - a + 1)
        # NAB divides by (width - 1); a one-row window would divide by zero there, so treat it as 1.
        unweighted[b + 1 : stop] = scaled_sigmoid(np.abs(b - idx) / max(width - 1.0, 1.0))
    scorable = np.arange(n) >= probation_length(n)
    return FileSweep(name, unweighted, window, scorable, len(bounds))


@dataclass
class ProfileResult:
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    per_file: dict[str, float] = field(default_factory=dict)


def _weighted(sweep: FileSweep, w: dict[str, float]) -> np.ndarray:
    inside = sweep.window >= 0
    return np.where(
        inside, sweep.unweighted * w["tpWeight"] / MAX_TP, sweep.unweighted * w["fpWeight"]
    )


def score_at(sweep: FileSweep, scores: np.ndarray, threshold: float, w: dict[str, float]) -> float:
    """One file's raw NAB score when rows with ``score >= threshold`` are detections."""
    ws = _weighted(sweep, w)
    det = sweep.scorable & (scores >= threshold)
    total = float(ws[det & (sweep.window < 0)].sum())
    for k in np.unique(sweep.window[sweep.scorable & (sweep.window >= 0)]):
        hit = det & (sweep.window == k)
        total += float(ws[hit].max()) if hit.any() else -w["fnWeight"]
    return total


def optimise_threshold(
    sweeps: Sequence[FileSweep], scores: Sequence[np.ndarray], w: dict[str, float]
) -> tuple[float, float]:
    """Best (threshold, raw score) over the whole corpus, as NAB's ``optimizeThreshold``.

    Every distinct anomaly score is a candidate threshold (detections are ``score >= t``); the
    corpus score at t is the sum over files; ties go to the highest threshold, as in NAB.
    """
    vals, ws, keys = [], [], []
    n_windows = 0
    for f, (sw, sc) in enumerate(zip(sweeps, scores, strict=True)):
        m = sw.scorable
        vals.append(np.asarray(sc, np.float64)[m])
        ws.append(_weighted(sw, w)[m])
        win = sw.window[m]
        keys.append(np.where(win >= 0, f * 1_000_000 + win, -1))
        n_windows += len(np.unique(win[win >= 0]))
    v = np.concatenate(vals) if vals else np.zeros(0)
    wt = np.concatenate(ws) if ws else np.zeros(0)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    order = np.argsort(-v, kind="stable")
    v, wt, key = v[order], wt[order], key[order]
    base = -w["fnWeight"] * n_windows
    delta = np.where(key < 0, wt, 0.0)
    # A window's contribution rises from -fn to the best detection in it seen so far.
    for k in np.unique(key[key >= 0]):
        pos = np.nonzero(key == k)[0]
        best = np.maximum(np.maximum.accumulate(wt[pos]), -w["fnWeight"])
        delta[pos] = np.diff(best, prepend=-w["fnWeight"])
    total = base + np.cumsum(delta)
    last = np.nonzero(np.r_[v[1:] != v[:-1], True])[0] if v.size else np.zeros(0, np.int64)
    cand_t = np.r_[1.1, v[last]]
    cand_s = np.r_[base, total[last]]
    best_i = int(np.argmax(cand_s))  # first maximum = highest threshold
    return float(cand_t[best_i]), float(cand_s[best_i])


def score_corpus(
    sweeps: Sequence[FileSweep],
    scores: Sequence[np.ndarray],
    profiles: dict[str, dict[str, float]] | None = None,
) -> dict[str, ProfileResult]:
    """Optimised threshold, raw score and normalised score per profile.

    Normalised as NAB: 100 * (raw - null) / (perfect - null), where the null detector gives every
    row the same score (its best threshold is computed the same way) and the perfect detector
    earns ``tpWeight`` per window.
    """
    out: dict[str, ProfileResult] = {}
    null_scores = [np.full(sw.window.shape[0], 0.5) for sw in sweeps]
    for name, w in (profiles or PROFILES).items():
        t, raw = optimise_threshold(sweeps, scores, w)
        _t0, null = optimise_threshold(sweeps, null_scores, w)
        perfect = w["tpWeight"] * sum(
            len(np.unique(sw.window[sw.scorable & (sw.window >= 0)])) for sw in sweeps
        )
        norm = 100.0 * (raw - null) / (perfect - null) if perfect != null else float("nan")
        per_file = {sw.name: score_at(sw, sc, t, w) for sw, sc in zip(sweeps, scores, strict=True)}
        out[name] = ProfileResult(t, raw, null, perfect, norm, per_file)
    return out
