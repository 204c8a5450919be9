"""The ingest bridge on the real stack: valid batches reach Kafka keyed by device, bad ones are dead-lettered."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer

from carpulse.local_files import local_device_mqtt
from carpulse.stack import Stack
from core.config import KafkaSettings
from core.topics import KAFKA_DEADLETTER, KAFKA_TELEMETRY, device_topic
from core.wire import Samples, TelemetryBatch, decode_telemetry, encode_telemetry
from edge.publisher import MqttPublisher
from stream.bridge import IngestBridge

pytestmark = pytest.mark.integration


async def _collect(kafka: KafkaSettings, topic: str, want: int, timeout: float) -> list:
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_options(), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < want:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                # dead letters have no key: theirs is the MQTT topic they came on (the topic is
                # shared with the session's other tests)
                out.extend(
                    r
                    for r in records
                    if r.key == b"br-car"
                    or dict(r.headers).get("mqtt_topic") == b"carpulse/v1/br-car/telemetry"
                )
    finally:
        await consumer.stop()
    return out


def test_bridge_forwards_valid_and_dead_letters_bad(local_stack: Stack) -> None:
    # Its own share group, so what other tests' bridges left queued for theirs never arrives here.
    base = local_stack.settings  # type: ignore[attr-defined]
    s = base.model_copy(
        update={"mqtt": base.mqtt.model_copy(update={"share_group": "bridge-test"})}
    )

    async def scenario() -> tuple[list, list, IngestBridge]:
        bridge = IngestBridge(s, name="bridge-test")
        await bridge.start()
        try:
            pub = MqttPublisher(local_device_mqtt(s, "br-car"), boot_id="b")
            await asyncio.to_thread(pub.connect, 10.0, announce=False)
            good = TelemetryBatch(
                "br-car", "b", 1, Samples.from_records([("Vehicle.Speed", 5, 42.0)])
            )
            forged = TelemetryBatch(
                "other-car", "b", 2, Samples.from_records([("Vehicle.Speed", 5, 1.0)])
            )
            topic = device_topic("br-car", "telemetry")
            for payload in (encode_telemetry(good), b"\x00garbage", encode_telemetry(forged)):
                await asyncio.to_thread(pub.publish, topic, payload)
            await asyncio.to_thread(pub.flush)
            await asyncio.to_thread(pub.close)
            forwarded = await _collect(s.kafka, KAFKA_TELEMETRY, 1, 20)
            dead = await _collect(s.kafka, KAFKA_DEADLETTER, 2, 20)
        finally:
            await bridge.stop()
        return forwarded, dead, bridge

    forwarded, dead, bridge = asyncio.run(scenario())
    assert [decode_telemetry(r.value).samples.records() for r in forwarded] == [
        [("Vehicle.Speed", 5, 42.0)]
    ]
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
    assert reasons == ["device_mismatch", "unknown_format"]
    assert bridge.counters.dead_lettered == 2
    # The batch, the "offline" status sent by close(), and any retained status of devices from
    # earlier tests that the broker hands to a new subscription; what reached Kafka is exact above.
    assert bridge.counters.forwarded >= 2
