"""Deliberately plain Python versions of the anomaly kernels, one sample at a time, for parity tests."""

from __future__ import annotations

import math


def zscore_ref(seq: list[tuple[int, float]], alpha: float, clip: float, warmup: int) -> list[float]:
    """Score-then-learn robust EWMA z-score for (slot, value) pairs."""
    mean: dict[int, float] = {}
    var: dict[int, float] = {}
    count: dict[int, int] = {}
    out = []
    for s, v in seq:
        if not math.isfinite(v):
            out.append(math.nan)
            continue
        c = count.get(s, 0)
        m = mean.get(s, 0.0)
        sd = math.sqrt(var.get(s, 0.0))
        floor = 1e-9 * (1.0 + abs(m))
        r = v - m
        out.append(0.0 if c < warmup else r / max(sd, floor))
        if c == 0:
            mean[s], var[s] = v, 0.0
        else:
            a = max(alpha, 1.0 / (c + 1))
            if c >= warmup:
                lim = clip * max(sd, floor)
                r = min(max(r, -lim), lim)
            mean[s] = m + a * r
            var[s] = (1 - a) * (var[s] + a * r * r)
        count[s] = c + 1
    return out


def cusum_ref(
    seq: list[tuple[int, float]], alpha: float, k: float, h: float, warmup: int
) -> list[float]:
    """Two-sided CUSUM on z against a clipped EWMA baseline; restart after an alarm."""
    st: dict[int, list[float]] = {}
    out = []
    for s, v in seq:
        m, var, c, gp, gn = st.get(s, [0.0, 0.0, 0, 0.0, 0.0])
        sd = max(math.sqrt(var), 1e-9 * (1 + abs(m)))
        z = (v - m) / sd
        if c >= warmup:
            gp = max(0.0, gp + z - k)
            gn = max(0.0, gn - z - k)
        stat = max(gp, gn) / h
        out.append(stat)
        if stat > 1:
            gp = gn = 0.0
        r = v - m
        if c == 0:
            m, var = v, 0.0
        else:
            a = max(alpha, 1.0 / (c + 1))
            if c >= warmup:
                r = min(max(r, -(k + h) * sd), (k + h) * sd)
            m, var = m + a * r, (1 - a) * (var + a * r * r)
        st[s] = [m, var, c + 1, gp, gn]
    return out


def ridge_ref(xs: list[list[float]], ys: list[float], lam: float) -> list[float]:
    """Closed-form ridge (intercept first, penalised too) by Gauss-Jordan on X'X + lam I."""
    rows = [[1.0, *x] for x in xs]
    d = len(rows[0])
    a = [
        [sum(r[i] * r[j] for r in rows) + (lam if i == j else 0.0) for j in range(d)]
        for i in range(d)
    ]
    b = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(d)]
    for col in range(d):
        piv = max(range(col, d), key=lambda r: abs(a[r][col]))
        a[col], a[piv] = a[piv], a[col]
        b[col], b[piv] = b[piv], b[col]
        for r in range(d):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col], strict=True)]
                b[r] -= f * b[col]
    return [b[i] / a[i][i] for i in range(d)]
