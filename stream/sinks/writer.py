"""Deliver points through the configured sink without losing any: dead-letter what it refuses,
park what fails.

``SinkWriter.deliver(points)`` is what the agents call (``points``: ``stream.sinks.base.Points``,
the columns the pipeline has); the sink renders its own records (InfluxDB: line protocol):

* rows no sink may store (``Sink.render``: NaN, timestamps out of range, bad tags) and records the
  server refuses (400 partial write...) go to the dead-letter topic, grouped by reason;
* when transient failures outlast the sink's retries (a long outage), the records are parked on
  ``carpulse.influx-retry`` (gzip of newline-separated records, headers ``attempt``,
  ``first_failed_us`` and ``format``: the sink's ``record_format``, ``influx-line/1`` for both
  InfluxDB sinks), and the agent goes on with its partition instead of stalling it;
* while the sink is known broken, ``deliver`` tries once and parks at once (a circuit breaker),
  so an outage costs one request per micro-batch rather than the whole backoff each time.

The retry agent (``install_retry_agent``) replays parked records one at a time with exponential
backoff, forever (a record without a ``format`` header was parked before the header existed: it
is InfluxDB line protocol; a record of another format than the sink's is dead-lettered as
``retry_format``, never written as garbage): its Kafka offset only moves once a record is written or dead-lettered, so a
crash or a week-long outage loses nothing. It commits that offset itself, record by record, through
the offset guard (``stream.offsets``; the topic is consumed with Faust acks off), since Faust's
rebalance race could otherwise skip parked records and commit past them. Points carry source
timestamps, so a replay that overlaps a write that did land rewrites the same points (no
duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from core.backoff import exponential
from core.errors import SinkError
from stream.offsets import SourceOffsets, guarded
from stream.sinks.base import Block, Points, Sink, WriteResult, backoff_s, bodies

log = logging.getLogger(__name__)

Send = Callable[[bytes, dict[str, bytes]], Awaitable[Any]]

PARK_CHUNK_BYTES: Final = 512 * 1024  # below Kafka's 1 MB default message size, before gzip
# the format of parked records without a ``format`` header (parked before it existed)
LEGACY_FORMAT: Final = "influx-line/1"
REPLAY_MAX_BACKOFF_S: Final = 60.0


@dataclass
class SinkCounters:
    """What happened to every line handed to the sink (nothing leaves uncounted)."""

    written: int = 0
    rejected: int = 0
    refused_rows: int = 0  # rows the sink refused to render (dead-lettered by reason)
    parked_lines: int = 0
    parked_records: int = 0
    replayed_lines: int = 0
    replay_failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str, n: int = 1) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + n


def pack(lines: Sequence[str]) -> list[bytes]:
    """Gzip line-protocol records of bounded size for the retry topic."""
    return pack_blocks([Block.of("", lines)])


def pack_blocks(blocks: Sequence[Block]) -> list[bytes]:
    """``pack`` for rendered blocks (any groups: a replay groups the records again)."""
    return [gzip.compress(b, compresslevel=1) for b, _ in bodies(blocks, 5000, PARK_CHUNK_BYTES)]


def unpack(value: bytes) -> list[str]:
    """Records of one parked record; raises ``SinkError`` if it is not ours."""
    try:
        text = gzip.decompress(value).decode()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise SinkError(f"retry record is not gzip line protocol (or records): {err}") from err
    return [line for line in text.split("\n") if line]


class SinkWriter:
    """Writes through ``sink``; sends refused lines to ``deadletter`` and failures to ``park``."""

    def __init__(self, sink: Sink, deadletter: Send, park: Send) -> None:
        self.sink = sink
        self.deadletter = deadletter
        self.park = park
        self.counters = SinkCounters()
        self._parking = False
        self._users = 0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the sink once for all the agents that share it."""
        async with self._lock:
            if self._users == 0:
                await self.sink.start()
            self._users += 1

    async def close(self) -> None:
        async with self._lock:
            self._users -= 1
            if self._users == 0:
                await self.sink.close()

    async def deliver(self, points: Sequence[Points]) -> None:
        """Render ``points`` through the sink and write them (see the module docstring)."""
        if not points:
            return
        rendered = self.sink.render(points)
        for reason, detail in rendered.refused:
            self.counters.count(reason)
            await self.deadletter(
                detail.encode("utf-8", "replace"),
                {"reason": reason.encode(), "detail": b"see value"},
            )
        self.counters.refused_rows += rendered.refused_rows
        await self.deliver_blocks(rendered.blocks)

    async def deliver_records(self, lines: Sequence[str]) -> None:
        """Write records already in the sink's format."""
        if lines:
            retries = 0 if self.sink.broken else None
            await self._deliver(
                self.sink.write(lines, max_retries=retries), lambda: [Block.of("", lines)]
            )

    async def deliver_blocks(self, blocks: Sequence[Block]) -> None:
        """Write records the sink rendered (``Sink.render``)."""
        if any(map(len, blocks)):
            retries = 0 if self.sink.broken else None
            await self._deliver(self.sink.write_blocks(blocks, max_retries=retries), lambda: blocks)

    async def _deliver(
        self, write: Awaitable[WriteResult], parked: Callable[[], Sequence[Block]]
    ) -> None:
        try:
            result = await write
        except SinkError as err:
            await self._park(parked(), err, attempt=1)
            return
        if self._parking:
            log.warning(
                "%s writes go through again; the retry agent replays what was parked",
                self.sink.label,
            )
            self._parking = False
        self.counters.written += result.written
        await self.dead_letter(result.rejected)

    async def dead_letter(self, rejected: Sequence[tuple[str, str]]) -> None:
        """One dead-letter record per reason, holding the refused lines."""
        by_reason: dict[str, list[str]] = {}
        for line, reason in rejected:
            by_reason.setdefault(reason, []).append(line)
        for reason, lines in by_reason.items():
            self.counters.rejected += len(lines)
            self.counters.count(self.sink.reject_reason, len(lines))
            await self.deadletter(
                "\n".join(lines).encode(),
                {"reason": self.sink.reject_reason.encode(), "detail": reason[:500].encode()},
            )

    async def _park(self, blocks: Sequence[Block], err: Exception, attempt: int) -> None:
        if not self._parking:
            log.error(
                "%s unavailable (%s); parking batches on the retry topic", self.sink.label, err
            )
            self._parking = True
        now = str(int(time.time() * 1e6)).encode()
        fmt = self.sink.record_format.encode()
        for record in pack_blocks(blocks):
            headers = {"attempt": str(attempt).encode(), "first_failed_us": now, "format": fmt}
            await self.park(record, headers)
            self.counters.parked_records += 1
        n = sum(map(len, blocks))
        self.counters.parked_lines += n
        self.counters.count("parked", n)

    async def replay(
        self,
        value: bytes,
        sleep: Callable[[float], Awaitable[Any]],
        headers: Mapping[str, bytes] | None = None,
    ) -> int:
        """Write one parked record, retrying with backoff until it is written or refused."""
        fmt = (headers or {}).get("format") or LEGACY_FORMAT.encode()
        if fmt != self.sink.record_format.encode():
            why = f"parked as {fmt[:80]!r}; sink {self.sink.name} writes {self.sink.record_format}"
            self.counters.count("retry_format")
            await self.deadletter(value, {"reason": b"retry_format", "detail": why.encode()})
            return 0
        try:
            lines = unpack(value)
        except SinkError as err:
            self.counters.count("bad_retry_record")
            await self.deadletter(
                value, {"reason": b"bad_retry_record", "detail": str(err).encode()}
            )
            return 0
        attempt = 0
        while True:
            try:
                result = await self.sink.write(lines)
            except SinkError as err:
                attempt += 1
                self.counters.replay_failures += 1
                delay = min(REPLAY_MAX_BACKOFF_S, backoff_s(attempt) + exponential(attempt, 1, 64))
                log.debug("replay attempt %d failed (%s); next in %.1fs", attempt, err, delay)
                await sleep(delay)
                continue
            self.counters.replayed_lines += result.written
            self.counters.written += result.written
            await self.dead_letter(result.rejected)
            return result.written


def _headers(event: Any) -> dict[str, bytes]:
    """An event's headers as a dict (Faust gives a list of pairs or a mapping)."""
    raw = getattr(event, "headers", None) or getattr(event.message, "headers", None) or {}
    items = raw.items() if isinstance(raw, Mapping) else raw
    return {str(k): bytes(v) for k, v in items if v is not None}


def _topic_name(topic: Any) -> str:
    return topic if isinstance(topic, str) else str(topic.get_topic_name())


def install_retry_agent(app: Any, writer: SinkWriter, retry_topic: Any) -> Any:
    """Register the agent that replays ``retry_topic`` through ``writer`` (one record at a time).

    ``retry_topic`` must be declared with ``acks=False``: the agent commits each record's offset
    itself once the record was written or dead-lettered (``stream.offsets.guarded``).
    """

    @app.agent(retry_topic, concurrency=1)
    async def influx_retry(stream: Any) -> Any:
        await writer.start()
        try:
            async with contextlib.aclosing(
                guarded(stream.events(), SourceOffsets(app, {_topic_name(retry_topic)}))
            ) as events:
                async for event in events:
                    await writer.replay(event.value, asyncio.sleep, _headers(event))
        finally:
            await writer.close()

    return influx_retry
