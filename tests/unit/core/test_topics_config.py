"""Topic layout and settings precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_settings, masked_dump
from core.errors import ConfigError, WireError
from core.topics import command_topic, device_topic, parse_topic, subscription


def test_topics_round_trip() -> None:
    assert device_topic("car-1", "telemetry") == "carpulse/v1/car-1/telemetry"
    assert parse_topic("carpulse/v1/car-1/telemetry") == ("car-1", "telemetry")
    assert parse_topic(command_topic("car-1", "navigate")) == ("car-1", "cmd/navigate")
    assert subscription("events", "g") == "$share/g/carpulse/v1/+/events"


@pytest.mark.parametrize(
    "topic", ["carpulse/v1/+/telemetry", "other/v1/car/telemetry", "carpulse/v1/car/nope"]
)
def test_bad_topics_are_rejected(topic: str) -> None:
    with pytest.raises(WireError):
        parse_topic(topic)


def test_precedence_defaults_file_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[influx]\nurl = "http://file:8086"\ndatabase = "fromfile"\n')
    monkeypatch.setenv("CARPULSE_INFLUX__DATABASE", "fromenv")
    s = load_settings(cfg)
    assert s.influx.url == "http://file:8086"  # file beats default
    assert s.influx.database == "fromenv"  # env beats file
    assert s.kafka.bootstrap == "127.0.0.1:9092"  # default stays


def test_secret_in_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[influx]\ntoken = "abc"\n')
    with pytest.raises(ConfigError, match=r"influx\.token is a secret"):
        load_settings(cfg)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARPULSE_INFLUX__TOKEN", "s3cr3t")
    dump = masked_dump(load_settings(None))
    assert dump["influx"]["token"] == "********"
    assert "s3cr3t" not in repr(dump)


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[kafka]\npartitions = "many"\n')
    with pytest.raises(ConfigError, match=r"kafka\.partitions"):
        load_settings(cfg)
