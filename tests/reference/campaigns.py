"""Plain-Python references of the campaign kernels (edge.campaign_kernels), one sample at a time."""

from __future__ import annotations

import math


def periodic(
    rows: list[tuple[int, int, float]], period_us: int, horizon_us: int
) -> list[tuple[int, int, float, float, float, float]]:
    """``(slot, ts, value)`` rows -> ``(slot, last_ts, min, max, mean, last)`` per closed window."""
    win: dict[int, tuple[int, list[tuple[int, float]]]] = {}
    out = []
    for slot, ts, v in rows:
        if math.isnan(v):
            continue
        b = ts // period_us
        if slot in win and win[slot][0] != b:
            out.append(_close(slot, win.pop(slot)[1]))
        win.setdefault(slot, (b, []))[1].append((ts, v))
    for slot in sorted(win):
        b, items = win[slot]
        if b < horizon_us // period_us:
            out.append(_close(slot, items))
    return out


def _close(
    slot: int, items: list[tuple[int, float]]
) -> tuple[int, int, float, float, float, float]:
    vals = [v for _, v in items]
    return (slot, items[-1][0], min(vals), max(vals), sum(vals) / len(vals), vals[-1])


def on_change(rows: list[tuple[int, float]], deadband: float) -> list[int]:
    """Indices of kept rows: first per slot, then changes of more than ``deadband`` (NaN-aware)."""
    sent: dict[int, float] = {}
    keep = []
    for i, (slot, v) in enumerate(rows):
        if slot in sent:
            p = sent[slot]
            if math.isnan(v) and math.isnan(p):
                continue
            if not (math.isnan(v) or math.isnan(p)) and abs(v - p) <= deadband:
                continue
        sent[slot] = v
        keep.append(i)
    return keep
