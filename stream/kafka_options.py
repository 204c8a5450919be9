"""One place that turns ``[kafka]`` settings into Faust app settings: brokers, credentials and the
consumer/producer settings both Faust apps (the stream worker, the CRM worker) share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from core.config import KafkaSettings

if TYPE_CHECKING:  # Faust is imported where an app is made: the bridge never loads it
    import faust


def faust_broker_settings(kafka: KafkaSettings, component: str) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for a Faust app run as ``component``'s principal.

    Faust hands the credentials to its consumer, producer and admin client (aiokafka), so a
    managed cluster (SASL_SSL with SCRAM or PLAIN, or mutual TLS) works as the local stack does.
    """
    import faust

    ctx = kafka.ssl_context()
    creds: Any = None
    if kafka.security_protocol.startswith("SASL"):
        opts = kafka.client_options(component)
        creds = faust.SASLCredentials(
            username=opts["sasl_plain_username"],
            password=opts["sasl_plain_password"],
            ssl_context=ctx,
            mechanism=kafka.sasl_mechanism,
        )
    elif ctx is not None:
        creds = faust.SSLCredentials(ctx)
    return {
        "broker": [f"kafka://{b}" for b in kafka.servers()],
        "broker_credentials": creds,
    }


def faust_app_settings(
    kafka: KafkaSettings, component: str, *, session_timeout_s: float
) -> dict[str, Any]:
    """The ``faust.App`` settings every carpulse Faust app shares: brokers and credentials, raw
    values, no table views on the web server, consumer and producer behaviour."""
    return {
        **faust_broker_settings(kafka, component),
        "value_serializer": "raw",
        "key_serializer": "raw",
        # /table/ would serve table contents (locations) to anyone reaching the port
        "web_tables_enabled": False,
        "web_router_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1 if kafka.acks == "all" else int(kafka.acks),
        "broker_max_poll_records": 1000,
        "stream_wait_empty": False,
        # a worker killed with -9 holds its partitions until the session expires
        "broker_session_timeout": session_timeout_s,
        "broker_heartbeat_interval": max(0.5, min(3.0, session_timeout_s / 10)),
    }


def make_faust_app(
    app_id: str,
    kafka: KafkaSettings,
    component: str,
    *,
    session_timeout_s: float,
    fetch_max_wait_ms: int,
    fetch_batch_wait_ms: int = 0,
    **app_settings: Any,
) -> faust.App:
    """A ``faust.App`` with ``faust_app_settings`` plus the app's own ``app_settings``, consuming
    through ``stream.transport`` (the worker's fetch wait from ``[stream] fetch_max_wait_ms``;
    fetch pacing under load with ``fetch_batch_wait_ms`` > 0)."""
    # imported here: the bridge uses this module's kafka_problem without Faust's Kafka driver
    import faust

    from stream.transport import install_transport

    app = faust.App(
        app_id,
        **faust_app_settings(kafka, component, session_timeout_s=session_timeout_s),
        **app_settings,
    )
    # before any topic: the conductor takes the transport at its first use
    install_transport(app, fetch_max_wait_ms, fetch_batch_wait_ms)
    return app


def kafka_problem(
    kafka: KafkaSettings, component: str | None, err: BaseException, topic: str = ""
) -> str:
    """One line that names the broker, the principal and the topic of a Kafka failure."""
    name = type(err).__name__
    hint = ""
    if "Authorization" in name or "AUTHORIZATION" in str(err):
        hint = " (no ACL for this principal: see README, Kafka security)"
    elif "Authentication" in name or "SASL" in str(err):
        hint = " (wrong user name or password?)"
    elif "bootstrap" in str(err).lower():
        hint = (
            " (broker unreachable, TLS refused or login refused: check the address, ca_file, user)"
        )
    elif "Unknown" in name and "Topic" in name:
        hint = " (the topic does not exist; `carpulse stack up` provisions them)"
    where = f" topic {topic}" if topic else ""
    return (
        f"Kafka {kafka.bootstrap} as {kafka.principal_name(component)}{where}: {name}: {err}{hint}"
    )


async def topic_configs(admin: Any, names: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """Each topic's configuration as the brokers describe it (DescribeConfigs), by topic name,
    through a started ``AIOKafkaAdminClient``; a topic answered with an error (unknown, not
    authorised) is left out."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    wanted = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    out: dict[str, dict[str, str | None]] = {}
    if not wanted:
        return out
    for response in await admin.describe_configs(wanted):
        # (error code, error message, resource type, resource name, config entries)
        for code, _msg, _type, name, entries in response.resources:
            if not code:
                out[name] = {e[0]: e[1] for e in entries}  # (name, value, ...)
    return out
