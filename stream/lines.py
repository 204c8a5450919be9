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
stay, sorts them by time and finds line boundaries; each distinct value is formatted once (and kept
in a bounded cache across batches: CAN signals are scaled integers with few distinct values), and
a compiled loop (``stream.line_kernel``) copies prefixes, values and timestamps into the text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from core.wire import TelemetryBatch

if TYPE_CHECKING:
    from stream.sinks.base import Points

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


Table = tuple[np.ndarray, np.ndarray]  # (bytes, offsets): item i is bytes[off[i]:off[i + 1]]
# read-only like every table text_table makes: the compiled renderer sees one array type only
EMPTY_TABLE: Final[Table] = (np.frombuffer(b"", np.uint8), np.zeros(1, np.int64))
TEXT_CACHE_MAX: Final = 1 << 17  # distinct values remembered (~10 MB); cleared when full
REBUILD_MIN: Final = 4096  # new values gathered before the sorted table is rebuilt
# lookups that missed before the values gathered are folded in anyway: a long tail of rare
# values (fewer than REBUILD_MIN new ones) otherwise keeps every lookup on the slow path
REBUILD_CALLS: Final = 256


class ValueTexts:
    """``repr`` of float64 values by bit pattern (bits, not values, keep -0.0 apart from 0.0),
    formatted once and kept across batches: CAN signals are scaled integers with few distinct
    values. Known values are found through a compiled hash index into one byte buffer of texts
    (no per-sample Python); new ones are formatted once per distinct value, handed to the
    renderer as a table of their own, and folded into the index in bulk."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}  # every value known; the index is rebuilt from it
        self.pending = 0  # values in ``texts`` not yet in the index
        self.indexed = 0
        self.missed = 0  # lookups with values not in the index since the last rebuild
        self.index: Any = None  # stream.line_kernel.HashIndex, made at the first rebuild
        self.table: Table = EMPTY_TABLE

    def lookup(self, bits: np.ndarray) -> tuple[np.ndarray, Table, Table]:
        """``(vix, table, local)``: ``vix >= 0`` indexes ``table`` (the indexed texts as they
        were at the call), ``vix < 0`` item ``-vix - 1`` of ``local``, this call's new values."""
        from stream.line_kernel import text_table

        table = self.table
        if self.index is not None:
            vix, misses = self.index.find(bits)
        else:
            vix, misses = np.full(len(bits), -1, np.int64), len(bits)
        if not misses:
            return vix, table, EMPTY_TABLE
        miss = vix < 0
        new, inverse = np.unique(bits[miss], return_inverse=True)
        known = self.texts
        keys = new.tolist()
        found = list(map(known.get, keys))
        texts: list[str] = found  # type: ignore[assignment]  # unless a None is in it:
        if None in found:
            floats = new.view(np.float64).tolist()
            texts = [t if t is not None else repr(f) for t, f in zip(found, floats, strict=True)]
            if len(known) + len(keys) > TEXT_CACHE_MAX:  # full: start again (rare)
                self.texts, self.pending = {}, 0  # the table of this call stays valid
                known = self.texts
            before = len(known)
            known.update(zip(keys, texts, strict=True))
            self.pending += len(known) - before
        vix[miss] = -1 - inverse
        local = text_table(texts)
        self.missed += 1
        if self.pending >= max(REBUILD_MIN, self.indexed // 4) or (
            self.pending and self.missed >= REBUILD_CALLS
        ):
            self._rebuild()
        return vix, table, local

    def _rebuild(self) -> None:
        from stream.line_kernel import HashIndex, text_table

        keys = np.fromiter(self.texts.keys(), np.int64, len(self.texts))
        self.index = HashIndex(keys)
        self.table = text_table(list(self.texts.values()))
        self.indexed, self.pending, self.missed = len(keys), 0, 0


_TEXTS = ValueTexts()  # one event loop thread uses it


# names of a batch -> the table (``stream.line_kernel.text_table``) of their escaped ``name=``
_PREFIXES: dict[tuple[str, ...], Table] = {}
PREFIX_CACHE_MAX: Final = 1024


