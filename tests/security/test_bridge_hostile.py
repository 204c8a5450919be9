"""The real bridge (Mosquitto -> bridge -> Kafka) against a hostile device: oversized integers, a
zip bomb and a flood are dead-lettered or rate-limited and acknowledged, while a legitimate
device's telemetry still arrives in full."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from carpulse.local_files import local_device_mqtt
from carpulse.stack import Stack
from core.config import KafkaSettings
from core.topics import KAFKA_DEADLETTER, KAFKA_TELEMETRY, device_topic
from core.wire import Samples, TelemetryBatch, decode_telemetry, encode_telemetry
from edge.publisher import MqttPublisher
from stream.bridge import IngestBridge
from tests.security import hostile

pytestmark = [pytest.mark.security, pytest.mark.integration]

EVIL, GOOD = "sec-evil", "sec-good"
GOOD_N, FLOOD_N = 30, 400
RATE, BURST = 20.0, 40
T0 = 1_800_000_000_000_000


def _batch(device: str, seq: int) -> TelemetryBatch:
    rows = [("Vehicle.Speed", T0 + seq * 1000 + i, float(seq * 10 + i)) for i in range(5)]
    return TelemetryBatch(device, "boot", seq, Samples.from_records(rows))


def _evil_payloads() -> list[tuple[str, bytes]]:
    """What the hostile device sends before its flood, with the reason each must get."""
    big_ts = hostile.json_batch(
        device_id=EVIL, samples=[{"name": "Vehicle.Speed", "ts_us": 10**30, "value": 1.0}]
    )
    body = hostile.body_of(encode_telemetry(_batch(EVIL, 1)))
    text_bomb, zero_bomb, _ = hostile.bombs()
    return [
        ("bad_timestamp", big_ts),  # the timestamp of 10**30
        ("bad_seq", hostile.json_batch(device_id=EVIL, seq=2**64 - 1)),
        ("bad_seq", hostile.pack({**body, "q": 2**64 - 1})),
        ("bad_boot_id", hostile.pack({**body, "b": ["boot"]})),
        ("bad_compression", zero_bomb),  # ~1 KB that inflates to 12 MiB
        ("bad_compression", text_bomb),  # a million text samples
    ]


async def _drain(
    kafka: KafkaSettings, topic: str, keep: Any, quiet_s: float, timeout: float
) -> list:
    """Records of ``topic`` that ``keep`` accepts, until none came for ``quiet_s``."""
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_options(), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                new = [r for r in records if keep(r)]
                if new:
                    out.extend(new)
                    last = time.monotonic()
    finally:
        await consumer.stop()
    return out


def test_bridge_refuses_a_hostile_device_and_keeps_a_legitimate_one(local_stack: Stack) -> None:
    base = local_stack.settings  # type: ignore[attr-defined]
    s = base.model_copy(
        update={
            "mqtt": base.mqtt.model_copy(update={"share_group": "sec-bridge"}),
            "bridge": base.bridge.model_copy(
                update={"rate_per_device": RATE, "burst_per_device": BURST}
            ),
        }
    )
    evil_payloads = _evil_payloads()
    assert all(len(p) < 20_000 for _, p in evil_payloads)  # all small on the wire
    flood = [encode_telemetry(_batch(EVIL, 100 + i)) for i in range(FLOOD_N)]
    good = [encode_telemetry(_batch(GOOD, i)) for i in range(GOOD_N)]

    async def scenario() -> dict[str, Any]:
        bridge = IngestBridge(s, name="sec-bridge")
        await bridge.start()
        pubs = []
        try:
            evil_pub = MqttPublisher(local_device_mqtt(s, EVIL), boot_id="boot")
            good_pub = MqttPublisher(local_device_mqtt(s, GOOD), boot_id="boot")
            pubs = [evil_pub, good_pub]
            for p in pubs:
                await asyncio.to_thread(p.connect, 10.0, announce=False)
            evil_topic, good_topic = (
                device_topic(EVIL, "telemetry"),
                device_topic(GOOD, "telemetry"),
            )

            def attack() -> None:
                for _, payload in evil_payloads:
                    evil_pub.publish(evil_topic, payload)
                for payload in flood:
                    evil_pub.publish(evil_topic, payload)
                evil_pub.flush()

            def legit() -> None:  # a car at its normal pace, during the attack
                for payload in good[:-1]:
                    good_pub.publish(good_topic, payload)
                    time.sleep(0.02)
                good_pub.flush()

            threads = [threading.Thread(target=attack), threading.Thread(target=legit)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                await asyncio.sleep(0.1)
            # after the flood: the bridge still takes the legitimate car's next message
            await asyncio.to_thread(good_pub.publish, good_topic, good[-1])
            await asyncio.to_thread(good_pub.flush)
            bs = s.kafka
            got = await _drain(bs, KAFKA_TELEMETRY, lambda r: r.key == GOOD.encode(), 3.0, 60)
            evil_fwd = await _drain(bs, KAFKA_TELEMETRY, lambda r: r.key == EVIL.encode(), 3.0, 30)
            dead = await _drain(
                bs, KAFKA_DEADLETTER,
                lambda r: dict(r.headers).get("mqtt_topic") == evil_topic.encode(), 3.0, 30,
            )  # fmt: skip
            with bridge._pending_lock:
                pending = bridge._pending
            return {"got": got, "evil_fwd": evil_fwd, "dead": dead, "pending": pending,
                    "rate_limited": bridge.counters.rate_limited,
                    "reasons": dict(bridge.counters.reasons)}  # fmt: skip
        finally:
            for p in pubs:
                await asyncio.to_thread(p.close)
            await bridge.stop()

    r = asyncio.run(scenario())
    # the legitimate car lost nothing
    assert sorted(decode_telemetry(x.value).seq for x in r["got"]) == list(range(GOOD_N))
    for rec in r["got"]:
        batch = decode_telemetry(rec.value)
        assert batch.samples.records() == _batch(GOOD, batch.seq).samples.records()
    # each hostile message is dead-lettered with the reason its check gives
    dead_reasons = sorted(dict(x.headers)["reason"].decode() for x in r["dead"])
    assert dead_reasons == sorted(reason for reason, _ in evil_payloads), dead_reasons
    assert all(len(x.value) <= 64 * 1024 for x in r["dead"])  # the bomb is not kept inflated
    # the flood: what the bucket allows went through, the rest was dropped and counted
    forwarded = len(r["evil_fwd"])
    assert 0 < forwarded < FLOOD_N // 2
    assert r["rate_limited"] == len(evil_payloads) + FLOOD_N - forwarded - len(r["dead"])
    assert r["reasons"]["rate_limited"] == r["rate_limited"]
    # and every message was acknowledged: nothing is left in the bridge's in-flight window
    assert r["pending"] == 0


def test_a_record_kafka_refuses_is_dead_lettered_not_held_in_flight(local_stack: Stack) -> None:
    """A valid message over the brokers' message.max.bytes (here the bridge's own cap is set
    above it): Kafka refuses that record for good, so the bridge dead-letters and acknowledges
    it instead of holding it unacknowledged in its in-flight window."""
    base = local_stack.settings  # type: ignore[attr-defined]
    s = base.model_copy(
        update={
            "mqtt": base.mqtt.model_copy(update={"share_group": "sec-bridge-big"}),
            "bridge": base.bridge.model_copy(update={"max_payload_bytes": 8 * 1024 * 1024}),
        }
    )
    rows = [{"name": "Vehicle.Speed", "ts_us": T0 + i, "value": float(i)} for i in range(40_000)]
    big = hostile.json_batch(device_id=EVIL, seq=7, samples=rows)
    assert 1024 * 1024 < len(big) < 8 * 1024 * 1024
    decode_telemetry(big)  # a valid message, only too big for Kafka

    async def scenario() -> dict[str, Any]:
        bridge = IngestBridge(s, name="sec-bridge-big")
        await bridge.start()
        try:
            pub = MqttPublisher(local_device_mqtt(s, EVIL), boot_id="boot")
            await asyncio.to_thread(pub.connect, 10.0, announce=False)
            topic = device_topic(EVIL, "telemetry")
            await asyncio.to_thread(pub.publish, topic, big)
            await asyncio.to_thread(pub.publish, topic, encode_telemetry(_batch(EVIL, 8)))
            await asyncio.to_thread(pub.flush)
            await asyncio.to_thread(pub.close)
            dead = await _drain(
                s.kafka, KAFKA_DEADLETTER,
                lambda r: dict(r.headers).get("reason") == b"kafka_refused", 3.0, 30,
            )  # fmt: skip
            fwd = await _drain(
                s.kafka, KAFKA_TELEMETRY,
                lambda r: r.key == EVIL.encode() and decode_telemetry(r.value).seq == 8, 3.0, 30,
            )  # fmt: skip
            with bridge._pending_lock:
                pending = bridge._pending
            return {"dead": dead, "fwd": fwd, "pending": pending}
        finally:
            await bridge.stop()

    r = asyncio.run(scenario())
    assert len(r["dead"]) == 1 and len(r["dead"][0].value) <= 64 * 1024
    assert len(r["fwd"]) == 1  # the next message went through
    assert r["pending"] == 0


async def _topic_overrides(admin: Any, topic: str) -> dict[str, str]:
    """The topic's own settings (DescribeConfigs source 1: DYNAMIC_TOPIC_CONFIG)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return {e[0]: e[1] for e in res[0].resources[0][4] if e[3] == 1}


