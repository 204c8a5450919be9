"""Kafka security on the real broker: one principal per component, ACLs for exactly what it uses."""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from carpulse.stack import Stack
from core.config import KafkaSettings
from core.errors import PublishError
from core.topics import KAFKA_ALERTS, KAFKA_TELEMETRY, KAFKA_VEHICLE_STATE
from stream.bridge import IngestBridge
from stream.kafka_options import kafka_problem

pytestmark = [pytest.mark.integration, pytest.mark.security]


@pytest.fixture(autouse=True)
def _aiokafka_leaks() -> Iterator[None]:
    """aiokafka leaves a connection unclosed when a login fails at bootstrap (its own objects).

    Collected here, so their ResourceWarning does not land in whichever test runs next.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


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
    name = f"typo-{uuid.uuid4().hex}"

    async def run() -> None:
        producer = AIOKafkaProducer(**k.client_options(), acks="all", request_timeout_ms=3000)
        try:
            await producer.start()
            await asyncio.wait_for(producer.send_and_wait(name, b"x"), 8)
        finally:
            await producer.stop()

    async def topics() -> list[str]:
        admin = AIOKafkaAdminClient(**k.client_options())
        try:
            await admin.start()
            return list(await admin.list_topics())
        finally:
            await admin.close()

    with pytest.raises((KafkaError, asyncio.TimeoutError)):
        asyncio.run(run())
    assert name not in asyncio.run(topics())


def test_bridge_without_an_acl_names_principal_and_topic(
    local_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A bridge run with the wrong principal says who and where, retries, and never crashes."""
    s = local_stack.settings  # type: ignore[attr-defined]
    wrong = {**s.kafka.principals, "bridge": s.kafka.principals["dashboards"]}
    settings = s.model_copy(update={"kafka": s.kafka.model_copy(update={"principals": wrong})})
    bridge = IngestBridge(settings, name="acl-test")
    with pytest.raises(PublishError, match="User:carpulse-dashboards") as err:
        asyncio.run(bridge.start(kafka_attempts=3))
    assert "topic carpulse." in str(err.value) and "no ACL" in str(err.value)
    # said once, not once per attempt
    assert caplog.text.count("retrying with backoff") == 1
