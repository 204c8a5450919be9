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


def smooth_features(
    unit: list[int], x: list[list[float]], fast: float, slow: float, long_window: int, baseline: int
) -> list[list[float]]:
    out: list[list[float]] = []
    ef: list[float] = []
    es: list[float] = []
    for i in range(len(unit)):
        start = i
        while start > 0 and unit[start - 1] == unit[i]:
            start -= 1
        if start == i:
            ef = list(x[i])
            es = list(x[i])
        else:
            ef = [e + fast * (v - e) for e, v in zip(ef, x[i], strict=True)]
            es = [e + slow * (v - e) for e, v in zip(es, x[i], strict=True)]
        rows = list(range(max(start, i - long_window + 1), i + 1))
        base_rows = list(range(start, min(start + baseline, i + 1)))
        feats: list[float] = []
        for j in range(len(x[i])):
            vals = [x[r][j] for r in rows]
            k = len(vals)
            mean = sum(vals) / k
            tm = (k - 1) / 2
            den = sum((t - tm) ** 2 for t in range(k))
            slope = sum((t - tm) * (v - mean) for t, v in enumerate(vals)) / den if den else 0.0
            base = sum(x[r][j] for r in base_rows) / len(base_rows)
            feats += [ef[j], es[j], es[j] - base, slope]
        out.append(feats)
    return out
