"""Plain Python spatial anomaly, one series at a time, as NAB's numenta_detector.handleRecord writes it."""

from __future__ import annotations

import math


def spatial_ref(x: list[float], tolerance: float = 0.05, warmup: int = 0) -> list[float]:
    out: list[float] = []
    seen = 0
    lo: float | None = None
    hi: float | None = None
    for v in x:
        if not math.isfinite(v):
            out.append(math.nan)
            continue
        anomaly = False
        if lo is not None and hi is not None and lo != hi and seen >= warmup:
            tol = hi * tolerance - lo * tolerance
            anomaly = v > hi + tol or v < lo - tol
        hi = v if hi is None or v > hi else hi
        lo = v if lo is None or v < lo else lo
        seen += 1
        out.append(1.0 if anomaly else 0.0)
    return out