async def _set_topic_overrides(admin: Any, topic: str, configs: dict[str, str]) -> dict[str, str]:
    """Replace the topic's own settings and wait until the broker describes them.

    In KRaft mode AlterConfigs returns once the controller has committed the change; the broker
    that answers DescribeConfigs (and the bridge's own read at start) may still hold the old
    metadata for a moment. A CI run read the old value back right after the restore."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    deadline = asyncio.get_running_loop().time() + 30.0
    seen = await _topic_overrides(admin, topic)
    while seen != configs and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        seen = await _topic_overrides(admin, topic)
    return seen


def test_records_over_the_topics_limit_never_break_the_partition(local_stack: Stack) -> None:
    """The bridge sizes its Kafka batches and its largest record by the topics'
    ``max.message.bytes`` (read at start; here the telemetry topic's is lowered to 300,000, under
    the bridge's own 8 MiB cap). Messages that fit alone but not together go in separate
    batches; one over the limit is dead-lettered before the producer gives it a sequence number.
    Before, a broker refused the batch, the idempotent producer's sequence for the partition had a
    gap, and every later message to it failed with OutOfOrderSequenceNumber (left unacknowledged:
    the partition stalled for that bridge)."""
    from aiokafka.admin import AIOKafkaAdminClient

    base = local_stack.settings  # type: ignore[attr-defined]
    s = base.model_copy(
        update={
            "mqtt": base.mqtt.model_copy(update={"share_group": "sec-bridge-batch"}),
            "bridge": base.bridge.model_copy(update={"max_payload_bytes": 8 * 1024 * 1024}),
            "kafka": base.kafka.model_copy(update={"linger_ms": 3000}),  # all in one window
        }
    )
    limit = 300_000

    def message(seq: int, rows: int) -> bytes:
        samples = [
            {"name": "Vehicle.Speed", "ts_us": T0 + seq * 100_000 + i, "value": float(i)}
            for i in range(rows)
        ]
        return hostile.json_batch(device_id=EVIL, boot_id="batch", seq=seq, samples=samples)

    fits = [message(seq, 2_500) for seq in (30, 31, 32)]
    alone_too_big = message(33, 5_000)
    assert all(100_000 < len(m) < limit for m in fits) and len(alone_too_big) > limit
    assert sum(map(len, fits)) > limit  # together: a batch the topic would refuse

    async def scenario() -> dict[str, Any]:
        admin = AIOKafkaAdminClient(**s.kafka.client_options())
        await admin.start()
        before = await _topic_overrides(admin, KAFKA_TELEMETRY)
        lowered = {**before, "max.message.bytes": str(limit)}
        assert await _set_topic_overrides(admin, KAFKA_TELEMETRY, lowered) == lowered
        bridge = IngestBridge(s, name="sec-bridge-batch")
        try:
            await bridge.start()
            pub = MqttPublisher(local_device_mqtt(s, EVIL), boot_id="batch")
            await asyncio.to_thread(pub.connect, 10.0, announce=False)
            topic = device_topic(EVIL, "telemetry")
            for m in [fits[0], alone_too_big, fits[1], fits[2]]:
                await asyncio.to_thread(pub.publish, topic, m)
            await asyncio.to_thread(pub.flush)
            await asyncio.to_thread(pub.close)
            dead = await _drain(
                s.kafka, KAFKA_DEADLETTER,
                lambda r: dict(r.headers).get("reason") == b"kafka_refused"
                and b'"seq": 33' in r.value, 3.0, 40,
            )  # fmt: skip
            fwd = await _drain(
                s.kafka, KAFKA_TELEMETRY,
                lambda r: r.key == EVIL.encode() and decode_telemetry(r.value).boot_id == "batch",
                3.0, 40,
            )  # fmt: skip
            with bridge._pending_lock:
                pending = bridge._pending
            return {
                "dead": dead, "fwd": fwd, "pending": pending, "counters": bridge.counters,
                "limit": bridge.message_limit,
            }  # fmt: skip
        finally:
            await bridge.stop()
            after = await _set_topic_overrides(admin, KAFKA_TELEMETRY, before)
            await admin.close()
            assert after == before  # the shared stack's topic is as it was

    r = asyncio.run(scenario())
    seen = {k: r[k] for k in ("counters", "pending", "limit")}
    assert r["limit"] == limit, seen
    assert [decode_telemetry(x.value).seq for x in r["fwd"]] == [30, 31, 32], seen
    assert len(r["dead"]) == 1, seen
    assert r["counters"].reasons.get("kafka_refused") == 1
    assert r["pending"] == 0
