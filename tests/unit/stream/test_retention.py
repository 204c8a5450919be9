"""Retention settings and the measurement -> family map (no server: see
tests/integration/test_dataops.py for the real InfluxDB 1.x)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import InfluxSettings, load_settings, retention_seconds
from core.errors import ConfigError
from stream.pipeline import summary_lines
from stream.retention import (
    by_family,
    family_of,
    influxql_duration,
    parse_go_duration,
    v1_policy,
    v2_bucket,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86_400), ("2y", 2 * 365 * 86_400), ("26w", 26 * 7 * 86_400), ("1h", 3600),
     (" 720H ", 720 * 3600), ("inf", None), ("INF", None)],
)  # fmt: skip
def test_retention_durations(text: str, seconds: int | None) -> None:
    assert retention_seconds(text) == seconds
    assert parse_go_duration(influxql_duration(seconds) + "0m0s") == seconds


@pytest.mark.parametrize(
    "bad", ["", "90", "90 days", "-1d", "1.5d", "0h", "30m", "forever", "1e3d"]
)
def test_garbage_durations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="retention"):
        retention_seconds(bad)
    with pytest.raises(ValidationError, match="telemetry"):
        InfluxSettings.model_validate({"retention": {"telemetry": bad}})


def test_a_bad_retention_in_the_config_file_is_one_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[influx.retention]\ntrips = "2 years"\n')
    with pytest.raises(
        ConfigError, match=r"influx\.retention\.trips.*'2 years' is not a retention"
    ):
        load_settings(conf)
    conf.write_text('[influx.retention]\nweekly = "2y"\n')
    with pytest.raises(ConfigError, match="weekly"):
        load_settings(conf)


def test_influx_durations_as_the_server_prints_them() -> None:
    assert parse_go_duration("2160h0m0s") == 90 * 86_400
    assert parse_go_duration("0s") is None
    assert parse_go_duration("1h30m0s") == 5400


def test_every_measurement_the_pipeline_writes_has_its_family() -> None:
    trip = summary_lines("trips", "VIN1", 1, {"start_us": 0, "end_us": 1, "km": 3.0})
    day = summary_lines("daily", "VIN1", 1, {"day": 1, "km": 3.0})
    sample = "telemetry,device=car-1 Vehicle.Speed=1.0 1"
    assert [family_of(x) for x in (trip, day, sample)] == ["trips", "daily", "telemetry"]
    # a measurement that only starts like a summary's is not one
    assert family_of("tripsx,device=a x=1 1") == "telemetry"
    assert family_of("daily_x x=1 1") == "telemetry"
    lines = [sample, trip, sample, day]
    assert by_family(lines) == {"telemetry": [sample, sample], "trips": [trip], "daily": [day]}
    assert by_family([sample]) == {"telemetry": [sample]}


def test_targets_per_family() -> None:
    s = InfluxSettings()
    assert [v1_policy(s, f) for f in ("telemetry", "trips", "daily")] == [
        "telemetry", "trips", "daily"]  # fmt: skip
    assert [v2_bucket(s, f) for f in ("telemetry", "trips", "daily")] == [
        "carpulse", "carpulse_trips", "carpulse_daily"]  # fmt: skip
    one = InfluxSettings(retention_policy="mine")  # the operator's own policy: everything there
    assert {v1_policy(one, f) for f in ("telemetry", "trips")} == {"mine"}
    off = InfluxSettings.model_validate({"retention": {"manage": False}})
    assert v1_policy(off, "trips") == "" and v2_bucket(off, "trips") == "carpulse"
