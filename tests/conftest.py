"""Shared fixtures: real data paths (skip locally when missing, fail under CI) and the local stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from carpulse.datasets import shared_data_dir

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_data(relative: str) -> Path:
    """Path to shared data; skip with a reason when missing, but fail under CI=true."""
    path = shared_data_dir() / relative
    if not path.exists():
        msg = f"shared data {path} is missing (see ../shared/DATA.md)"
        if IN_CI:
            pytest.fail(msg + " and CI=true forbids skipping")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Mosquitto + Tansu + InfluxDB 1.x on free loopback ports in a temporary directory."""
    from carpulse.stack import Stack, free_port
    from core.config import StackSettings, load_settings

    root = tmp_path_factory.mktemp("stack")
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
    try:
        stack.up()
    except Exception:
        stack.down()
        raise
    settings = load_settings(stack.config_file)
    stack.settings = settings  # type: ignore[attr-defined]
    try:
        yield stack
    finally:
        stack.down()
