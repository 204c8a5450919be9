"""Fixtures of the reliability tests: a Mosquitto of the test's own, free to stop and restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from carpulse.stack import Stack, free_stack_settings
from tests.reliability.helpers import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    stack = Stack(free_stack_settings(tmp_path / "stack"))
    m = Mosquitto(stack)
    m.start()
    try:
        yield m
    finally:
        stack.down()
