"""The local Kafka's pieces without a broker: ports, properties, ACL table, clear install errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from carpulse import kafka_broker as kb
from core.errors import StackError
from core.topics import KAFKA_ALERTS, KAFKA_PRIVACY, KAFKA_STATUS, KAFKA_TELEMETRY


def test_nodes_take_three_ports_each(tmp_path: Path) -> None:
    nodes = kb.nodes(tmp_path, "127.0.0.1", 9092, 3)
    assert [(n.client_port, n.internal_port, n.controller_port) for n in nodes] == [
        (9092, 9093, 9094),
        (9095, 9096, 9097),
        (9098, 9099, 9100),
    ]
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]


def test_cluster_properties_replicate_three_ways(tmp_path: Path) -> None:
    nodes = kb.nodes(tmp_path, "127.0.0.1", 9092, 3)
    text = kb.server_properties(
        nodes[1], nodes, admin_password="pw", keystore_pem=tmp_path / "k.pem"
    )
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9094,2@127.0.0.1:9097,3@127.0.0.1:9100"
    )
    assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
    assert props["auto.create.topics.enable"] == "false"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:carpulse-admin"
    assert "CLIENT:SASL_SSL" in props["listener.security.protocol.map"]
    single = kb.server_properties(
        nodes[0], nodes[:1], admin_password="pw", keystore_pem=tmp_path / "k.pem"
    )
    assert "min.insync.replicas=1" in single and "default.replication.factor=1" in single


def test_acls_grant_exactly_what_each_component_uses() -> None:
    acls = kb.component_acls()

    def ops(user: str, topic: str) -> set[str]:
        return {a.operation for a in acls if a.principal == f"User:{user}" and a.name == topic}

    # describe_configs: the bridge sizes its batches by the topics' max.message.bytes
    assert ops("carpulse-bridge", KAFKA_TELEMETRY) == {"write", "create", "describe_configs"}
    assert ops("carpulse-stream", KAFKA_TELEMETRY) == {"read"}
    assert ops("carpulse-dashboards", KAFKA_ALERTS) == {"read"}
    assert ops("carpulse-dashboards", KAFKA_STATUS) == {"read"}  # online/offline on the desk
    assert ops("carpulse-dashboards", KAFKA_TELEMETRY) == set()
    assert ops("carpulse-crm", KAFKA_TELEMETRY) == set()
    # location consent: only the CRM writes it, only the stream reads it (stream.privacy)
    assert ops("carpulse-crm", KAFKA_PRIVACY) == {"write"}
    assert ops("carpulse-stream", KAFKA_PRIVACY) == {"read"}
    assert (
        ops("carpulse-bridge", KAFKA_PRIVACY) == ops("carpulse-dashboards", KAFKA_PRIVACY) == set()
    )
    # nobody but the admin has anything on the cluster resource
    assert not [a for a in acls if a.resource == "cluster"]
    prefixed = {(a.principal, a.name) for a in acls if a.pattern == "prefixed"}
    assert prefixed == {
        ("User:carpulse-stream", "carpulse-stream"),
        ("User:carpulse-crm", "carpulse-crm"),
    }


def test_missing_java_says_how_to_install() -> None:
    with pytest.raises(StackError, match=r"apt-get install -y openjdk-17-jre-headless"):
        kb.java_version("/nonexistent/java")


def test_missing_maven_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARPULSE_KAFKA_LIBS", str(tmp_path / "libs"))
    monkeypatch.setattr(
        kb.shutil, "which", lambda name: None if name == "mvn" else "/usr/bin/" + name
    )
    monkeypatch.setattr(kb, "java_version", lambda java_bin="java": 17)
    with pytest.raises(StackError, match=r"apt-get install -y maven"):
        kb.fetch()


def test_jar_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / f"kafka_2.13-{kb.KAFKA_VERSION}.jar").write_bytes(b"")
    (libs / ".complete").write_text(kb.KAFKA_VERSION)
    monkeypatch.setenv("CARPULSE_KAFKA_LIBS", str(libs))
    said: list[str] = []
    assert kb.fetch(progress=said.append) == libs  # no Maven run
    assert "cached" in said[0]


def test_cluster_ids_never_start_with_a_dash() -> None:
    """A leading "-" made the storage tool read "-t -x..." as a missing value (1 start in 64)."""
    import re

    from carpulse.kafka_broker import new_cluster_id

    ids = {new_cluster_id() for _ in range(3000)}
    assert len(ids) == 3000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)
