"""Fixtures of the reliability tests: a Mosquitto of the test's own, free to stop and restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from carpulse.stack import Stack, free_port, free_port_block
from core.config import StackSettings
from tests.reliability.helpers import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    stack = Stack(
        StackSettings(
            data_dir=tmp_path / "stack",
            mqtt_device_port=free_port(),
            mqtt_service_port=free_port(),
            kafka_port=free_port_block(3),
            influx_port=free_port(),
            influx_rpc_port=free_port(),
        )
    )
    m = Mosquitto(stack)
    m.start()
    try:
        yield m
    finally:
        stack.down()
