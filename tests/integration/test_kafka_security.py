"""Kafka security on the real broker: one principal per component, ACLs for exactly what it uses."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from carpulse.stack import Stack
from core.config import KafkaSettings
from core.topics import KAFKA_ALERTS, KAFKA_TELEMETRY, KAFKA_VEHICLE_STATE
from stream.kafka_options import kafka_problem

pytestmark = [pytest.mark.integration, pytest.mark.security]


def _kafka(stack: Stack) -> KafkaSettings:
    return stack.settings.kafka  # type: ignore[attr-defined,no-any-return]


async def _produce(options: dict[str, Any], topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(**options, acks="all", request_timeout_ms=10_000)
    try:
        await producer.start()
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _read_one(options: dict[str, Any], topic: str, group: str | None = None) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, **options, group_id=group, auto_offset_reset="earliest", request_timeout_ms=10_000
    )
    try:
        await consumer.start()
        batch = await consumer.getmany(timeout_ms=3000, max_records=1)
        return [r.value for records in batch.values() for r in records]
    finally:
        await consumer.stop()


def test_dashboards_cannot_produce_alerts(local_stack: Stack) -> None:
    k = _kafka(local_stack)
    with pytest.raises(TopicAuthorizationFailedError) as err:
        asyncio.run(_produce(k.client_options("dashboards"), KAFKA_ALERTS, b'{"kind":"crash"}'))
    # the operator's log line names broker, principal and topic
    line = kafka_problem(k, "dashboards", err.value, KAFKA_ALERTS)
    assert "User:carpulse-dashboards" in line and KAFKA_ALERTS in line and k.bootstrap in line
    assert "no ACL" in line


def test_only_the_bridge_writes_telemetry(local_stack: Stack) -> None:
    k = _kafka(local_stack)
    for component in ("stream", "crm", "dashboards"):
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(_produce(k.client_options(component), KAFKA_TELEMETRY, b"forged"))
    # the legitimate writer still may
    asyncio.run(_produce(k.client_options("bridge"), KAFKA_TELEMETRY, b"x"))


def test_bridge_cannot_read_what_it_writes(local_stack: Stack) -> None:
    k = _kafka(local_stack)
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_read_one(k.client_options("bridge"), KAFKA_TELEMETRY))


def test_dashboards_read_state_but_not_telemetry(local_stack: Stack) -> None:
    k = _kafka(local_stack)
    asyncio.run(_read_one(k.client_options("dashboards"), KAFKA_VEHICLE_STATE))  # allowed
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_read_one(k.client_options("dashboards"), KAFKA_TELEMETRY))


def test_stream_group_prefix_only(local_stack: Stack) -> None:
    k = _kafka(local_stack)
    ok_group = f"carpulse-stream-sec-{uuid.uuid4().hex[:6]}"
    asyncio.run(_read_one(k.client_options("stream"), KAFKA_TELEMETRY, ok_group))
    with pytest.raises(GroupAuthorizationFailedError):  # the CRM's group is not the stream's
        asyncio.run(_read_one(k.client_options("stream"), KAFKA_TELEMETRY, "carpulse-crm-x"))


def test_wrong_password_is_refused(local_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    k = _kafka(local_stack)
    opts = k.client_options("bridge")
    opts["sasl_plain_password"] = "not-the-password"
    with pytest.raises(KafkaError) as err:
        asyncio.run(_produce(opts, KAFKA_TELEMETRY, b"x"))
    # aiokafka reports "unable to bootstrap"; the reason is in its log line, and ours says what to check
    assert "SaslAuthenticationFailed" in caplog.text
    assert "login refused" in kafka_problem(k, "bridge", err.value)


def test_plaintext_client_gets_nothing(local_stack: Stack) -> None:
    k = _kafka(local_stack)
    opts = {"bootstrap_servers": k.servers()}
    with pytest.raises((KafkaConnectionError, KafkaError)):
        asyncio.run(_produce(opts, KAFKA_TELEMETRY, b"x"))


def test_no_auto_created_topics(local_stack: Stack) -> None:
    # even the admin cannot create a topic by producing to it: topics are provisioned
    k = _kafka(local_stack)
    opts = {**k.client_options(), "request_timeout_ms": 5000}

    async def run() -> None:
        producer = AIOKafkaProducer(**opts, acks="all")
        try:
            await producer.start()
            await asyncio.wait_for(producer.send_and_wait(f"typo-{uuid.uuid4().hex}", b"x"), 8)
        finally:
            await producer.stop()

    with pytest.raises((KafkaError, asyncio.TimeoutError)):
        asyncio.run(run())
