"""The v1 sink against the real InfluxDB 1.x, through a proxy that injects 429/503/stalls and outages."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from carpulse.stack import Stack
from core.config import InfluxSettings
from core.wire import Samples, TelemetryBatch
from stream.bridge import ensure_topics
from stream.lines import batch_lines, batch_points
from stream.sinks.base import Points
from stream.sinks.influx import InfluxV1Sink
from stream.sinks.writer import SinkWriter
from tests.faultproxy import FaultProxy
from tests.integration.helpers import influx_query

pytestmark = pytest.mark.integration


def sample_batch(device: str, n: int, seed: int = 0) -> TelemetryBatch:
    """``n`` samples of 8 signals, 4 per timestamp, current source time (ms steps)."""
    rng = np.random.default_rng(seed)
    names = [f"Vehicle.Test.S{i}" for i in range(8)]
    t0 = (int(time.time()) - 3600) * 1_000_000
    ts = t0 + np.repeat(np.arange(n // 4 + 1), 4)[:n] * 1000
    sig = (np.arange(n) % 8).astype(np.int32)
    val = np.round(rng.normal(size=n) * 100, rng.integers(0, 6))
    return TelemetryBatch(device, "b", seed, Samples.from_columns(names, sig, ts, val))


def stored(stack: Stack, db: str, device: str) -> dict[tuple[str, int], float]:
    series = influx_query(stack, f"SELECT * FROM telemetry WHERE device='{device}'", db=db)
    if not series:
        return {}
    cols = series[0]["columns"]
    got: dict[tuple[str, int], float] = {}
    for row in series[0]["values"]:
        for col, value in zip(cols[1:], row[1:], strict=True):
            if col != "device" and value is not None:
                got[(col, row[0])] = value
    return got


def settings(url: str, db: str, **kw: object) -> InfluxSettings:
    base: dict[str, object] = {
        "api": "v1",
        "url": url,
        "database": db,
        "timeout_s": 1.0,
        "batch_lines": 500,
        "max_retries": 8,
    }
    base.update(kw)
    return InfluxSettings.model_validate(base)


def influx_url(stack: Stack) -> str:
    return f"http://{stack.s.host}:{stack.s.influx_port}"


def test_faults_leave_exactly_the_points(local_stack: Stack) -> None:
    db = f"faults_{uuid.uuid4().hex[:8]}"
    batch = sample_batch("v1-faults", 8000)
    lines = batch_lines(batch, "telemetry")
    expected = {(n, t): v for n, t, v in batch.samples.records()}
    schedule = ["429", "503", "stall", "ok", "stall_after", "429", "503", "ok", "stall_after"]
    with FaultProxy(influx_url(local_stack), schedule, stall_s=1.5) as proxy:
        sink = InfluxV1Sink(settings(proxy.url, db))

        async def run() -> None:
            await sink.start()
            try:
                result = await sink.write(lines)
                assert result.written == len(lines) and not result.rejected
            finally:
                await sink.close()

        t0 = time.monotonic()
        asyncio.run(run())
        elapsed = time.monotonic() - t0
    actions = [a for _, a, _ in proxy.log]
    assert {"429", "503", "stall", "stall_after"} <= set(actions), actions
    assert sink.retries == 7  # every fault but the two "ok" was retried once
    assert not sink.broken
    assert elapsed < 60
    got = stored(local_stack, db, "v1-faults")
    assert len(got) == len(expected)  # no loss; stalled-then-landed writes added no duplicates
    assert got == expected


def test_retry_after_is_honoured(local_stack: Stack) -> None:
    db = f"retry_after_{uuid.uuid4().hex[:8]}"
    lines = batch_lines(sample_batch("v1-ra", 400), "telemetry")  # one request
    with FaultProxy(influx_url(local_stack), ["429", "503", "ok"], retry_after="0.5") as proxy:
        sink = InfluxV1Sink(settings(proxy.url, db))

        async def run() -> int:
            await sink.start()
            try:
                return (await sink.write(lines)).written
            finally:
                await sink.close()

        assert asyncio.run(run()) == len(lines)
    gaps = [b - a for a, b in itertools.pairwise(proxy.times)]
    assert [a for _, a, _ in proxy.log] == ["429", "503", "ok"]
    # Backoff alone would wait at most 0.2 s then 0.4 s; the server asked for 0.5 s both times.
    assert len(gaps) == 2 and min(gaps) >= 0.5, gaps


def test_partial_write_dead_letters_only_the_refused_lines(local_stack: Stack) -> None:
    db = f"partial_{uuid.uuid4().hex[:8]}"
    sink = InfluxV1Sink(settings(influx_url(local_stack), db, batch_lines=1000))
    t0 = 1_700_000_000_000_000
    good = [f"telemetry,device=pw x={i}.5 {t0 + i}" for i in range(40)]
    conflict = f'telemetry,device=pw x="text" {t0 + 100}'  # field type conflict: x is a float
    garbage = "telemetry,device=pw x=1.0 notatime"
    lines = [*good[:20], conflict, *good[20:], garbage]

    async def run() -> tuple[int, list[tuple[str, str]]]:
        await sink.start()
        try:
            first = await sink.write(good[:1])
            assert first.written == 1
            result = await sink.write(lines)
            return result.written, result.rejected
        finally:
            await sink.close()

    written, rejected = asyncio.run(run())
    assert written == 40
    assert sorted(line for line, _ in rejected) == sorted([conflict, garbage])
    reasons = dict(rejected)
    assert "HTTP 400" in reasons[conflict] and "conflict" in reasons[conflict]
    assert "HTTP 400" in reasons[garbage]
    series = influx_query(local_stack, "SELECT COUNT(x) FROM telemetry", db=db)
    assert series[0]["values"][0][1] == 40


def test_long_outage_parks_on_kafka_and_replay_restores_everything(local_stack: Stack) -> None:
    s = local_stack.settings  # type: ignore[attr-defined]
    db = f"outage_{uuid.uuid4().hex[:8]}"
    topic, dead_topic = f"test.influx-retry.{db}", f"test.deadletter.{db}"
    batches = [sample_batch("v1-outage", 3000, seed) for seed in range(4)]
    expected = {(n, t): v for b in batches for n, t, v in b.samples.records()}

    def points(b: TelemetryBatch) -> list[Points]:  # what the pipeline hands the writer
        return [batch_points(b, "telemetry", np.ones(len(b.samples), bool))]

    async def run(proxy: FaultProxy) -> tuple[SinkWriter, int, list[tuple[bytes, dict]]]:
        await ensure_topics(s.kafka, 1, 1, [topic, dead_topic])
        producer = AIOKafkaProducer(**s.kafka.client_options(), acks="all")
        await producer.start()

        def send(t: str):  # type: ignore[no-untyped-def]
            async def _send(value: bytes, headers: dict[str, bytes]) -> None:
                await producer.send_and_wait(t, value, headers=list(headers.items()))

            return _send

        sink = InfluxV1Sink(settings(proxy.url, db, max_retries=2))
        writer = SinkWriter(sink, send(dead_topic), send(topic))
        await writer.start()
        try:
            await writer.deliver(points(batches[0]))  # before the outage
            proxy.go_down()
            for b in batches[1:]:
                await writer.deliver(points(b))
            requests_in_outage = sink.requests
            proxy.recover()
            consumer = AIOKafkaConsumer(
                topic, **s.kafka.client_options(), auto_offset_reset="earliest"
            )
            await consumer.start()
            records: list[tuple[bytes, dict]] = []  # value, headers
            try:
                deadline = time.monotonic() + 20
                while len(records) < writer.counters.parked_records and time.monotonic() < deadline:
                    for recs in (await consumer.getmany(timeout_ms=500)).values():
                        records.extend((r.value, dict(r.headers)) for r in recs)
            finally:
                await consumer.stop()
            for value, headers in records:
                await writer.replay(value, asyncio.sleep, headers)
        finally:
            await writer.close()
            await producer.stop()
        return writer, requests_in_outage, records

    with FaultProxy(influx_url(local_stack)) as proxy:
        writer, requests, records = asyncio.run(run(proxy))
    c = writer.counters
    lines_after_first = sum(len(batch_lines(b, "telemetry")) for b in batches[1:])
    assert c.parked_lines == lines_after_first
    assert len(records) == c.parked_records
    assert all(h["format"] == b"influx-line/1" and h["attempt"] == b"1" for _, h in records)
    assert c.replayed_lines == lines_after_first
    assert c.rejected == 0
    # Circuit breaker: the first parked batch used its retries (two chunks in flight, the first
    # to give up cancels the other), the next ones one request each.
    assert 2 + 3 + 1 + 1 <= requests <= 2 + 6 + 1 + 1
    got = stored(local_stack, db, "v1-outage")
    assert len(got) == len(expected)
    assert got == expected
