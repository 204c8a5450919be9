"""The Faust app is assembled without a broker: agents, tables with raw values, output topics."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import CarpulseSettings
from core.errors import ConfigError
from stream.app import build_app


def test_app_has_the_agents_and_tables() -> None:
    app = build_app(CarpulseSettings())
    assert set(app.agents) >= {
        "stream.agents.telemetry_pipeline",
        "stream.agents.events_fast_path",
        "stream.retry.influx_retry",
    }
    for name in ("dedupe", "vehicle_state", "models"):
        changelog = app.tables[name].changelog_topic
        assert changelog.value_serializer == "raw" and changelog.key_serializer == "json"
    assert app.conf.web_bind == "127.0.0.1"
    assert app.conf.web_tables_enabled is False  # no table views: vehicle_state holds locations
    blueprints = [name for _, name in app.web._enabled_blueprints()]
    assert "faust.web.apps.tables.blueprint" not in blueprints


def test_a_bad_registry_stops_the_worker_at_start(tmp_path: Path) -> None:
    reg = tmp_path / "r.csv"
    reg.write_text("device_id,vin\nbad id,X\n")
    settings = CarpulseSettings()
    settings.stream.registry = str(reg)
    with pytest.raises(ConfigError, match="line 2"):
        build_app(settings)
