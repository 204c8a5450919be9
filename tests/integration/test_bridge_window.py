"""The bridge's window on the real stack: telemetry waits for it, an event or a full queue ends it,
and each partition's records go as one batch to the partition aiokafka's partitioner gives."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from carpulse.local_files import local_device_mqtt
from carpulse.stack import Stack
from core.config import CarpulseSettings
from core.topics import KAFKA_EVENTS, KAFKA_TELEMETRY, device_topic
from core.wire import (
    Event,
    Samples,
    TelemetryBatch,
    decode_telemetry,
    encode_event,
    encode_telemetry,
)
from edge.publisher import MqttPublisher
from stream.bridge import FLUSH_AT, IngestBridge

pytestmark = pytest.mark.integration

WINDOW_MS = 6000  # far longer than any step below takes: only the window's end can release


def _settings(stack: Stack, group: str) -> CarpulseSettings:
    base: CarpulseSettings = stack.settings  # type: ignore[attr-defined]
    return base.model_copy(
        update={
            "mqtt": base.mqtt.model_copy(update={"share_group": group}),
            "kafka": base.kafka.model_copy(update={"linger_ms": WINDOW_MS}),
        }
    )


def _telemetry(device: str, seq: int) -> bytes:
    rows = [("Vehicle.Speed", 1_000 + seq * 10 + i, float(i)) for i in range(10)]
    return encode_telemetry(TelemetryBatch(device, "w", seq, Samples.from_records(rows)))


async def _wait(cond: Any, timeout: float) -> float:
    """Seconds until ``cond()`` is true (fails after ``timeout``)."""
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - t


async def _records(s: CarpulseSettings, topic: str, key: bytes, want: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, **s.kafka.client_options(), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(out) < want:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(r for r in records if r.key == key)
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
    finally:
        await consumer.stop()
    return [(partitions, r) for r in out]


def test_telemetry_waits_for_the_window_and_an_event_ends_it(local_stack: Stack) -> None:
    s, device = _settings(local_stack, "bridge-window"), "win-car"
    local_stack.provision_device(device)

    async def scenario() -> tuple[int, int, int, float, list[Any], list[Any]]:
        bridge = IngestBridge(s, name="bridge-window")
        await bridge.start()
        pub = MqttPublisher(local_device_mqtt(s, device), boot_id="w")
        await asyncio.to_thread(pub.connect, 10.0, announce=False)
        try:
            # the stack is shared: the broker hands a new subscription the retained statuses of
            # earlier tests' devices (each ends its window at once); let them through first
            await asyncio.sleep(0.5)
            await _wait(lambda: bridge.in_flight() == 0, 5)
            forwarded0, received0 = bridge.counters.forwarded, bridge.counters.received
            for seq in range(3):
                await asyncio.to_thread(pub.publish, device_topic(device, "telemetry"),
                                        _telemetry(device, seq))  # fmt: skip
            await asyncio.to_thread(pub.flush)
            await _wait(lambda: bridge.in_flight() == 3, 5)
            await asyncio.sleep(1.0)  # inside the window: handed to nobody yet
            held, forwarded = bridge.in_flight(), bridge.counters.forwarded - forwarded0
            # messages handed over in the meantime beyond ours: another device's status or event
            # (which ends a window too) came in
            foreign = max(0, bridge.counters.received - received0 - 3)
            event = Event(device, "w", 1, "crash", 1_000, priority=0)
            await asyncio.to_thread(pub.publish, device_topic(device, "events"),
                                    encode_event(event))  # fmt: skip
            took = await _wait(lambda: bridge.in_flight() == 0, WINDOW_MS / 1000)
            telemetry = await _records(s, KAFKA_TELEMETRY, device.encode(), 3)
            events = await _records(s, KAFKA_EVENTS, device.encode(), 1)
        finally:
            await asyncio.to_thread(pub.close)
            await bridge.stop()
        return held, forwarded, foreign, took, telemetry, events

    for attempt in range(3):  # until a window no other device's message ended early
        if attempt:  # a fresh device: the first attempt's records stay in Kafka
            device = f"win-car-{attempt}"
            local_stack.provision_device(device)
        held, forwarded, foreign, took, telemetry, events = asyncio.run(scenario())
        if foreign == 0:
            break
    assert foreign == 0, f"{foreign} messages of other devices reached the bridge in each attempt"
    assert (held, forwarded) == (3, 0)  # gathered, not acknowledged before Kafka had them
    assert took < WINDOW_MS / 1000 - 2  # the event ended the window (all four acknowledged)
    assert len(events) == 1
    assert [decode_telemetry(r.value).seq for _, r in telemetry] == [0, 1, 2]  # arrival order
    # one partition, the one aiokafka's default partitioner gives the device's key
    partitions = telemetry[0][0]
    want = DefaultPartitioner()(device.encode(), partitions, partitions)
    assert {r.partition for _, r in telemetry} == {want}
    assert len({r.offset for _, r in telemetry}) == 3


def test_a_full_queue_ends_the_window(local_stack: Stack) -> None:
    s, device = _settings(local_stack, "bridge-window-full"), "win-full-car"
    local_stack.provision_device(device)

    async def scenario() -> tuple[float, int]:
        bridge = IngestBridge(s, name="bridge-window-full")
        await bridge.start()
        pub = MqttPublisher(local_device_mqtt(s, device), boot_id="w")
        await asyncio.to_thread(pub.connect, 10.0, announce=False)
        try:
            t = time.monotonic()
            for seq in range(FLUSH_AT):
                await asyncio.to_thread(pub.publish, device_topic(device, "telemetry"),
                                        _telemetry(device, seq))  # fmt: skip
            await _wait(lambda: bridge.counters.forwarded >= FLUSH_AT, WINDOW_MS / 1000)
            took = time.monotonic() - t
            seqs = await _records(s, KAFKA_TELEMETRY, device.encode(), FLUSH_AT)
        finally:
            await asyncio.to_thread(pub.close)
            await bridge.stop()
        return took, len(seqs)

    took, n = asyncio.run(scenario())
    assert took < WINDOW_MS / 1000 - 2  # released by the count, not by the window's end
    assert n == FLUSH_AT
