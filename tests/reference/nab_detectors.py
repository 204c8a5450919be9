"""Plain Python versions of the NAB detector kernels, one series at a time, written for clarity."""

from __future__ import annotations

import math
import statistics


def windowed_gaussian_ref(x: list[float], window: int, step: int) -> list[float]:
    """NAB's WindowedGaussianDetector.handleRecord, row by row, as in nab/detectors/gaussian."""
    out: list[float] = []
    data: list[float] = []
    buf: list[float] = []
    mean, std = 0.0, 1.0

    def update() -> tuple[float, float]:
        m = sum(data) / len(data)
        sd = math.sqrt(sum((v - m) ** 2 for v in data) / len(data))
        return m, sd if sd != 0.0 else 0.000001

    for v in x:
        score = 0.0
        if data:
            score = 1.0 - 0.5 * math.erfc(abs(v - mean) / std / math.sqrt(2.0))
        out.append(score)
        if len(data) < window:
            data.append(v)
            mean, std = update()
        else:
            buf.append(v)
            if len(buf) == step:
                data = data[step:] + buf
                buf = []
                mean, std = update()
    return out


def nn_likelihood_ref(
    x: list[float],
    calib: int,
    length: int,
    history: int,
    learn: int,
    avg_window: int,
    lik_history: int,
    red: float,
    yellow: float,
    refractory: int,
    tolerance: float,
) -> list[float]:
    n = len(x)
    if n == 0:
        return []
    raw = [0.0] * n
    for t in range(n):
        if t < length + 10:
            continue
        cands = range(max(length - 1, t - history), t - length + 1)
        raw[t] = min(
            math.sqrt(sum((x[t - k] - x[u - k]) ** 2 for k in range(length)) / length)
            for u in cands
        )
    c = min(max(calib, 30), n)
    head = x[:c]
    span = max(head) - min(head) if max(head) > min(head) else max(abs(max(head)), 1.0)
    med = statistics.median(raw[:c]) + 1e-9 * span
    raw = [min(r / med / 10.0, 1.0) for r in raw]
    avgs = [sum(raw[max(0, t - avg_window + 1) : t + 1]) / min(t + 1, avg_window) for t in range(n)]
    out = [0.0] * n
    last = -(10**18)
    for t in range(n):
        seen = x[:t]
        beyond = False
        if seen and max(seen) > min(seen):
            tol = (max(seen) - min(seen)) * tolerance
            beyond = x[t] > max(seen) + tol or x[t] < min(seen) - tol
        if t < learn:
            continue
        past = avgs[max(0, t - lik_history) : t]
        m = sum(past) / len(past)
        var = sum((a - m) ** 2 for a in past) / len(past)
        m, var = max(m, 0.03), max(var, 0.0003)
        q = 0.5 * math.erfc((avgs[t] - m) / math.sqrt(var) / math.sqrt(2.0))
        if beyond:
            q = 1e-10
        if q <= red:
            if t - last <= refractory:
                q = max(q, yellow)
            else:
                last = t
        out[t] = math.log10(q + 1e-10) / -10.0
    return out
