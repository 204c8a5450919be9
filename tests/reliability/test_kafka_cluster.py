"""A three-broker KRaft cluster (replication 3, min.insync.replicas 2) loses nothing when a broker dies."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from carpulse.stack import Stack, free_stack_settings, throwaway_stack, wait_until
from core.config import KafkaSettings, load_settings
from core.topics import KAFKA_TELEMETRY
from tests.integration.helpers import topic_config

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

RECORDS = 3000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("cluster")
    with throwaway_stack(root, kafka_brokers=3, kafka_heap_mb=384) as stack:
        stack.settings = load_settings(stack.config_file)  # type: ignore[attr-defined]
        yield stack


def _kafka(stack: Stack) -> KafkaSettings:
    return stack.settings.kafka  # type: ignore[attr-defined,no-any-return]


async def _leader(k: KafkaSettings, topic: str) -> tuple[int, set[int], int]:
    """(leader of partition 0, its ISR, the active controller) as the cluster reports them."""
    admin = AIOKafkaAdminClient(**k.client_options())
    await admin.start()
    try:
        desc = await admin.describe_topics([topic])
        p0 = next(p for p in desc[0]["partitions"] if p["partition"] == 0)
        info = await admin.describe_cluster()
        return int(p0["leader"]), {int(r) for r in p0["isr"]}, int(info["controller_id"])
    finally:
        await admin.close()


def test_topics_are_replicated_three_ways(cluster: Stack) -> None:
    k = _kafka(cluster)
    assert k.replication == 3 and k.min_insync_replicas == 2
    assert topic_config(cluster, KAFKA_TELEMETRY)["min.insync.replicas"] == "2"
    _leader_id, isr, _ctl = asyncio.run(_leader(k, KAFKA_TELEMETRY))
    assert isr == {1, 2, 3}


@pytest.mark.parametrize("victim", ["leader", "controller"])
def test_kill_9_of_a_broker_loses_and_duplicates_nothing(cluster: Stack, victim: str) -> None:
    k = _kafka(cluster)
    topic = f"cluster-test-{victim}-{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        admin = AIOKafkaAdminClient(**k.client_options())
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(topic, 1, 3, topic_configs={"min.insync.replicas": "2"})]
            )
        finally:
            await admin.close()

    asyncio.run(create())

    def placed() -> tuple[int, set[int], int] | None:
        """The new partition has a leader and all three replicas in sync (it was a 1 s sleep)."""
        got = asyncio.run(_leader(k, topic))
        return got if got[0] >= 0 and got[1] == {1, 2, 3} else None

    leader, _isr, controller = wait_until(
        placed, 30, f"{topic} to have a leader and three in-sync replicas", 0.1,
        ignore=(StopIteration, KafkaError),
    )  # fmt: skip
    target = leader if victim == "leader" else controller
    killed_at: list[float] = []

    async def produce() -> None:
        producer = AIOKafkaProducer(
            **k.client_options(),
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            request_timeout_ms=30_000,
        )
        await producer.start()
        try:
            for i in range(RECORDS):
                if i == RECORDS // 3:
                    await producer.flush()
                    await asyncio.to_thread(cluster.kill_service, f"kafka-{target}", signal.SIGKILL)
                    killed_at.append(time.monotonic())
                await producer.send(topic, str(i).encode(), key=str(i % 7).encode())
                if i % 200 == 0:
                    await asyncio.sleep(0.01)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())

    async def consume() -> list[int]:
        consumer = AIOKafkaConsumer(
            topic, **k.client_options(), group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        out: list[int] = []
        try:
            deadline = time.monotonic() + 60
            while len(out) < RECORDS and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                out += [int(r.value) for records in batch.values() for r in records]
            batch = await consumer.getmany(timeout_ms=1000)  # anything beyond is a duplicate
            out += [int(r.value) for records in batch.values() for r in records]
        finally:
            await consumer.stop()
        return out

    got = asyncio.run(consume())
    assert sorted(set(got)) == list(range(RECORDS)), f"lost {RECORDS - len(set(got))}"
    assert len(got) == RECORDS, f"{len(got) - RECORDS} duplicates"
    assert got == sorted(got)  # one partition: order kept across the failover
    # the node comes back and catches up: all three replicas in sync again
    cluster.start_service(f"kafka-{target}")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        _l, isr, _c = asyncio.run(_leader(k, topic))
        if isr == {1, 2, 3}:
            break
        time.sleep(0.25)
    assert isr == {1, 2, 3}


def test_kafka_data_survives_stack_down_and_up(tmp_path: Path) -> None:
    """The single local broker keeps its log across `stack down` / `stack up`."""
    stack = Stack(free_stack_settings(tmp_path))
    try:
        stack.up()
        k = load_settings(stack.config_file).kafka

        async def send() -> None:
            producer = AIOKafkaProducer(**k.client_options(), acks="all")
            await producer.start()
            try:
                for i in range(50):
                    await producer.send_and_wait(KAFKA_TELEMETRY, f"durable-{i}".encode())
            finally:
                await producer.stop()

        asyncio.run(send())
        stack.down()
        stack.up()

        async def read() -> list[bytes]:
            consumer = AIOKafkaConsumer(
                KAFKA_TELEMETRY, **k.client_options(), group_id=None, auto_offset_reset="earliest"
            )
            await consumer.start()
            out: list[bytes] = []
            try:
                deadline = time.monotonic() + 30
                while len(out) < 50 and time.monotonic() < deadline:
                    batch = await consumer.getmany(timeout_ms=500)
                    out += [r.value for records in batch.values() for r in records]
            finally:
                await consumer.stop()
            return out

        assert sorted(asyncio.run(read())) == sorted(f"durable-{i}".encode() for i in range(50))
    finally:
        stack.down()
