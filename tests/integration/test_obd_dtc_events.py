"""The OBD source's DTC poll against the real ELM327-emulator: codes set, freeze frame, cleared."""

from __future__ import annotations

import time

import pytest

from core.wire import Event, decode_event, encode_event
from edge.sources.obd import ObdSource
from firmware_bridge.obd.emulator import ElmEmulator

pytestmark = pytest.mark.integration


def _read_until_event(src: ObdSource, seconds: float = 8.0) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        src.read(0.2)
        if src.events:
            kind, _ts, prio, data = src.events.popleft()
            assert (kind, prio) == ("dtc", 2)
            # what the agent publishes must pass the wire's own checks
            ev = decode_event(encode_event(Event("car-1", "b", 1, kind, 1, prio, data)))
            return ev.data
    raise AssertionError(f"no dtc event in {seconds} s ({dict(src.dtc_counters)})")


def test_codes_set_then_cleared_become_events() -> None:
    with ElmEmulator() as emu:
        src = ObdSource("obd", port=emu.port, pids=[0x0C, 0x0D], interval_s=0.2,
                        dtc_interval_s=0.5)  # fmt: skip
        with src:
            first = _read_until_event(src)  # at ignition on: the car's current list
            assert first["codes"] == [] and first["mil"] is False
            emu.set_dtcs(["0301", "C100"], ["0171"])
            emu.set_freeze_frame("0301", {0x0D: "34", 0x0C: "1AF8"})
            ev = _read_until_event(src)
            assert ev["codes"] == ["P0301", "U0100"] and ev["new"] == ["P0301", "U0100"]
            assert ev["pending"] == ["P0171"] and ev["mil"] is True and ev["mil_changed"] is True
            assert ev["dtc_count"] == 2
            assert ev["freeze_frame"] == {
                "dtc": "P0301",
                "values": {"Vehicle.Speed": 52.0,
                           "Vehicle.Powertrain.CombustionEngine.Speed": 1726.0},
            }  # fmt: skip
            polls = src.dtc_counters["polls"]
            time.sleep(1.2)
            for _ in range(8):
                src.read(0.2)
            assert src.dtc_counters["polls"] > polls and not src.events  # unchanged: no event
            emu.set_dtcs([], [])  # cleared by a workshop tool (carpulse never sends mode 04)
            gone = _read_until_event(src)
            assert gone["codes"] == [] and gone["cleared"] == ["P0301", "U0100"]
            assert gone["mil"] is False and gone["mil_changed"] is True
            assert src.dtc_counters["errors"] == 0
            assert src.transport.counters["refused"] == 0
