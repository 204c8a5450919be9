"""Source offsets an agent admits and commits itself: each partition in order, without holes.

Why (faust-streaming 0.15, seen in the two-worker kill -9 test, README "Stream"): at the end of a
rebalance Faust resumes the flow and the stream partitions *before* it seeks them to their
committed offsets (``Recovery.on_recovery_completed``: ``resume_partitions``, then
``perform_seek``). Records fetched from the old position during the seek go into the agent's
queue; ``flow_control.resume()`` right after the seek clears that queue, and
``Consumer._drain_messages`` stores the offset of the record it was delivering as the read offset
*after* the seek reset it, so the re-read records below it are dropped as already read ("DROPPED
MESSAGE ROFF" with ``DEVLOG=1``). Records still in flight from the old fetch also register "gaps"
that Faust's commit counts as acknowledged. Seen: offsets 350-409 of partition 2 never reached the
agent (1 to 60 records lost in 4 of 12 runs).

What we do instead of trusting that (every agent of ours: telemetry, events, the InfluxDB retry
agent and the CRM agents):

* the topic is consumed with Faust acks off (``acks=False``): Faust neither tracks,
  gap-acks nor commits its offsets; ``SourceOffsets.commit`` commits, after a batch was handled,
  the offset after the last record of each partition it holds;
* ``OffsetGuard`` admits a partition's records only as the contiguous run that starts at the
  committed position of the current assignment: an offset below it is a re-delivery (dropped, it
  was admitted before), an offset above it means Faust skipped records (a hole);
* on a hole the partition is paused (so the rest of an in-flight fetch cannot move Faust's read
  offset again), sought back to the first missing offset and resumed: the records come again;
* records of an old consumer generation, or delivered while Faust is still rebalancing (before its
  final seek), are not admitted: Faust delivers them again from the committed offset.

Agents that batch use ``MicroBatcher`` (``stream.agents``) with a ``SourceOffsets``; agents that
handle one record at a time iterate ``guarded(stream.events(), SourceOffsets(app))``.

Assumption: on these topics (telemetry, events, influx-retry, predictions, alerts) consecutive
records have consecutive offsets. That holds for a non-compacted topic written without transactions
(the bridge's producer, the stream worker's Faust producer), on Apache Kafka. With
transactional producers (commit markers take offsets) or compaction, a hole would be permanent: the
guard would seek back again and again and log it, never skip records silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, Hashable, Iterable
from typing import Any, Final, Literal

from faust.types import TP

log = logging.getLogger(__name__)

Verdict = Literal["admit", "again", "hole"]

#: pause before seeking back, so a record the fetcher is delivering right now lands first
SETTLE_S: Final = 0.05
#: least time between two seeks of one partition for the same missing offset
RESEEK_S: Final = 1.0
#: a partition of ours with records beyond the next admitted offset and nothing delivered for this
#: long is sought back to that offset (the stall watchdog, ``check``)
STALL_S: Final = 5.0
#: ``guarded``: longest wait before a handled record's offset is committed (one commit per
#: record cost the CRM worker ~1 ms each, 40 % of its replay rate)
COMMIT_S: Final = 0.2


class OffsetGuard:
    """Per partition, the next offset to admit; admits only the contiguous run of offsets."""

    def __init__(self) -> None:
        self.next: dict[Hashable, int] = {}

    def knows(self, tp: Hashable) -> bool:
        return tp in self.next

    def start(self, tp: Hashable, position: int) -> None:
        """``position``: the committed offset the partition is consumed from (its first record)."""
        self.next[tp] = position

    def admit(self, tp: Hashable, offset: int) -> Verdict:
        """``admit``: the next record; ``again``: already admitted; ``hole``: records before it missing."""
        expected = self.next[tp]
        if offset == expected:
            self.next[tp] = offset + 1
            return "admit"
        return "again" if offset < expected else "hole"

    def reset(self) -> None:
        self.next.clear()


class SourceOffsets:
    """An agent's source offsets under a Faust app: admit, repair holes, commit.

    ``admit(event)`` before an event is buffered, ``commit(events)`` after a batch of admitted
    events was handled. Counters: ``holes`` (seeks back), ``dropped`` (not admitted).
    """

    def __init__(self, app: Any, topics: Iterable[str] = ()) -> None:
        """``topics``: what the agent consumes, so the stall watchdog also watches partitions
        from which nothing was ever delivered (else learnt from the events)."""
        self.app = app
        self.guard = OffsetGuard()
        self.generation: int | None = None
        self.repairing: dict[Any, asyncio.Task[None]] = {}
        self.last_seek: dict[Any, tuple[int, float]] = {}
        self.beyond: dict[Any, int] = {}  # per partition with a hole: the highest offset seen
        self.topics: set[str] = set(topics)  # what this agent consumes (given, or seen)
        self.arrived: dict[
            Any, float
        ] = {}  # per partition: when a record last came (admitted or not)
        self.stall_checked = time.monotonic()
        self.stall_task: asyncio.Task[None] | None = None
        self.stalls = 0
        self.holes = 0
        self.dropped = 0
        self.committed: dict[Any, int] = {}  # per partition: the last offset this guard committed
        # every guard of the app, for the consumer-lag gauge (stream.metrics)
        guards = getattr(app, "carpulse_offset_guards", None)
        if isinstance(guards, list):
            guards.append(self)

    def _current(self) -> bool:
        """True once Faust finished the rebalance (its final seek) of the current generation."""
        gen = self.app.consumer_generation_id
        if gen != self.generation:  # a new assignment: positions start again from the commits
            self.generation = gen
            self.guard.reset()
            self.last_seek.clear()
            self.beyond.clear()
        return not self.app.rebalancing

    async def _position(self, tp: Any) -> int:
        consumer = self.app.consumer
        # set by Faust's seek to the committed offsets at the end of the rebalance (None: none
        # committed, or 0); the consumer then starts at the earliest offset
        committed = consumer._committed_offset.get(tp)
        if committed is not None and committed >= 0:
            return int(committed)
        earliest = await consumer.earliest_offsets(tp)
        return int(earliest.get(tp) or 0)

    async def admit(self, event: Any) -> bool:
        message = event.message
        # Faust's own TP: the message may carry aiokafka's, which resume_partitions would put
        # as is into the active set (Faust asserts they are all TP, in its fetcher)
        tp = TP(message.tp.topic, message.tp.partition)
        self.topics.add(tp.topic)
        self.arrived[tp] = time.monotonic()
        if not self._current() or message.generation_id != self.generation:
            self.dropped += 1
            return False
        if not self.guard.knows(tp):
            position = await self._position(tp)
            if not self._current() or message.generation_id != self.generation:
                self.dropped += 1
                return False
            self.guard.start(tp, position)
        verdict = self.guard.admit(tp, message.offset)
        if verdict == "admit":
            if self.beyond.get(tp, -1) < self.guard.next[tp]:
                self.beyond.pop(tp, None)  # the hole is filled
            return True
        self.dropped += 1
        if verdict == "hole":
            self.beyond[tp] = max(self.beyond.get(tp, -1), message.offset)
            self._repair(tp, self.guard.next[tp], message.offset)
        return False

    def check(self) -> None:
        """Seek again where a hole stays open (the records after it may all have arrived)."""
        if not self._current():
            return
        for tp, seen in list(self.beyond.items()):
            self._repair(tp, self.guard.next[tp], seen)
        now = time.monotonic()
        if now - self.stall_checked >= STALL_S and (
            self.stall_task is None or self.stall_task.done()
        ):
            self.stall_checked = now
            self.stall_task = asyncio.create_task(self._stalls(self.generation))

    async def _stalls(self, generation: int | None) -> None:
        """Seek back a partition of ours that has records beyond the next admitted offset but
        delivered nothing for ``STALL_S``.

        Seen on Apache Kafka after a takeover: a partition's remaining records were all delivered
        during Faust's final seek (not admitted: Faust was still rebalancing) and Faust did not
        deliver them again; as nothing came after them, no hole ever showed. Whatever the cause,
        a partition with a backlog and no deliveries gets its records again from the next
        offset to admit (re-deliveries below it are dropped by the guard).
        """
        try:
            consumer = self.app.consumer
            tps = [tp for tp in consumer.assignment() if tp.topic in self.topics]
            if not tps:
                return
            ends = await consumer.highwaters(*tps)
            now = time.monotonic()
            for tp in tps:
                if generation != self.app.consumer_generation_id or self.app.rebalancing:
                    return
                end = ends.get(tp)
                if end is None or tp in self.repairing:
                    continue
                if now - self.arrived.get(tp, 0.0) < STALL_S:
                    continue
                if not self.guard.knows(tp):
                    position = await self._position(tp)
                    if generation != self.app.consumer_generation_id or self.app.rebalancing:
                        return
                    if not self.guard.knows(tp):
                        self.guard.start(tp, position)
                nxt = self.guard.next[tp]
                if nxt >= end:
                    continue
                self.stalls += 1
                log.info(
                    "%s[%s]: records %d..%d waiting and nothing delivered for %.0f s; "
                    "seeking back to %d",
                    tp.topic,
                    tp.partition,
                    nxt,
                    end - 1,
                    now - self.arrived.get(tp, 0.0),
                    nxt,
                )
                self.beyond[tp] = max(self.beyond.get(tp, -1), end - 1)
                self.arrived[tp] = now  # one seek per quiet period
                self._repair(tp, nxt, end)
        except Exception:  # the next check tries again
            log.exception("checking the partitions of %s for stalls failed", sorted(self.topics))

    def _repair(self, tp: Any, missing: int, seen: int) -> None:
        if tp in self.repairing:
            return
        last = self.last_seek.get(tp)
        if last is not None and last[0] == missing and time.monotonic() - last[1] < RESEEK_S:
            return  # records of the last seek's in-flight fetch; the seek's records follow
        self.last_seek[tp] = (missing, time.monotonic())
        self.holes += 1
        # routine after a takeover: what Faust delivered during its final seek was not admitted
        log.info(
            "%s[%s]: offset %d came, %d..%d did not since the rebalance (Faust rebalance race); "
            "seeking back to %d",
            tp.topic,
            tp.partition,
            seen,
            missing,
            seen - 1,
            missing,
        )
        task = asyncio.create_task(self._seek_back(tp, missing, self.generation))
        self.repairing[tp] = task
        task.add_done_callback(lambda _t: self.repairing.pop(tp, None))

    async def _seek_back(self, tp: Any, offset: int, generation: int | None) -> None:
        consumer = self.app.consumer
        consumer.pause_partitions({tp})  # the fetcher skips the rest of what it holds for tp
        try:
            await asyncio.sleep(SETTLE_S)
            if self.app.consumer_generation_id == generation and not self.app.rebalancing:
                await consumer.seek_wait({tp: offset})
        except Exception:  # a failed seek: check() seeks again from the ticker
            log.exception("seeking %s back to %d failed", tp, offset)
            self.last_seek.pop(tp, None)
        finally:
            if self.app.consumer_generation_id == generation and not self.app.rebalancing:
                consumer.resume_partitions({tp})

    async def commit(self, events: Iterable[Any]) -> bool:
        """Commit, per partition, the offset after the last of ``events`` (all handled)."""
        offsets: dict[Any, int] = {}
        for event in events:
            m = event.message
            if m.generation_id == self.generation:
                tp = TP(m.tp.topic, m.tp.partition)
                offsets[tp] = max(offsets.get(tp, -1), m.offset + 1)
        if not offsets or not self._current():
            return False  # a rebalance: the next owner reads them again (dedupe, effect keys)
        # Faust's own commit path minus its ack bookkeeping (acks are off on this topic);
        # it commits only partitions still assigned, and returns False after a rebalance
        done = bool(await self.app.consumer._commit(offsets))
        if done:
            self.committed.update(offsets)
        return done

    async def watch(self, interval_s: float) -> None:
        """Run ``check`` every ``interval_s`` (for an agent without a ticker of its own)."""
        while True:
            await asyncio.sleep(interval_s)
            self.check()

    async def close(self) -> None:
        if self.stall_task is not None:
            self.stall_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.stall_task
        for task in list(self.repairing.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def guarded(
    events: AsyncIterable[Any],
    offsets: SourceOffsets,
    check_s: float = 1.0,
    commit_s: float = COMMIT_S,
) -> AsyncGenerator[Any, None]:
    """The admitted ``events``, one at a time; an event counts as handled once the loop asks for the next.

    For agents that handle record by record. Handled events are committed at most every
    ``commit_s`` (0: each one at once), by a task that also commits when the stream goes idle, and
    once more when the generator closes; a body that raises or breaks leaves its event unhandled,
    so it is never committed and comes again. A crash loses at most ``commit_s`` of commits: those
    records are delivered again (the agents are idempotent: dedupe table, effect keys). Iterate it
    in ``contextlib.aclosing`` so that the hole check (every ``check_s``), the commit task and the
    seek-back tasks end with the agent.
    """
    handled: list[Any] = []  # handled and not committed yet, in order

    async def flush() -> None:
        if handled:
            batch = handled[:]
            del handled[:]
            await offsets.commit(batch)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(commit_s)
            await flush()

    watch = asyncio.create_task(offsets.watch(check_s))
    ticker = asyncio.create_task(flusher()) if commit_s > 0 else None
    try:
        async for event in events:
            if not await offsets.admit(event):
                continue
            yield event
            handled.append(event)
            if ticker is None:
                await flush()
    finally:
        for task in (watch, ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await flush()
        except Exception as err:  # shutting down: the next owner reads them again
            log.warning("last commit of %d handled records failed: %s", len(handled), err)
        await offsets.close()
