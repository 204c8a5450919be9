"""The sink extension point: ``Points`` (columns the pipeline hands over) and the ``Sink`` ABC.

Like python-can's ``BusABC``: the public methods do the shared work and a plugin fills in the
``_..._internal`` hooks.

* ``Sink.render(points)`` checks what no sink may store (non-finite values, timestamps outside
  ``ts_range_us``, empty tag values or tags with control characters) and reports each refused
  group with a reason; ``_render_internal`` turns the rest into the sink's records (one line of
  text each: line protocol for InfluxDB, a CSV row or an SQL tuple for others), which the base
  groups (``_group_internal``) into ``Block``s: a group's newline-terminated records in one
  buffer. A sink that renders straight into such a buffer overrides ``_render_blocks_internal``
  (InfluxDB: no string per line on the hot path).
* ``Sink.write_blocks(blocks)`` (``Sink.write(records)`` for records as text) cuts requests of
  at most ``batch_records`` records and ``MAX_BODY_BYTES`` bytes per group, sends them
  (``_write_internal``), retries
  ``Transient`` failures with full-jitter backoff, bisects a request the server ``Rejected`` down to
  the refused records, counts, and logs a broken link once when it breaks and once when it recovers.
* ``record_format`` names the records' format on the retry topic (``stream.sinks.writer``): a
  parked record is replayed only by a sink that writes the same format.

A retried write must rewrite the same rows (source timestamps as keys), so that retries and
replays never duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import numpy as np

from core.backoff import exponential, jittered
from core.errors import SinkError

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 8 * 1024 * 1024  # InfluxDB 1.x refuses bodies over 25 MB by default
MAX_BACKOFF_S: Final = 30.0
BASE_BACKOFF_S: Final = 0.1
MAX_REJECT_DETAIL: Final = 500
# Requests of one write in flight at once. The caller still awaits them all before its Kafka
# offsets move, so at-least-once delivery holds; rows are idempotent, so order does not matter.
MAX_IN_FLIGHT: Final = 2
# A write this large is cut into MAX_IN_FLIGHT requests at least (smaller ones cost more per line).
SPLIT_MIN_LINES: Final = 1000
# Extra requests one write may spend isolating refused lines; past it whole requests are refused.
BISECT_BUDGET: Final = 128
MAX_TAG_BYTES: Final = 4096  # a tag key or value longer than this is refused (InfluxDB: 64 KB keys)
REFUSED_EXAMPLES: Final = 5


@dataclass(frozen=True, slots=True)
class Points:
    """Columns of rows under one measurement and one tag set: row ``i`` is field
    ``names[sig[i]]`` = ``value[i]`` at ``ts_us[i]`` (microseconds). Rows that share a timestamp
    are one point (InfluxDB writes them as one line). The arrays are not copied."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    names: Sequence[str]
    sig: np.ndarray  # int, indexes names
    ts_us: np.ndarray  # int64
    value: np.ndarray  # float64

    @classmethod
    def of(
        cls,
        measurement: str,
        tags: dict[str, str] | Sequence[tuple[str, str]],
        names: Sequence[str],
        sig: Any,
        ts_us: Any,
        value: Any,
    ) -> Points:
        """Points from any array-likes; raises ``SinkError`` for what columns cannot hold (a
        timestamp beyond int64, a value that is no number, columns of different lengths)."""
        try:
            s = np.asarray(sig, np.int64)
            t = np.asarray(ts_us, np.int64)
            v = np.asarray(value, np.float64)
        except (OverflowError, TypeError, ValueError) as err:
            raise SinkError(f"points of {measurement!r}: not numeric columns: {err}") from err
        if not (len(s) == len(t) == len(v)):
            raise SinkError(f"points of {measurement!r}: columns of different lengths")
        if len(s) and (s.min() < 0 or s.max() >= len(names)):
            raise SinkError(f"points of {measurement!r}: a field index outside its names")
        items = tags.items() if isinstance(tags, dict) else tags
        return cls(measurement, tuple((str(k), str(v)) for k, v in items), names, s, t, v)

    @classmethod
    def point(
        cls, measurement: str, tags: dict[str, str], ts_us: int, fields: dict[str, float]
    ) -> Points:
        """One point: ``fields`` at ``ts_us`` (summaries, status changes)."""
        names = list(fields)
        ts = [ts_us] * len(names)
        return cls.of(measurement, tags, names, range(len(names)), ts, list(fields.values()))

    def __len__(self) -> int:
        return len(self.ts_us)

    def take(self, rows: np.ndarray) -> Points:
        return Points(
            self.measurement,
            self.tags,
            self.names,
            self.sig[rows],
            self.ts_us[rows],
            self.value[rows],
        )


