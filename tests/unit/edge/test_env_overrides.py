"""``[edge]`` tables from the file with ``CARPULSE_EDGE__*`` on top, and a VSS catalog of your own."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from edge.agent import edge_tables
from edge.jit_cache import use_cache_dir

CONF = """
[edge]
device_id = "pi-1"
[edge.commands]
public_key = "/etc/carpulse/cmd-sign.pub"
[[edge.sources]]
type = "can"
name = "front-can"
interface = "socketcan"
channel = "can0"
dbc = "/etc/carpulse/car.dbc"
[[edge.sources]]
type = "obd"
name = "obd"
port = "/dev/ttyUSB0"
"""


def test_environment_overrides_a_named_source_and_the_agent_tables(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(CONF)
    doc = edge_tables(
        path,
        {
            "CARPULSE_EDGE__SOURCES__FRONT_CAN__CHANNEL": "vcan0",
            "CARPULSE_EDGE__SOURCES__FRONT_CAN__BUS_OPTIONS": "{bitrate = 500000}",
            "CARPULSE_EDGE__SOURCES__OBD__PIDS": "[0x0C, 13]",
            "CARPULSE_EDGE__COMMANDS__PUBLIC_KEY": "/tmp/k.pub",
            "CARPULSE_EDGE__QUEUE__FSYNC": "normal",
            "CARPULSE_EDGE__STATS_FILE": "/tmp/stats.json",
            "CARPULSE_EDGE__DEVICE_ID": "ignored-here",  # an [edge] setting: pydantic reads it
            "CARPULSE_KAFKA__BOOTSTRAP": "elsewhere:9092",
        },
    )
    can, obd = doc["sources"]
    assert can["channel"] == "vcan0" and can["interface"] == "socketcan"
    assert can["bus_options"] == {"bitrate": 500000}
    assert obd["pids"] == [12, 13] and obd["port"] == "/dev/ttyUSB0"
    assert doc["commands"] == {"public_key": "/tmp/k.pub"}
    assert doc["queue"] == {"fsync": "normal"}
    assert doc["stats_file"] == "/tmp/stats.json"
    assert doc["device_id"] == "pi-1"


@pytest.mark.parametrize(
    ("var", "message"),
    [
        (
            "CARPULSE_EDGE__SOURCES__GNSS__PORT",
            "no \\[\\[edge.sources\\]\\] table has name = 'gnss'",
        ),
        ("CARPULSE_EDGE__SOURCES__PORT", "SOURCES__<source name>__<option>"),
    ],
)
def test_an_override_of_no_source_is_refused(tmp_path: Path, var: str, message: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(CONF)
    with pytest.raises(ConfigError, match=message):
        edge_tables(path, {var: "/dev/ttyACM1"})


def test_numba_cache_dir_must_be_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="numba_cache_dir"):
        use_cache_dir(blocker / "numba")
    assert use_cache_dir(None) is False


def test_a_mapping_checked_against_your_own_vss_catalog(tmp_path: Path) -> None:
    from edge.sources.can import load_vss_mapping
    from firmware_bridge.vss import MAPPINGS_DIR

    mapping = tmp_path / "car.yaml"
    mapping.write_text(
        "vehicle: test\ndbc: x.dbc\nsignals:\n"
        "  - signal: Speed.Value\n    vss: Vehicle.Private.Fleet.Speed\n"
    )
    with pytest.raises(ConfigError, match="not in the VSS catalog"):
        load_vss_mapping(mapping)  # the shipped catalog lacks the private path
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("path,type,datatype,unit\nVehicle.Private.Fleet.Speed,sensor,float,km/h\n")
    got = load_vss_mapping(mapping, catalog).paths()
    assert got == {("Speed", "Value"): "Vehicle.Private.Fleet.Speed"}
    # a shipped mapping still resolves by name against the shipped catalog
    assert load_vss_mapping("gt350").paths()
    assert (MAPPINGS_DIR / "gt350.yaml").exists()
    empty = tmp_path / "empty.csv"
    empty.write_text("path,type,datatype,unit\n")
    with pytest.raises(ConfigError, match="names no signal"):
        load_vss_mapping(mapping, empty)


def test_environment_overrides_actuators_and_the_head_unit(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(CONF + '[edge.actuators.doors]\nkind = "can"\nchannel = "can0"\n')
    doc = edge_tables(
        path,
        {
            "CARPULSE_EDGE__ACTUATORS__DOORS__CHANNEL": "can1",
            "CARPULSE_EDGE__ACTUATORS__RELAY__KIND": "gpio",
            "CARPULSE_EDGE__ACTUATORS__RELAY__LOCK_LINE": "17",
            "CARPULSE_EDGE__HEAD_UNIT__SOCKET": "/run/hu.sock",
        },
    )
    assert doc["actuators"] == {
        "doors": {"kind": "can", "channel": "can1"},
        "relay": {"kind": "gpio", "lock_line": 17},
    }
    assert doc["head_unit"] == {"socket": "/run/hu.sock"}
