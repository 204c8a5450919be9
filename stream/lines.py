"""Telemetry batches -> InfluxDB line protocol (pure functions, no I/O), with the clock-skew policy.

Schema: measurement ``telemetry`` (configurable), tag ``device``, one field per VSS path, the
source timestamp in microseconds. Samples that share a timestamp (the signals of one CAN frame)
share a line. Floats are written with ``repr`` so they round-trip exactly (a value without an
``i`` suffix is a float in line protocol, so ``88.0`` may be written ``88``).

What InfluxDB cannot store, or should not, is counted and left out, never silently:

* NaN and infinities (InfluxDB has no such floats): reason ``non_finite``;
* timestamps more than ``SkewPolicy.max_future_s`` ahead of the wall clock (default one day: a
  device whose clock jumped would otherwise write into next year): reason ``clock_ahead``;
* timestamps older than ``SkewPolicy.max_age_s`` (default: none, as the default
  ``[influx.retention]`` keeps everything; set it to the ``telemetry`` family's retention, since InfluxDB drops
  such points with a ``points beyond retention policy`` partial write) or outside InfluxDB's
  representable range (1677-09-21 .. 2262-04-11): reason ``clock_behind``.

Each rejected group is reported once per batch in ``LineStats.rejects`` as ``(reason, detail)``;
the caller dead-letters those. The hot path is vectorised: one NumPy pass decides which rows
stay, sorts them by time and finds line boundaries; the text is made by C-level ``map``/``join``
over precomputed per-signal prefixes, and each distinct value is formatted once (and kept in a
bounded cache across batches: CAN signals are scaled integers with few distinct values).
"""

from __future__ import annotations

import itertools
import json
import operator
import time
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from core.wire import TelemetryBatch

# InfluxDB stores int64 nanoseconds: anything beyond this many microseconds is unrepresentable.
INFLUX_MAX_ABS_US: Final = 9_223_372_036_854_775
REJECT_EXAMPLES: Final = 5  # samples quoted in a dead-letter detail


def escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_key(value: str) -> str:
    return escape_tag(value)


@dataclass(frozen=True)
class SkewPolicy:
    """Which source timestamps are accepted, relative to the wall clock at conversion time."""

    max_future_s: float = 86_400.0
    max_age_s: float | None = None


@dataclass
class LineStats:
    samples: int = 0
    lines: int = 0
    non_finite: int = 0
    clock_ahead: int = 0
    clock_behind: int = 0
    rejects: list[tuple[str, str]] = field(default_factory=list)


def _reject(
    batch: TelemetryBatch, mask: np.ndarray, reason: str, stats: LineStats, why: str
) -> int:
    """Record one dead-letter entry for the rows in ``mask``; returns how many there were."""
    n = int(mask.sum())
    if n:
        s = batch.samples
        rows = np.flatnonzero(mask)[:REJECT_EXAMPLES]
        examples = [
            [s.names[int(s.sig[i])], int(s.ts_us[i]), repr(float(s.value[i]))] for i in rows
        ]
        detail = {
            "device": batch.device_id,
            "boot_id": batch.boot_id,
            "seq": batch.seq,
            "count": n,
            "why": why,
            "examples": examples,
        }
        stats.rejects.append((reason, json.dumps(detail)))
    return n


def keep_mask(
    batch: TelemetryBatch, stats: LineStats, policy: SkewPolicy, now_us: int | None = None
) -> np.ndarray:
    """Rows that may be written; counts and records the others by reason."""
    s = batch.samples
    now = int(time.time() * 1e6) if now_us is None else now_us
    finite = np.isfinite(s.value)
    ahead = s.ts_us > min(now + int(policy.max_future_s * 1e6), INFLUX_MAX_ABS_US)
    floor = -INFLUX_MAX_ABS_US
    if policy.max_age_s is not None:
        floor = max(floor, now - int(policy.max_age_s * 1e6))
    behind = s.ts_us < floor
    keep = finite & ~ahead & ~behind
    if keep.all():
        return keep
    stats.non_finite += _reject(batch, ~finite, "non_finite", stats, "NaN or infinite value")
    stats.clock_ahead += _reject(
        batch,
        finite & ahead,
        "clock_ahead",
        stats,
        f"timestamp more than {policy.max_future_s:.0f}s ahead of the wall clock",
    )
    stats.clock_behind += _reject(
        batch,
        finite & ~ahead & behind,
        "clock_behind",
        stats,
        "timestamp older than the retention or before 1677",
    )
    return keep


_TEXTS: dict[int, str] = {}  # float64 bit pattern -> repr; one event loop thread uses it
TEXT_CACHE_MAX: Final = (
    1 << 17
)  # ~10 MB at most; cleared when full (a scaled signal has few values)


def _texts(bits: np.ndarray) -> list[str]:
    """``repr`` of the floats whose int64 bit patterns are ``bits``, through the cache."""
    keys = bits.tolist()
    cache = _TEXTS
    missing = [k for k in keys if k not in cache]
    if missing:
        if len(cache) + len(missing) > TEXT_CACHE_MAX:
            cache.clear()
            missing = keys
        floats = np.array(missing, dtype=np.int64).view(np.float64).tolist()
        cache.update(zip(missing, map(repr, floats), strict=True))
    return list(map(cache.__getitem__, keys))


def batch_lines(
    batch: TelemetryBatch,
    measurement: str,
    stats: LineStats | None = None,
    policy: SkewPolicy = SkewPolicy(),
    now_us: int | None = None,
    tags: str = "",
) -> list[str]:
    """Line-protocol lines for one batch (timestamps in microseconds); ``tags`` (escaped,
    ``",k=v,..."``) follow the ``device`` tag."""
    s = batch.samples
    st = stats if stats is not None else LineStats()
    st.samples += len(s)
    if not len(s):
        return []
    keep = keep_mask(batch, st, policy, now_us)
    idx = np.flatnonzero(keep)
    if not len(idx):
        return []
    order = idx[np.argsort(s.ts_us[idx], kind="stable")]
    ts = s.ts_us[order]
    cuts = (np.flatnonzero(ts[1:] != ts[:-1]) + 1).tolist()
    bounds = [0, *cuts, len(order)]
    head = f"{escape_key(measurement)},device={escape_tag(batch.device_id)}{tags} "
    prefixes = [escape_key(n) + "=" for n in s.names]
    # CAN signals repeat their values (about 3 % distinct per batch in the real logs), so each
    # distinct bit pattern is formatted once per batch, and once at all while it stays in the
    # cache; bits, not values, keep -0.0 apart from 0.0.
    bits, inverse = np.unique(s.value[order].view(np.int64), return_inverse=True)
    texts = _texts(bits)
    fields = list(
        map(
            operator.add,
            map(prefixes.__getitem__, s.sig[order].tolist()),
            map(texts.__getitem__, inverse.tolist()),
        )
    )
    ts_l = ts.tolist()
    join = ",".join
    lines = [f"{head}{join(fields[a:b])} {ts_l[a]}" for a, b in itertools.pairwise(bounds)]
    st.lines += len(lines)
    return lines
