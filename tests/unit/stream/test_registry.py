"""Device -> VIN registry: JSON and CSV files, open mode, clear errors naming file and line."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from core.errors import ConfigError
from stream.registry import load_registry, parse_registry


def test_json_and_csv_give_the_same_mapping(tmp_path: Path) -> None:
    j = tmp_path / "r.json"
    j.write_text(json.dumps({"car-1": "WVWZZZ1JZXW000001", "car-2": "FLEET-42"}))
    c = tmp_path / "r.csv"
    c.write_text("device_id,vin\ncar-1,WVWZZZ1JZXW000001\ncar-2,FLEET-42\n")
    a, b = load_registry(str(j)), load_registry(str(c))
    assert a.vins == b.vins == {"car-1": "WVWZZZ1JZXW000001", "car-2": "FLEET-42"}
    assert a.vin("car-1") == "WVWZZZ1JZXW000001"
    assert a.vin("stranger") is None  # closed: unknown devices are dead-lettered


def test_open_mode_maps_every_device_to_itself() -> None:
    reg = load_registry("")
    assert reg.open_mode and reg.vin("any-car") == "any-car"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("device_id,vin\ncar-1,OK1\nbad id,OK2\n", "line 3: bad device_id 'bad id'"),
        ('{"car-1": "has space"}', "key 'car-1': bad vin"),
        ("device_id,vin\ncar-1,A\ncar-1,B\n", "mapped twice"),
        ("dev,vin\n", "CSV needs a header"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_registry_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "reg.csv"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_registry(str(f))
    assert str(f) in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_registry(str(tmp_path / "nope.json"))


def test_registry_from_a_url() -> None:
    body = json.dumps([{"device_id": "car-9", "vin": "VIN9"}]).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        reg = load_registry(f"http://127.0.0.1:{server.server_port}/registry.json")
    finally:
        server.shutdown()
        server.server_close()
    assert reg.vins == {"car-9": "VIN9"}
    assert parse_registry("[]", "x") == {}


def test_gates_come_from_the_file_and_the_settings(tmp_path: Path) -> None:
    j = tmp_path / "r.json"
    j.write_text(json.dumps([{"device_id": "car-1", "vin": "VIN1"},
                             {"device_id": "gate-1", "role": "gate"}]))  # fmt: skip
    c = tmp_path / "r.csv"
    c.write_text("device_id,vin,role\ncar-1,VIN1,\ngate-1,,gate\n")
    for path in (j, c):
        reg = load_registry(str(path), gates=["gate-2"])
        assert reg.vins == {"car-1": "VIN1"} and reg.gates == {"gate-1", "gate-2"}
        assert reg.is_gate("gate-1") and not reg.is_gate("car-1")
    assert not load_registry("").is_gate("gate-1")  # open mode implies no gate
    assert load_registry("", gates=["gate-1"]).is_gate("gate-1")


@pytest.mark.parametrize(
    ("text", "gates", "message"),
    [
        ('[{"device_id": "car-1", "vin": "V"}, {"device_id": "car-1", "role": "gate"}]', (),
         "both a gate and a vehicle"),
        ('[{"device_id": "bad id", "role": "gate"}]', (), "bad gate device_id"),
        ("", ("gate\n",), "bad gate device_id"),
    ],
)  # fmt: skip
def test_bad_gate_entries_are_named(
    text: str, gates: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_registry(str(path) if text else "", gates=gates)
