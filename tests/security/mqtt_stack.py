"""A Mosquitto-only local stack (the stack's own config, PKI and ACLs) for the MQTT attack tests.

The full ``local_stack`` also starts Kafka and InfluxDB; these tests need only the broker, so they
start it alone through the same ``carpulse.stack.Stack`` code, on free ports in a temp dir.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from carpulse.stack import Stack, free_port
from core.config import StackSettings


@pytest.fixture(scope="module")
def mqtt_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("mqtt-stack")
    stack = Stack(
        StackSettings(
            data_dir=root,
            mqtt_device_port=free_port(),
            mqtt_service_port=free_port(),
            kafka_port=free_port(),
            influx_port=free_port(),
            influx_rpc_port=free_port(),
        )
    )
    stack.prepare()
    argv, log, _port = stack._commands()["mosquitto"]
    stack._spawn("mosquitto", argv(), log)
    try:
        stack._wait_healthy("mosquitto", log, time.monotonic())
        yield stack
    finally:
        stack.down()
