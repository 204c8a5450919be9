"""Every shipped example config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_settings

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "config" / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    assert EXAMPLES, "no example configs found"
    settings = load_settings(path)
    assert settings.kafka.bootstrap
