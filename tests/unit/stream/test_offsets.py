"""Source offsets: only the contiguous run from the committed offset is admitted, holes are sought
back, commits follow handled batches (``guarded``: handled records); Faust's consumer is stood in
for by a recording fake."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
from faust.types import TP

from stream import offsets as offsets_mod
from stream.agents import MicroBatcher
from stream.offsets import OffsetGuard, SourceOffsets, guarded


class AioTP(NamedTuple):  # what a message may carry: aiokafka's TopicPartition
    topic: str
    partition: int


T0, T1 = TP("carpulse.telemetry", 0), TP("carpulse.telemetry", 1)


@dataclass
class Message:
    tp: AioTP | TP
    offset: int
    generation_id: int


@dataclass
class Event:
    message: Message


@dataclass
class Consumer:
    _committed_offset: dict[TP, int | None] = field(default_factory=dict)
    earliest: dict[TP, int] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    commit_ok: bool = True
    assigned: set[TP] = field(default_factory=lambda: {T0, T1})
    ends: dict[TP, int] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return self.assigned

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in tps if tp in self.ends}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest.get(tp, 0) for tp in tps}

    def pause_partitions(self, tps: set[TP]) -> None:
        assert all(isinstance(tp, TP) for tp in tps)  # Faust asserts it in its fetcher
        self.calls.append(("pause", list(tps)))

    def resume_partitions(self, tps: set[TP]) -> None:
        assert all(isinstance(tp, TP) for tp in tps)
        self.calls.append(("resume", list(tps)))

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.calls.append(("seek", dict(offsets)))

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.calls.append(("commit", dict(offsets)))
        return self.commit_ok


@dataclass
class App:
    consumer: Consumer
    consumer_generation_id: int = 1
    rebalancing: bool = False


def ev(tp: TP, offset: int, gen: int = 1) -> Event:
    return Event(Message(AioTP(*tp), offset, gen))


def test_guard_admits_the_contiguous_run_only() -> None:
    g = OffsetGuard()
    g.start(T0, 5)
    assert [g.admit(T0, o) for o in (5, 6, 6, 4, 9, 7)] == [
        "admit",
        "admit",
        "again",
        "again",
        "hole",
        "admit",
    ]
    assert g.next[T0] == 8
    g.reset()
    assert not g.knows(T0)


def run_admits(so: SourceOffsets, events: list[Event]) -> list[int]:
    async def main() -> list[int]:
        out = [e.message.offset for e in events if await so.admit(e)]
        await asyncio.sleep(offsets_mod.SETTLE_S * 3)  # the seek-back task
        return out

    return asyncio.run(main())


def test_a_hole_is_sought_back_while_its_partition_is_paused() -> None:
    c = Consumer({T0: 10, T1: 3})
    so = SourceOffsets(App(c))
    admitted = run_admits(so, [ev(T0, 10), ev(T0, 11), ev(T0, 14), ev(T1, 3), ev(T0, 15)])
    assert admitted == [10, 11, 3]  # 14 and 15 wait until 12 and 13 came
    assert c.calls == [("pause", [T0]), ("seek", {T0: 12}), ("resume", [T0])]
    assert so.holes == 1  # 15, right after the seek, is the old fetch's rest: no second seek
    # the records come again: the hole fills, re-deliveries below it are dropped
    again = [ev(T0, 11), ev(T0, 12), ev(T0, 13), ev(T0, 14)]
    assert run_admits(so, again) == [12, 13, 14]
    assert so.beyond == {T0: 15}  # still open: 15 was seen
    assert run_admits(so, [ev(T0, 15)]) == [15]
    assert not so.beyond and so.dropped == 3


def test_an_open_hole_is_sought_again_after_a_while(monkeypatch: Any) -> None:
    c = Consumer({T0: 0})
    so = SourceOffsets(App(c))
    run_admits(so, [ev(T0, 2)])  # 0 committed, 0 and 1 missing: the records after it came

    def seeks_after_check() -> int:
        async def main() -> None:
            so.check()
            await asyncio.sleep(offsets_mod.SETTLE_S * 3)

        asyncio.run(main())
        return sum(call[0] == "seek" for call in c.calls)

    assert seeks_after_check() == 1  # at once: the first seek's records may still come
    monkeypatch.setattr(offsets_mod, "RESEEK_S", 0.0)
    assert seeks_after_check() == 2
    assert c.calls[-1] == ("resume", [T0])


def test_nothing_is_admitted_during_a_rebalance_or_from_an_old_generation() -> None:
    c = Consumer({T0: 7})
    app = App(c, rebalancing=True)
    so = SourceOffsets(app)
    assert run_admits(so, [ev(T0, 7)]) == []  # Faust has not done its seek to the commits yet
    app.rebalancing = False
    assert run_admits(so, [ev(T0, 7, gen=0), ev(T0, 7), ev(T0, 8)]) == [7, 8]
    # a new assignment starts again from the committed offset (another worker may have moved it)
    app.consumer_generation_id = 2
    c._committed_offset[T0] = 20
    assert run_admits(so, [ev(T0, 9, gen=1), ev(T0, 20, gen=2)]) == [20]
    assert c.calls == []


def test_a_partition_with_a_backlog_and_no_deliveries_is_sought_back(monkeypatch: Any) -> None:
    """Seen on Apache Kafka: a partition's last records came while Faust was still rebalancing
    (after its seek to the commits) and never again; nothing after them showed a hole."""
    monkeypatch.setattr(offsets_mod, "STALL_S", 0.0)
    c = Consumer({T0: 7, T1: 3}, ends={T0: 10, T1: 3})
    app = App(c, rebalancing=True)
    so = SourceOffsets(app)
    assert run_admits(so, [ev(T0, 7), ev(T0, 8), ev(T0, 9), ev(T1, 2)]) == []
    app.rebalancing = False

    def check() -> None:
        async def main() -> None:
            so.check()
            await asyncio.sleep(offsets_mod.SETTLE_S * 4)

        asyncio.run(main())

    check()
    # T0 has 7..9 waiting: sought back; T1 is at its end (3): left alone
    assert c.calls == [("pause", [T0]), ("seek", {T0: 7}), ("resume", [T0])]
    assert so.stalls == 1
    assert run_admits(so, [ev(T0, 7), ev(T0, 8), ev(T0, 9)]) == [7, 8, 9]
    check()
    assert len(c.calls) == 3 and not so.beyond  # caught up: no second seek
    # a partition that is not ours any more is left alone
    c.assigned = set()
    c.ends[T0] = 20
    check()
    assert len(c.calls) == 3


def test_a_busy_partition_is_not_a_stall() -> None:
    c = Consumer({T0: 0}, ends={T0: 100})
    so = SourceOffsets(App(c))
    run_admits(so, [ev(T0, 0), ev(T0, 1)])  # records are arriving: STALL_S has not passed

    async def main() -> None:
        so.stall_checked = 0.0  # the watchdog runs, but the partition is not quiet
        so.check()
        await asyncio.sleep(offsets_mod.SETTLE_S * 4)

    asyncio.run(main())
    assert c.calls == [] and so.stalls == 0


def test_without_a_committed_offset_the_partition_starts_at_the_earliest() -> None:
    c = Consumer({T0: None}, earliest={T0: 40})
    so = SourceOffsets(App(c))
    assert run_admits(so, [ev(T0, 40), ev(T0, 41)]) == [40, 41]


def test_a_batch_commits_the_offset_after_its_last_record_per_partition() -> None:
    c = Consumer({T0: 0, T1: 0})
    app = App(c)
    so = SourceOffsets(app)
    batch = [ev(T0, 0), ev(T1, 0), ev(T0, 1)]
    assert asyncio.run(so.commit(batch)) is False  # nothing admitted yet in this generation
    run_admits(so, batch)
    assert asyncio.run(so.commit(batch)) is True
    assert c.calls == [("commit", {T0: 2, T1: 1})]
    app.rebalancing = True  # the next owner reads them again; the dedupe drops them
    assert asyncio.run(so.commit([ev(T0, 2)])) is False
    assert len(c.calls) == 1


def test_microbatcher_with_offsets_buffers_admitted_events_and_commits_after_handling() -> None:
    c = Consumer({T0: 0})
    so = SourceOffsets(App(c))
    handled: list[list[int]] = []

    class Stream:
        async def events(self) -> Any:
            for o in (0, 1, 5, 2, 3):
                yield ev(T0, o)

        async def ack(self, event: Any) -> None:  # pragma: no cover - must not be called
            raise AssertionError("acked with offsets")

    async def handle(_s: Any, batch: list[Event]) -> None:
        assert not [x for x in c.calls if x[0] == "commit"][len(handled) :]  # commit after
        handled.append([e.message.offset for e in batch])

    async def main() -> None:
        b = MicroBatcher(Stream(), handle, 2, 10.0, so)
        await b.run()
        await b.flush()

    asyncio.run(main())
    assert handled == [[0, 1], [2, 3]]  # 5 came before 2..4: not admitted, sought back
    assert [x for x in c.calls if x[0] == "commit"] == [("commit", {T0: 2}), ("commit", {T0: 4})]


def run_guarded(
    so: SourceOffsets, offsets: list[int], body: Any, check_s: float = 10.0, commit_s: float = 0.0
) -> list[int]:
    """Iterate ``guarded`` over events of T0 at ``offsets``, calling ``body`` for each; the
    offsets it handled. The check task and the seek-back tasks must be gone afterwards."""
    handled: list[int] = []

    async def events() -> Any:
        for o in offsets:
            yield ev(T0, o)
        await asyncio.sleep(offsets_mod.SETTLE_S * 3)  # a live stream: a seek-back completes

    async def main() -> None:
        try:
            async with contextlib.aclosing(guarded(events(), so, check_s, commit_s)) as admitted:
                async for event in admitted:
                    await body(event)
                    handled.append(event.message.offset)
        finally:
            rest = asyncio.all_tasks() - {asyncio.current_task()}
            assert not rest, rest

    asyncio.run(main())
    return handled


def test_guarded_commits_each_admitted_event_after_its_handling() -> None:
    c = Consumer({T0: 0})
    so = SourceOffsets(App(c))

    async def body(event: Event) -> None:
        await asyncio.sleep(0)  # the commit of the event before it is done, its own is not
        assert [x for x in c.calls if x[0] == "commit"][-1:] in (
            [],
            [("commit", {T0: event.message.offset})],
        )

    assert run_guarded(so, [0, 1, 4, 2, 3], body) == [0, 1, 2, 3]  # 4 came too early
    commits = [x for x in c.calls if x[0] == "commit"]
    assert commits == [("commit", {T0: o}) for o in (1, 2, 3, 4)]
    assert ("seek", {T0: 2}) in c.calls and so.holes == 1 and so.dropped == 1


def test_guarded_commits_nothing_for_an_event_whose_handling_failed() -> None:
    c = Consumer({T0: 5})
    so = SourceOffsets(App(c))

    async def body(event: Event) -> None:
        if event.message.offset == 6:
            raise RuntimeError("database gone")

    with pytest.raises(RuntimeError, match="database gone"):
        run_guarded(so, [5, 6, 7], body)
    assert [x for x in c.calls if x[0] == "commit"] == [("commit", {T0: 6})]  # 6 comes again


def test_guarded_checks_an_open_hole_while_nothing_arrives(monkeypatch: Any) -> None:
    c = Consumer({T0: 0})
    so = SourceOffsets(App(c))

    async def body(event: Event) -> None:
        await asyncio.sleep(0.3)  # a slow replay: the check task runs meanwhile

    monkeypatch.setattr(offsets_mod, "RESEEK_S", 0.0)
    assert run_guarded(so, [0, 3, 1], body, check_s=0.1) == [0, 1]
    assert sum(x[0] == "seek" for x in c.calls) >= 2  # the first seek, then the check's


def test_guarded_batches_commits_and_commits_the_handled_rest_at_close() -> None:
    c = Consumer({T0: 0})
    so = SourceOffsets(App(c))
    times: list[float] = []

    async def body(event: Event) -> None:
        times.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.02)

    # 12 events 20 ms apart with a 0.1 s commit interval: a few commits, not 12, each of a
    # handled prefix, in order, and the last one (at close) covers all
    assert run_guarded(so, list(range(12)), body, commit_s=0.1) == list(range(12))
    commits = [x[1][T0] for x in c.calls if x[0] == "commit"]
    assert 2 <= len(commits) <= 5, commits
    assert commits == sorted(commits) and commits[-1] == 12


def test_guarded_batched_never_commits_an_event_whose_handling_failed() -> None:
    c = Consumer({T0: 5})
    so = SourceOffsets(App(c))

    async def body(event: Event) -> None:
        if event.message.offset == 8:
            raise RuntimeError("database gone")

    with pytest.raises(RuntimeError, match="database gone"):
        run_guarded(so, [5, 6, 7, 8, 9], body, commit_s=10.0)
    assert [x for x in c.calls if x[0] == "commit"] == [("commit", {T0: 8})]  # 8 comes again
