"""Events: crash alerts with location, deduped resends, DTC lists, bad and unknown events."""

from __future__ import annotations

import json

from core.wire import Event, encode_event
from stream import state as vs
from stream.alerts import dtc_key, handle_event
from stream.registry import DeviceRegistry

REG = DeviceRegistry({"car-1": "VIN1"})


def test_crash_alert_once_with_last_known_location() -> None:
    tables: dict[tuple[str, str], bytes] = {}
    st = vs.new_state("VIN1", "car-1")
    st["location"] = {"lat": 1.0, "lon": 2.0, "ts_us": 5}
    tables[("vehicle_state", "VIN1")] = vs.dumps(st)
    payload = encode_event(Event("car-1", "b", 9, "crash", 1000, 0, {"peak_g": 6.1}))

    def lookup(t: str, k: str) -> bytes | None:
        return tables.get((t, k))

    res = handle_event(payload, REG, lookup, received_us=2000)
    assert res.alert is not None
    alert = json.loads(res.alert[1])
    assert alert["vin"] == "VIN1" and alert["location"]["lat"] == 1.0
    assert alert["data"] == {"peak_g": 6.1} and alert["received_us"] == 2000
    for table, key, value in res.writes:
        tables[(table, key)] = value
    again = handle_event(payload, REG, lookup, received_us=3000)
    assert again.alert is None and again.duplicate


def test_dtc_event_updates_its_own_key() -> None:
    payload = encode_event(Event("car-1", "b", 1, "dtc", 10, 3, {"codes": ["P0420", "P0301"]}))
    res = handle_event(payload, REG, lambda t, k: None, 0)
    writes = {(t, k): v for t, k, v in res.writes}
    assert json.loads(writes[("vehicle_state", dtc_key("VIN1"))]) == ["P0301", "P0420"]
    assert res.state_update is not None
    assert json.loads(res.state_update[1])["health"] == "fault"


def test_bad_and_unknown_events_are_dead_lettered() -> None:
    bad = handle_event(b"CPE\x01\xc1", REG, lambda t, k: None, 0)
    assert bad.dead is not None and bad.dead[1]["reason"] == b"bad_msgpack"
    unknown = handle_event(
        encode_event(Event("car-x", "b", 1, "crash", 1)), REG, lambda t, k: None, 0
    )
    assert unknown.dead is not None and unknown.dead[1]["reason"] == b"unknown_device"
    assert unknown.alert is None
