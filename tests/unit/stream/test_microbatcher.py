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
