"""Plain-Python references of the maintenance kernels (one sample at a time, obvious)."""

from __future__ import annotations

import math
import statistics


def daily_distances(days: list[int], odo: list[float]) -> list[float]:
    """Closed days' distances of one vehicle: each day runs to the first reading of a later day."""
    out: list[float] = []
    start_day, start_odo = days[0], odo[0]
    for d, o in zip(days[1:], odo[1:], strict=True):
        if d > start_day:
            out.append(o - start_odo)
            out += [0.0] * (d - start_day - 1)
            start_day, start_odo = d, o
    return out


def daily_mean_var(days: list[int], odo: list[float]) -> tuple[float, float]:
    dist = daily_distances(days, odo)
    mean = statistics.fmean(dist) if dist else 0.0
    var = statistics.variance(dist) if len(dist) > 1 else 0.0
    return mean, var


def oil_life(
    ts: list[float], rpm: list[float], temp: list[float], budget: float, max_gap: float
) -> float:
    life = 1.0
    for i in range(1, len(ts)):
        if rpm[i] <= 0:
            continue
        dt = min(ts[i] - ts[i - 1], max_gap)
        t = temp[i]
        w = 2.0 if t < 60.0 else (1.0 + 0.1 * (t - 110.0) if t > 110.0 else 1.0)
        life = max(life - w * rpm[i] / 60.0 * dt / budget, 0.0)
    return life


def cell_spread(row: list[float]) -> float:
    vals = [v for v in row if not math.isnan(v)]
    return max(vals) - min(vals) if vals else math.nan
