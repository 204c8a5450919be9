"""Plain brute-force NAB scoring for small cases: every threshold, every row, no vectorisation."""

from __future__ import annotations

import math


def sig(x: float) -> float:
    return -1.0 if x >= 3.0 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def raw_score(
    scores: list[float],
    windows: list[tuple[int, int]],
    threshold: float,
    tp: float,
    fp: float,
    fn: float,
) -> float:
    """NAB raw score of one file; windows are (first row, last row), sorted, non-overlapping."""
    n = len(scores)
    probation = min(math.floor(0.15 * n), 0.15 * 5000)
    total = 0.0
    for a, b in windows:
        best = None
        for i in range(a, b + 1):
            if i >= probation and scores[i] >= threshold:
                w = sig(-(b - i + 1) / (b - a + 1)) * tp / sig(-1.0)
                best = w if best is None else max(best, w)
        total += -fn if best is None else best
    for i in range(n):
        if i < probation or scores[i] < threshold or any(a <= i <= b for a, b in windows):
            continue
        before = [(a, b) for a, b in windows if b < i]
        if not before:
            total += -fp
        else:
            a, b = before[-1]
            total += sig(abs(b - i) / max(b - a, 1)) * fp
    return total


def best_raw(
    files: list[tuple[list[float], list[tuple[int, int]]]], tp: float, fp: float, fn: float
) -> float:
    """Best corpus score over every candidate threshold (1.1 and each distinct score)."""
    cands = {1.1} | {s for scores, _ in files for s in scores}
    return max(sum(raw_score(s, w, t, tp, fp, fn) for s, w in files) for t in cands)
