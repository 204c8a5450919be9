"""The InfluxDB retry agent replays parked records in offset order and commits each offset itself,
only once its record was written (the topic is consumed with Faust acks off, ``stream.offsets``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.config import CarpulseSettings
from core.errors import SinkError
from stream import offsets as offsets_mod
from stream.app import build_app
from stream.sinks import writer as retry_mod
from stream.sinks.influx import WriteResult
from stream.sinks.writer import SinkWriter, install_retry_agent, pack
from tests.unit.stream.test_offsets import T0, App, Consumer, Event, Message

TP0 = T0._replace(topic="carpulse.influx-retry")


@dataclass
class Parked(Event):
    value: bytes = b""


class FlakySink:
    """InfluxDB down for the first ``down`` writes; logs every write with what it carried."""

    name, label, record_format, reject_reason = (
        "flaky",
        "InfluxDB",
        "influx-line/1",
        "influx_rejected",
    )

    def __init__(self, log: list[tuple[str, Any]], down: int) -> None:
        self.log = log
        self.down = down
        self.broken = False

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, lines: Sequence[str], *, max_retries: int | None = None) -> WriteResult:
        if self.down > 0:
            self.down -= 1
            self.log.append(("failed", lines[0]))
            raise SinkError("503 from InfluxDB")
        self.log.append(("written", lines[0]))
        return WriteResult(written=len(lines))


class AgentApp(App):
    def agent(self, topic: Any, **kwargs: Any) -> Any:
        return lambda fun: fun


def test_replays_in_order_and_commits_records_only_once_written(monkeypatch: Any) -> None:
    monkeypatch.setattr(retry_mod, "REPLAY_MAX_BACKOFF_S", 0.01)  # the replay's backoff
    log: list[tuple[str, Any]] = []
    consumer = Consumer({TP0: 0})

    async def commit(offsets: dict[Any, int]) -> bool:
        log.append(("commit", dict(offsets)))
        return True

    consumer._commit = commit  # type: ignore[method-assign]

    async def never(value: bytes, headers: dict[str, bytes]) -> None:  # pragma: no cover
        raise AssertionError("nothing is dead-lettered or parked here")

    writer = SinkWriter(FlakySink(log, down=2), never, never)  # type: ignore[arg-type]
    agent = install_retry_agent(AgentApp(consumer), writer, "carpulse.influx-retry")

    class Stream:
        async def events(self) -> Any:
            # 3 comes before 2 (Faust's rebalance race): sought back, 2 and 3 come again
            for o in (0, 1, 3, 2, 3):
                line = f"telemetry,device=d v={o} {o}"
                yield Parked(Message(TP0, o, 1), pack([line])[0])
            await asyncio.sleep(offsets_mod.SETTLE_S * 3)

    asyncio.run(agent(Stream()))
    writes = [(what, int(x.rsplit(" ", 1)[1]) if isinstance(x, str) else x) for what, x in log]
    assert [w for w in writes if w[0] != "commit"] == [
        ("failed", 0),
        ("failed", 0),
        ("written", 0),
        ("written", 1),
        ("written", 2),
        ("written", 3),
    ]
    # commits are batched (stream.offsets.COMMIT_S): each one only after the records it covers
    # were written, never backwards, and the last one covers all four
    commits = [(i, w[1][TP0]) for i, w in enumerate(writes) if w[0] == "commit"]
    assert commits and commits[-1][1] == 4
    assert [c for _, c in commits] == sorted(c for _, c in commits)
    for i, upto in commits:
        assert ("written", upto - 1) in writes[:i]
    assert ("seek", {TP0: 2}) in consumer.calls
    assert writer.counters.replayed_lines == 4 and writer.counters.replay_failures == 2


def test_the_worker_consumes_the_retry_topic_with_acks_off() -> None:
    app = build_app(CarpulseSettings())
    try:
        assert app.agents["stream.sinks.writer.influx_retry"].channel.acks is False
    finally:
        thread = getattr(app.consumer, "_thread", None)
        if thread is not None and not thread.thread_loop.is_closed():
            thread.thread_loop.close()


def test_a_bad_parked_record_is_dead_lettered_and_committed() -> None:
    consumer = Consumer({TP0: 7})
    commits: list[dict[Any, int]] = []
    dead: list[dict[str, bytes]] = []

    async def commit(offsets: dict[Any, int]) -> bool:
        commits.append(dict(offsets))
        return True

    async def to_dead(value: bytes, headers: dict[str, bytes]) -> None:
        assert not commits  # dead-lettered before its offset is committed
        dead.append(headers)

    async def never(value: bytes, headers: dict[str, bytes]) -> None:  # pragma: no cover
        raise AssertionError("not parked again")

    consumer._commit = commit  # type: ignore[method-assign]
    writer = SinkWriter(FlakySink([], down=0), to_dead, never)  # type: ignore[arg-type]
    agent = install_retry_agent(AgentApp(consumer), writer, "carpulse.influx-retry")

    class Stream:
        async def events(self) -> Any:
            yield Parked(Message(TP0, 7, 1), b"not gzip")

    asyncio.run(agent(Stream()))
    assert [h["reason"] for h in dead] == [b"bad_retry_record"] and commits == [{TP0: 8}]


def test_parked_records_carry_their_format_and_old_records_still_replay() -> None:
    """Records parked before the ``format`` header existed are InfluxDB line protocol and are
    replayed; a record of another sink's format is dead-lettered, never written as garbage."""
    log: list[tuple[str, Any]] = []
    parked: list[tuple[bytes, dict[str, bytes]]] = []
    dead: list[tuple[bytes, dict[str, bytes]]] = []

    async def to_park(value: bytes, headers: dict[str, bytes]) -> None:
        parked.append((value, headers))

    async def to_dead(value: bytes, headers: dict[str, bytes]) -> None:
        dead.append((value, headers))

    async def no_sleep(_s: float) -> None: ...

    async def run() -> list[int]:
        writer = SinkWriter(FlakySink(log, down=1), to_dead, to_park)  # type: ignore[arg-type]
        await writer.deliver_records(["telemetry,device=d v=1 1"])  # down: parked
        [(value, headers)] = parked
        assert headers["format"] == b"influx-line/1" and headers["attempt"] == b"1"
        old = {"attempt": b"1", "first_failed_us": b"1700000000000000"}  # as 0.x parked them
        other = {**old, "format": b"timescale-row/1"}
        return [
            await writer.replay(value, no_sleep, headers),
            await writer.replay(pack(["telemetry,device=d v=2 2"])[0], no_sleep, old),
            await writer.replay(pack(["telemetry,device=d v=3 3"])[0], no_sleep, None),
            await writer.replay(pack(["d,1,3.0"])[0], no_sleep, other),
        ]

    assert asyncio.run(run()) == [1, 1, 1, 0]
    assert [x for what, x in log if what == "written"] == [
        "telemetry,device=d v=1 1",
        "telemetry,device=d v=2 2",
        "telemetry,device=d v=3 3",
    ]
    [(_, headers)] = dead
    assert headers["reason"] == b"retry_format" and b"timescale-row/1" in headers["detail"]


def test_the_retry_agent_reads_headers_of_faust_events_and_kafka_messages() -> None:
    from types import SimpleNamespace

    FaustEvent = lambda: SimpleNamespace(headers={"format": b"influx-line/1"})  # noqa: E731
    KafkaMessage = lambda: SimpleNamespace(headers=[("format", b"x/1"), ("empty", None)])  # noqa: E731

    class EventWithoutHeaders:
        headers = None
        message = KafkaMessage()

    assert retry_mod._headers(FaustEvent()) == {"format": b"influx-line/1"}
    assert retry_mod._headers(EventWithoutHeaders()) == {"format": b"x/1"}
