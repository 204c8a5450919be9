"""Plain-Python reference of ``models.ids.kernels._score`` (one frame at a time, obvious)."""

from __future__ import annotations

import math


def score(
    frames: list[tuple[int, int, int, list[int]]],
    profile: dict[int, dict],
    state: dict[int, dict],
    min_flips: int,
    rate_gap: float = 0.75,
) -> list[int]:
    """``frames``: (ts_us, slot or -1, dlc, 8 payload bytes); ``profile[slot]``: dlcs, frozen_mask,
    frozen_val, gap_min, tau, rate_max, period; ``state[slot]``: last_ts, count, count_ts (mutated)."""
    out: list[int] = []
    for ts, slot, dlc, data in frames:
        if slot < 0:
            out.append(1)
            continue
        p, st = profile[slot], state[slot]
        f = 0
        if min(dlc, 63) not in p["dlcs"]:
            f |= 2
        flips = sum(
            bin((data[b] ^ p["frozen_val"][b]) & p["frozen_mask"][b]).count("1") for b in range(8)
        )
        if flips >= min_flips:
            f |= 4
        if st["count_ts"] >= 0:
            c = st["count"] * math.exp(-(ts - st["count_ts"]) / p["tau"]) + 1.0
        else:
            c = 1.0
        st["count"], st["count_ts"] = c, ts
        early = st["last_ts"] >= 0 and ts - st["last_ts"] < rate_gap * p["period"]
        if c > p["rate_max"] and early:
            f |= 16
        if st["last_ts"] >= 0 and ts - st["last_ts"] < p["gap_min"]:
            f |= 8
        if f == 0:
            st["last_ts"] = ts
        out.append(f)
    return out
