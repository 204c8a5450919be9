"""The ingest bridge on the real stack: valid batches reach Kafka keyed by device, bad ones are dead-lettered."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer

from carpulse.local_files import local_device_mqtt
from carpulse.stack import Stack
from core.config import CarpulseSettings, KafkaSettings
from core.topics import KAFKA_DEADLETTER, KAFKA_TELEMETRY, device_topic
from core.wire import Samples, TelemetryBatch, decode_telemetry, encode_telemetry
from edge.publisher import MqttPublisher
from stream.bridge import IngestBridge

pytestmark = pytest.mark.integration


def _ours(r: Any) -> bool:
    # dead letters have no key: theirs is the MQTT topic they came on (the topic is shared with
    # the session's other tests)
    return (
        r.key == b"br-car" or dict(r.headers).get("mqtt_topic") == b"carpulse/v1/br-car/telemetry"
    )


async def _collect(
    kafka: KafkaSettings, topic: str, want: int, timeout: float, keep: Any = _ours
) -> list:
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
                out.extend(r for r in records if keep(r))
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


async def _seqs(kafka: KafkaSettings, device: str, want: set[int], timeout: float) -> set[int]:
    """The sequence numbers of ``device``'s telemetry in Kafka, once all of ``want`` are in."""
    consumer = AIOKafkaConsumer(
        KAFKA_TELEMETRY, **kafka.client_options(), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not want <= seen:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                seen.update(
                    decode_telemetry(r.value).seq for r in records if r.key == device.encode()
                )
    finally:
        await consumer.stop()
    return seen


def _forget_session(s: CarpulseSettings, client_id: str) -> None:
    """Connect once with a clean session: the broker drops the bridge's persistent session (and
    its plain subscription, which would queue the later tests' messages for it)."""
    up = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.tls_set(ca_certs=str(s.mqtt.ca_file))
    c.username_pw_set(s.mqtt.username, s.mqtt.resolved_password())
    c.on_connect = lambda *args: up.set()
    c.connect(s.mqtt.host, s.mqtt.port)
    c.loop_start()
    try:
        assert up.wait(10)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize("decode_workers", [0, 2])
def test_a_bridge_stopped_with_records_in_flight_loses_nothing(
    local_stack: Stack, decode_workers: int
) -> None:
    """Stop the bridge (no drain time) while it has messages in flight to Kafka; a bridge started
    under the same name gets what the first did not acknowledge: every message is in Kafka, so
    none was acknowledged without its record. The first bridge's records are in the order sent
    when it checks on the network thread."""
    base = local_stack.settings  # type: ignore[attr-defined]
    # a plain subscription: what the stopped bridge did not acknowledge, and what comes after,
    # waits in its persistent session (a shared one hands new messages to the other members)
    s = base.model_copy(
        update={
            "mqtt": base.mqtt.model_copy(update={"share_group": ""}),
            "bridge": base.bridge.model_copy(update={"decode_workers": decode_workers}),
        }
    )
    device, name, n = f"drain-car-{decode_workers}", f"drain-test-{decode_workers}", 400
    rows = [("Vehicle.Speed", 5 + i, float(i)) for i in range(200)]
    payloads = [
        encode_telemetry(TelemetryBatch(device, "d", seq, Samples.from_records(rows)))
        for seq in range(n)
    ]

    def ours(r: Any) -> bool:
        return r.key == device.encode()

    async def scenario() -> tuple[int, list, set[int]]:
        first = IngestBridge(s, name=name)
        await first.start()
        pub = MqttPublisher(local_device_mqtt(s, device), boot_id="d")
        await asyncio.to_thread(pub.connect, 10.0, announce=False)
        topic = device_topic(device, "telemetry")
        try:

            def publish_all() -> None:
                for p in payloads:
                    pub.publish(topic, p)
                pub.flush()

            publishing = asyncio.ensure_future(asyncio.to_thread(publish_all))
            # stop at a moment with messages in flight, after a quarter went through (on a
            # loaded machine the bridge can catch up with the publisher between two looks)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                first.counters.forwarded < n // 4 or first.in_flight() == 0
            ):
                await asyncio.sleep(0.001)
            in_flight = first.in_flight()
            await first.stop(drain_s=0.0)
            await publishing
            before = await _collect(s.kafka, KAFKA_TELEMETRY, n, 5, keep=ours)
            second = IngestBridge(s, name=name)  # the same session: the broker redelivers
            await second.start()
            try:
                after = await _seqs(s.kafka, device, set(range(n)), 40)
            finally:
                await second.stop()
        finally:
            await asyncio.to_thread(pub.close)
            await asyncio.to_thread(_forget_session, s, f"carpulse-{name}")
        return in_flight, before, after

    in_flight, before, after = asyncio.run(scenario())
    assert in_flight > 0  # stopped with messages handed to Kafka and not acknowledged yet
    first_seqs = [decode_telemetry(r.value).seq for r in before]
    # the first bridge forwarded some (all of them when the publisher was done before the stop:
    # the producer's stop flushes what was handed over, and those answers come too late to ack)
    assert len(first_seqs) > 0
    if decode_workers == 0:  # one partition (one key), checked and sent in arrival order
        assert first_seqs == sorted(first_seqs) and len(set(first_seqs)) == len(first_seqs)
    # what the first bridge left unacknowledged came again: nothing is missing
    assert after == set(range(n))
