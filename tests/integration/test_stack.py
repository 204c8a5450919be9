"""The local stack: idempotent start, health, and one clear message for each way it can go wrong."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from carpulse.stack import Stack, free_stack_settings
from core.errors import StackError
from core.topics import KAFKA_VEHICLE_STATE
from tests.integration.helpers import topic_config

pytestmark = pytest.mark.integration


def test_up_is_idempotent_and_healthy(local_stack: Stack) -> None:
    pids = {s.name: s.pid for s in local_stack.status()}
    again = local_stack.up()
    assert all(s.healthy for s in again), again
    assert {s.name: s.pid for s in again} == pids  # nothing restarted


def test_up_provisions_a_compacted_vehicle_state_topic(local_stack: Stack) -> None:
    # made before any client touches it (the brokers never auto-create topics)
    assert topic_config(local_stack, KAFKA_VEHICLE_STATE).get("cleanup.policy") == "compact"


def test_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = Stack(free_stack_settings(tmp_path, mqtt_service_port=port))
        with pytest.raises(StackError, match=rf"mosquitto: port 127\.0\.0\.1:{port} is in use"):
            stack.up()
        stack.down()


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    stack = Stack(free_stack_settings(tmp_path, influxd_bin="/nonexistent/influxd"))
    try:
        with pytest.raises(StackError, match=r"apt-get install -y influxdb"):
            stack.up()
    finally:
        stack.down()


def test_up_migrates_the_local_crm(local_stack: Stack) -> None:
    """The quick start stays one command: `stack up` runs `crm migrate` on its SQLite CRM."""
    from crm.migrate import check_schema, head_revision
    from crm.store import make_engine

    engine = make_engine(local_stack.crm_url)
    try:
        assert check_schema(engine) == head_revision()
    finally:
        engine.dispose()
