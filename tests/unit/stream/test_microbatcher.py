"""MicroBatcher: batches by size and by time, acks every event only after its batch was handled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from stream.agents import MicroBatcher


class Events:
    """Stands in for a noack Faust stream: yields events on a schedule, records acks."""

    def __init__(self, schedule: list[tuple[float, int]]) -> None:
        self.schedule = schedule  # (delay before, event)
        self.acked: list[int] = []

    async def events(self) -> AsyncIterator[int]:
        for delay, event in self.schedule:
            await asyncio.sleep(delay)
            yield event

    async def ack(self, event: Any) -> None:
        self.acked.append(event)


def run(
    schedule: list[tuple[float, int]], max_: int, within: float
) -> tuple[list[list[int]], Events]:
    stream = Events(schedule)
    batches: list[list[int]] = []

    async def handle(s: Any, batch: list[int]) -> None:
        assert not set(batch) & set(s.acked)  # nothing of a batch is acked before it is handled
        await asyncio.sleep(0.01)
        batches.append(list(batch))

    async def main() -> None:
        b = MicroBatcher(stream, handle, max_, within)
        await b.run()
        await b.flush()  # the stream ended: what is left

    asyncio.run(main())
    return batches, stream


def test_size_cuts_and_every_event_acked_once_after_handling() -> None:
    batches, stream = run([(0.0, i) for i in range(10)], max_=4, within=10.0)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert stream.acked == list(range(10))


def test_idle_buffer_is_flushed_after_within() -> None:
    schedule = [(0.0, 0), (0.0, 1), (0.3, 2)]  # a pause longer than within after two events
    batches, stream = run(schedule, max_=100, within=0.1)
    assert batches == [[0, 1], [2]]
    assert sorted(stream.acked) == [0, 1, 2]


def run_busy(
    schedule: list[tuple[float, int]], within: float, busy_within: float
) -> tuple[list[list[int]], MicroBatcher]:
    stream = Events(schedule)
    batches: list[list[int]] = []

    async def handle(s: Any, batch: list[int]) -> None:
        batches.append(list(batch))

    async def main() -> MicroBatcher:
        b = MicroBatcher(stream, handle, 1000, within, busy_within_s=busy_within)
        await b.run()
        await b.flush()
        return b

    return batches, asyncio.run(main())


def test_records_that_keep_coming_fill_the_busy_window() -> None:
    # an event every 0.03 s: the first batch after a quiet start closes after `within` (0.05),
    # the next ones, whose first event comes soon after a batch, after `busy_within` (0.3)
    schedule = [(0.03, i) for i in range(30)]
    batches, b = run_busy(schedule, within=0.05, busy_within=0.3)
    assert [e for batch in batches for e in batch] == list(range(30))
    assert len(batches[0]) <= 4  # ~0.05-0.08 s of events
    assert max(map(len, batches)) >= 6  # ~0.3 s of events in a busy batch
    assert len(batches) <= 8 and b.busy_batches >= 2
    # without the busy window, the same stream makes a batch every ~0.05-0.075 s
    plain, p = run_busy(schedule, within=0.05, busy_within=0.0)
    assert [e for batch in plain for e in batch] == list(range(30))
    assert len(plain) >= 7 and p.busy_batches == 0 and max(map(len, plain)) <= 5


def test_an_event_after_a_quiet_spell_waits_only_within() -> None:
    schedule = [(0.0, 0), (0.0, 1), (0.5, 2)]  # 0.5 s of nothing: not busy any more
    batches, b = run_busy(schedule, within=0.05, busy_within=0.3)
    assert batches == [[0, 1], [2]]
    assert b.busy_batches == 0 and b.window == 0.05


def test_single_records_soon_after_each_other_are_no_busy_stream() -> None:
    # each event comes ~0.02 s after the previous one-record batch was handled: a trickle (a
    # slow handle under load used to make every such batch "busy" and wait the long window)
    schedule = [(0.0, 0), (0.07, 1), (0.07, 2), (0.07, 3)]
    batches, b = run_busy(schedule, within=0.05, busy_within=0.3)
    assert batches == [[0], [1], [2], [3]]
    assert b.busy_batches == 0 and b.window == 0.05