class Transient(Exception):
    """A write failed in a way that may pass (429, 5xx, timeout); ``retry_after`` from the server."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(Exception):
    """The server refused the records themselves (for HTTP: a 4xx other than 429)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class WriteResult:
    """What a write did: records written, and records refused with the server's reason."""

    written: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (record, reason)


@dataclass(frozen=True, slots=True)
class Block:
    """Records of one destination group in one buffer, each ending with a newline: record ``i``
    is ``data[ends[i - 1]:ends[i]]`` (from 0 for the first; ``ends[-1] == len(data)``)."""

    group: str
    data: bytes
    ends: np.ndarray  # int64, increasing

    @classmethod
    def of(cls, group: str, records: Sequence[str]) -> Block:
        """A block of records given as text (one line each, no newline in them)."""
        encoded = [r.encode() + b"\n" for r in records]
        ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))
        return cls(group, b"".join(encoded), ends)

    def __len__(self) -> int:
        return len(self.ends)

    def records(self) -> list[str]:
        """The records as text, without their newlines."""
        return self.data[:-1].decode().split("\n") if len(self.ends) else []


def bodies(
    blocks: Sequence[Block], max_records: int, max_bytes: int = MAX_BODY_BYTES
) -> list[tuple[bytes, int]]:
    """Request bodies of whole records of ``blocks`` (in order), at most ``max_records`` records
    and ``max_bytes`` bytes each (a record longer than that goes alone), with their record
    counts; slices of the blocks' buffers, joined once per body."""
    out: list[tuple[bytes, int]] = []
    parts: list[memoryview] = []
    n = size = 0
    step = max(1, max_records)
    for b in blocks:
        view, ends = memoryview(b.data), b.ends
        start = 0
        while start < len(ends):
            base = int(ends[start - 1]) if start else 0
            stop = min(len(ends), start + step - n)
            fit = int(np.searchsorted(ends, base + max_bytes - size, side="right"))
            stop = min(stop, max(fit, start + 1 if n == 0 else start))
            if stop > start:
                end = int(ends[stop - 1])
                parts.append(view[base:end])
                n += stop - start
                size += end - base
                start = stop
            if n >= step or start < len(ends):  # full, by records or by bytes
                out.append((b"".join(parts), n))
                parts, n, size = [], 0, 0
    if parts:
        out.append((b"".join(parts), n))
    return out


@dataclass
class Rendered:
    """``Sink.render``'s answer: the records (``Block``s), and rows refused before rendering, per
    reason as ``(reason, detail)`` (JSON detail: measurement, tags, count, examples)."""

    blocks: list[Block] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    refused_rows: int = 0

    @property
    def records(self) -> list[str]:
        """The records as text, one line each (tests and tools: writes take the blocks)."""
        return [r for b in self.blocks for r in b.records()]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def backoff_s(attempt: int, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff; the server's ``Retry-After`` is a floor."""
    delay = jittered(exponential(attempt, BASE_BACKOFF_S, MAX_BACKOFF_S), "full")
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_BACKOFF_S * 4))
    return delay


