"""One place that turns ``[kafka]`` settings into Faust app settings (brokers and credentials)."""

from __future__ import annotations

from typing import Any

import faust

from core.config import KafkaSettings


def faust_broker_settings(kafka: KafkaSettings, component: str) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for a Faust app run as ``component``'s principal.

    Faust hands the credentials to its consumer, producer and admin client (aiokafka), so a
    managed cluster (SASL_SSL with SCRAM or PLAIN, or mutual TLS) works as the local stack does.
    """
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
