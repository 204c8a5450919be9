"""Plain-Python reference of ``models.rul.features.window_features`` (deliberately obvious, slow)."""

from __future__ import annotations

import math


def window_features(
    unit: list[int], x: list[list[float]], window: int, baseline: int
) -> list[list[float]]:
    out: list[list[float]] = []
    for i in range(len(unit)):
        start = i
        while start > 0 and unit[start - 1] == unit[i]:
            start -= 1
        rows = list(range(max(start, i - window + 1), i + 1))
        base_rows = list(range(start, min(start + baseline, i + 1)))
        feats: list[float] = []
        for j in range(len(x[i])):
            vals = [x[r][j] for r in rows]
            k = len(vals)
            mean = sum(vals) / k
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / k)
            ts = list(range(k))
            tm = sum(ts) / k
            den = sum((t - tm) ** 2 for t in ts)
            slope = (
                sum((t - tm) * (v - mean) for t, v in zip(ts, vals, strict=True)) / den
                if den
                else 0.0
            )
            base = sum(x[r][j] for r in base_rows) / len(base_rows)
            feats += [x[i][j], mean, std, slope, mean - base]
        feats.append(float(i - start + 1))
        out.append(feats)
    return out