def _prefixes(names: tuple[str, ...]) -> Table:
    got = _PREFIXES.get(names)
    if got is None:
        from stream.line_kernel import text_table

        if len(_PREFIXES) >= PREFIX_CACHE_MAX:
            _PREFIXES.clear()
        got = _PREFIXES[names] = text_table([(escape_key(n) + "=").encode() for n in names])
    return got


def batch_lines(
    batch: TelemetryBatch,
    measurement: str,
    stats: LineStats | None = None,
    policy: SkewPolicy = SkewPolicy(),
    now_us: int | None = None,
    tags: str = "",
) -> list[str]:
    """Line-protocol lines for one batch (timestamps in microseconds); ``tags`` (escaped,
    ``",k=v,..."``) follow the ``device`` tag. The stream hands ``batch_points`` to its sink
    instead; this is the same text, for tools and tests."""
    s = batch.samples
    st = stats if stats is not None else LineStats()
    st.samples += len(s)
    if not len(s):
        return []
    keep = keep_mask(batch, st, policy, now_us)
    idx = np.flatnonzero(keep)
    if not len(idx):
        return []
    head = f"{escape_key(measurement)},device={escape_tag(batch.device_id)}{tags} "
    lines = render_rows(head, s.names, s.sig[idx], s.ts_us[idx], s.value[idx])
    st.lines += len(lines)
    return lines


def batch_points(
    batch: TelemetryBatch,
    measurement: str,
    keep: np.ndarray,
    tags: tuple[tuple[str, str], ...] = (),
) -> Points:
    """The rows of ``batch`` that ``keep`` (``keep_mask``) lets through, as the sink's columns:
    tag ``device`` first, then ``tags``. No copy when every row stays."""
    from stream.sinks.base import Points

    s = batch.samples
    all_tags = (("device", batch.device_id), *tags)
    if keep.all():
        return Points(measurement, all_tags, s.names, s.sig, s.ts_us, s.value)
    idx = np.flatnonzero(keep)
    return Points(measurement, all_tags, s.names, s.sig[idx], s.ts_us[idx], s.value[idx])


def _head(p: Points) -> str:
    return (
        escape_key(p.measurement)
        + "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in p.tags)
        + " "
    )


def points_lines(p: Points) -> list[str]:
    """Line protocol of one ``Points`` (rows sharing a timestamp share a line); the caller
    (``Sink.render``) has refused what line protocol cannot hold."""
    if not len(p.ts_us):
        return []
    return render_rows(_head(p), p.names, p.sig, p.ts_us, p.value)


def points_block(p: Points) -> tuple[bytes, np.ndarray]:
    """``points_lines`` as one buffer of newline-terminated lines and each line's end offset:
    what a write request's body is made of, without a string per line."""
    if not len(p.ts_us):
        return b"", np.zeros(0, np.int64)
    from stream.line_kernel import render_block

    return render_block(*_render_args(_head(p), p.names, p.sig, p.ts_us, p.value))


def _render_args(
    head: str, names: Sequence[str], sig: np.ndarray, ts_us: np.ndarray, value: np.ndarray
) -> tuple[Any, ...]:
    """The compiled renderer's arguments: the rows' time order, value texts; the rows
    themselves stay where they are (the kernel reads them through the order)."""
    order = np.argsort(ts_us, kind="stable")
    # CAN signals repeat their values (about 3 % distinct per batch in the real logs), so each
    # distinct bit pattern is formatted once per batch, and once at all while it stays in the
    # cache; bits, not values, keep -0.0 apart from 0.0.
    vix, table, local = _TEXTS.lookup(value.view(np.int64))
    return head.encode(), _prefixes(tuple(names)), table, local, order, sig, vix, ts_us


def render_rows(
    head: str, names: Sequence[str], sig: np.ndarray, ts_us: np.ndarray, value: np.ndarray
) -> list[str]:
    """``head`` then ``name=value,...`` and the timestamp, one line per distinct timestamp, in
    time order (rows of one timestamp in their given order)."""
    from stream.line_kernel import render_lines  # numba loads at the first batch, not at import

    return render_lines(*_render_args(head, names, sig, ts_us, value))


def all_lines(points: Sequence[Points]) -> list[str]:
    """Line protocol of several ``Points`` (tests and tools; the stream renders in its sink)."""
    return [line for p in points for line in points_lines(p)]