def chunks(lines: Sequence[str], max_lines: int, max_bytes: int = MAX_BODY_BYTES) -> list[bytes]:
    """Request bodies of at most ``max_lines`` lines and about ``max_bytes`` bytes."""
    out: list[bytes] = []
    step = max(1, max_lines)
    for start in range(0, len(lines), step):
        body = ("\n".join(lines[start : start + step]) + "\n").encode()
        if len(body) <= max_bytes or step == 1:
            out.append(body)
            continue
        out.extend(chunks(lines[start : start + step], max(1, step // 2), max_bytes))
    return out


# control characters break a line of text; a backslash is read back differently by InfluxDB 1.x
# (which keeps an escaped one as two characters) and 2.x (one), so no sink takes one in a name
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def _bad_tag(text: str) -> bool:
    return not text or len(text.encode()) > MAX_TAG_BYTES or not text.isprintable() or "\\" in text


def _bad_names(names: Sequence[str]) -> list[int]:
    """Indexes of field names no sink takes (empty, control characters, backslashes, too long)."""
    joined = "".join(names)
    if _BAD_CHARS.search(joined) is None and all(names) and len(joined) < MAX_TAG_BYTES:
        return []  # the common case: one C pass
    return [i for i, n in enumerate(names) if _bad_tag(n)]


class Sink(ABC):
    """A destination for points; see the module docstring for what the base does."""

    name: ClassVar[str] = ""  # the registry's name (``[stream] sink``)
    record_format: ClassVar[str] = ""  # the retry topic's ``format`` header for parked records
    health_name: ClassVar[str] = "sink"  # its key in /readyz
    label: ClassVar[str] = "sink"  # how log lines and errors call it ("InfluxDB")
    reject_reason: ClassVar[str] = "sink_rejected"  # dead-letter reason of refused records
    # representable timestamps in microseconds (InfluxDB: int64 nanoseconds)
    ts_range_us: ClassVar[tuple[int, int]] = (-(2**63) // 1000 + 1, (2**63 - 1) // 1000)

    def __init__(self, url: str = "", batch_records: int = 5000, max_retries: int = 8) -> None:
        self.url = url
        self.batch_records = batch_records
        self.max_retries = max_retries
        self.written_lines = 0
        self.rejected_lines = 0
        self.retries = 0
        self.requests = 0
        self.broken_since: float | None = None
        # the metrics' latency histogram (stream.metrics), once per write, not per line
        self.observe_write: Callable[[float], None] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Sink:
        """The sink configured by ``settings`` (``core.config.CarpulseSettings``); a plug-in
        reads its own section or environment here."""
        return cls()

    async def ping(self) -> str:
        """One line for the readiness check (``/readyz``): the server and its version; raises
        ``SinkError`` when it does not answer."""
        return self.url

    @property
    def broken(self) -> bool:
        return self.broken_since is not None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, create the database/table where the API allows it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- rendering ---------------------------------------------------------------------------

    def render(self, points: Sequence[Points]) -> Rendered:
        """The sink's records for ``points``; rows no sink may store are refused and reported."""
        out = Rendered()
        lo, hi = self.ts_range_us
        for p in points:
            if not len(p):
                continue
            bad_tags = [f"{k}={v[:40]!r}" for k, v in p.tags if _bad_tag(k) or _bad_tag(v)] + (
                [f"measurement {p.measurement[:40]!r}"] if _bad_tag(p.measurement) else []
            )
            if bad_tags:
                self._refuse(out, p, np.ones(len(p), bool), "bad_tag", ", ".join(bad_tags))
                continue
            finite = np.isfinite(p.value)
            in_range = (p.ts_us >= lo) & (p.ts_us <= hi)
            keep = finite & in_range
            bad = _bad_names(p.names)
            if bad or not keep.all():
                self._refuse(out, p, ~finite, "non_finite", "NaN or infinite value")
                self._refuse(out, p, finite & ~in_range, "out_of_range", "timestamp out of range")
                if bad:
                    named = np.isin(p.sig, bad, invert=True)
                    why = "field name empty, too long, or with a control character or backslash"
                    self._refuse(out, p, keep & ~named, "bad_field", why)
                    keep &= named
                p = p.take(np.flatnonzero(keep))
                if not len(p):
                    continue
            out.blocks.extend(b for b in self._render_blocks_internal(p) if len(b))
        return out

    @staticmethod
    def _refuse(out: Rendered, p: Points, mask: np.ndarray, reason: str, why: str) -> None:
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        import json

        examples = [
            [str(p.names[int(p.sig[i])]), int(p.ts_us[i]), repr(float(p.value[i]))]
            for i in rows[:REFUSED_EXAMPLES]
        ]
        detail = {
            "measurement": p.measurement[:200],
            "tags": [[k[:200], v[:200]] for k, v in p.tags],
            "count": len(rows),
            "why": why,
            "examples": examples,
        }
        out.refused.append((reason, json.dumps(detail)))
        out.refused_rows += len(rows)

    @abstractmethod
    def _render_internal(self, points: Points) -> list[str]:
        """Records (one line of text each, no newline in them) for rows that passed the checks."""

    def _render_blocks_internal(self, points: Points) -> list[Block]:
        """``_render_internal``'s records as blocks, one per group (``_group_internal``); a sink
        that can render into one buffer directly overrides this."""
        return self.blocks_of(self._render_internal(points))

    def blocks_of(self, records: Sequence[str]) -> list[Block]:
        """Records given as text as one block per group."""
        return [Block.of(g, part) for g, part in self._group_internal(records).items() if part]

    # -- writing -----------------------------------------------------------------------------

    def _group_internal(self, records: Sequence[str]) -> dict[str, list[str]]:
        """Records per destination group (InfluxDB: retention family); one group by default."""
        return {"": list(records)}

    @abstractmethod
    async def _write_internal(self, body: bytes, group: str) -> None:
        """Send one request of newline-terminated records of ``group``; raise ``Transient`` or
        ``Rejected``."""

    async def write(self, lines: Sequence[str], *, max_retries: int | None = None) -> WriteResult:
        """Write records given as text; raises ``SinkError`` when transient failures outlast the
        retries."""
        return await self.write_blocks(self.blocks_of(lines), max_retries=max_retries)

    async def write_blocks(
        self, blocks: Sequence[Block], *, max_retries: int | None = None
    ) -> WriteResult:
        """Write rendered blocks; raises ``SinkError`` when transient failures outlast the
        retries."""
        t0 = time.perf_counter()
        try:
            return await self._write(blocks, max_retries)
        finally:
            if self.observe_write is not None:
                self.observe_write(time.perf_counter() - t0)

    async def _write(self, blocks: Sequence[Block], max_retries: int | None) -> WriteResult:
        result = WriteResult()
        retries = self.max_retries if max_retries is None else max_retries
        budget = [BISECT_BUDGET]
        per = self.batch_records
        total = sum(map(len, blocks))
        if total >= SPLIT_MIN_LINES:
            per = min(per, -(-total // MAX_IN_FLIGHT))
        groups: dict[str, list[Block]] = {}
        for b in blocks:
            if len(b):
                groups.setdefault(b.group, []).append(b)
        requests = [
            (group, body, n) for group, part in groups.items() for body, n in bodies(part, per)
        ]
        if len(requests) == 1 or retries == 0:  # one request, or probing a broken link
            for group, body, n in requests:
                await self._write_body(body, retries, result, budget, group, n)
        else:  # InfluxDB ingests faster with a few requests in flight (see BENCHMARKS.md)
            gate = asyncio.Semaphore(MAX_IN_FLIGHT)

            async def one(group: str, body: bytes, n: int) -> None:
                async with gate:
                    await self._write_body(body, retries, result, budget, group, n)

            try:
                async with asyncio.TaskGroup() as tg:  # the first failure cancels the rest
                    for group, body, n in requests:
                        tg.create_task(one(group, body, n))
            except* SinkError as errors:
                raise errors.exceptions[0] from None
        self.written_lines += result.written
        self.rejected_lines += len(result.rejected)
        return result

    async def _write_body(
        self,
        body: bytes,
        retries: int,
        result: WriteResult,
        budget: list[int],
        group: str,
        records: int | None = None,
    ) -> None:
        try:
            await self._write_retrying(body, retries, group)
        except Rejected as err:
            lines = body.rstrip(b"\n").split(b"\n")
            budget[0] -= 1
            if len(lines) == 1 or budget[0] <= 0:
                why = str(err)[:MAX_REJECT_DETAIL]
                if len(lines) > 1:
                    why = f"{why} (whole request of {len(lines)} lines refused)"
                result.rejected.extend((line.decode(errors="replace"), why) for line in lines)
                return
            # Rewriting the accepted half is harmless (same rows), so bisect to the bad lines.
            mid = len(lines) // 2
            for part in (lines[:mid], lines[mid:]):
                await self._write_body(b"\n".join(part) + b"\n", retries, result, budget, group)
            return
        result.written += body.count(b"\n") if records is None else records

    async def _write_retrying(self, body: bytes, retries: int, group: str) -> None:
        attempt = 0
        while True:
            self.requests += 1
            try:
                await self._write_internal(body, group)
            except Transient as err:
                attempt += 1
                self.retries += 1
                if self.broken_since is None:
                    log.warning(
                        "%s at %s failing (%s); retrying with backoff", self.label, self.url, err
                    )
                    self.broken_since = time.monotonic()
                if attempt > retries:
                    raise SinkError(
                        f"{self.label} write to {self.url} failed after {attempt} attempts: {err}"
                    ) from err
                await asyncio.sleep(backoff_s(attempt, err.retry_after))
                continue
            if self.broken_since is not None:
                log.warning(
                    "%s at %s recovered after %.1fs",
                    self.label,
                    self.url,
                    time.monotonic() - self.broken_since,
                )
                self.broken_since = None
            return

    # -- reading (the contract tests read back through the sink) --------------------------------

    async def read(self, measurement: str, tags: dict[str, str]) -> list[tuple[int, str, float]]:
        """``(ts_us, field, value)`` rows stored under ``measurement`` and ``tags``, sorted;
        sinks that cannot be read back raise ``NotImplementedError``."""
        raise NotImplementedError(f"sink {self.name} cannot be read back")
