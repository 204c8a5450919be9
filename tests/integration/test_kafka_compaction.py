"""vehicle-state is compacted on the real broker: after the cleaner ran, the latest value per key."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from carpulse.stack import Stack
from core.topics import KAFKA_VEHICLE_STATE
from tests.integration.helpers import topic_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = 3
UPDATES = 400


async def _alter(options: dict, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, KAFKA_VEHICLE_STATE, configs)]
        )
    finally:
        await admin.close()


async def _read_all(options: dict, keys: set[bytes], timeout: float) -> list[tuple[bytes, dict]]:
    consumer = AIOKafkaConsumer(
        KAFKA_VEHICLE_STATE, **options, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[bytes, dict]] = []
    try:
        end = await consumer.end_offsets(list(consumer.assignment()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out += [(r.key, json.loads(r.value)) for r in records if r.key in keys]
            positions = {tp: await consumer.position(tp) for tp in end}
            if all(positions[tp] >= end[tp] for tp in end):
                break
    finally:
        await consumer.stop()
    return out


def test_vehicle_state_keeps_the_latest_value_per_key(local_stack: Stack) -> None:
    k = local_stack.settings.kafka  # type: ignore[attr-defined]
    opts = k.client_options()
    assert topic_config(local_stack, KAFKA_VEHICLE_STATE)["cleanup.policy"] == "compact"
    run = uuid.uuid4().hex[:6]
    keys = [f"VINCOMPACT{run}{i}".encode() for i in range(KEYS)]
    before = topic_config(local_stack, KAFKA_VEHICLE_STATE)
    # roll segments quickly and let the cleaner take any dirty log at once
    # AlterConfigs replaces the topic's whole dynamic config: keep what provisioning set
    kept = {"cleanup.policy": "compact", "min.insync.replicas": before["min.insync.replicas"]}
    fast = {
        **kept,
        "segment.ms": "500",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "1000",
    }
    asyncio.run(_alter(opts, fast))
    try:

        async def produce(start: int, count: int) -> None:
            producer = AIOKafkaProducer(**opts, acks="all", linger_ms=5)
            await producer.start()
            try:
                for i in range(start, start + count):
                    key = keys[i % KEYS]
                    doc = {"vin": key.decode(), "update": i}
                    await producer.send(KAFKA_VEHICLE_STATE, json.dumps(doc).encode(), key=key)
                await producer.flush()
            finally:
                await producer.stop()

        asyncio.run(produce(0, UPDATES))
        latest = {keys[i % KEYS]: i for i in range(UPDATES)}
        # after segment.ms, more writes roll the segment so the old one can be cleaned
        deadline = time.monotonic() + 90
        n = UPDATES
        seen: list[tuple[bytes, dict]] = []
        while time.monotonic() < deadline:
            time.sleep(1.0)
            asyncio.run(produce(n, KEYS))
            for i in range(n, n + KEYS):
                latest[keys[i % KEYS]] = i
            n += KEYS
            seen = asyncio.run(_read_all(opts, set(keys), 20))
            if len(seen) < n // 2:
                break
        assert len(seen) < n // 2, f"the cleaner did not compact: {len(seen)} of {n} remain"
        last = {}
        for key, doc in seen:
            last[key] = doc["update"]
        assert last == latest  # the newest value of every key survived, in order
    finally:
        asyncio.run(_alter(opts, kept))
