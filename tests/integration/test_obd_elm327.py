"""OBD-II against the real third-party ELM327-emulator on a pseudo-terminal."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from carpulse.bench.obd import bench_obd
from core.errors import SourceUnavailableError, WriteRefusedError
from core.wire import Samples
from firmware_bridge.obd.base import ScopedAuthorization, with_backoff
from firmware_bridge.obd.cli import scan
from firmware_bridge.obd.client import ObdClient
from firmware_bridge.obd.elm327 import Elm327
from firmware_bridge.obd.emulator import ElmEmulator

pytestmark = pytest.mark.integration

# What the emulator's 'car' scenario answers (elm/obd_message.py): VINs and values in turn.
EMULATOR_VINS = {"WP0ZZZ99ZTS390000", "MAT403096BNL00000", "SB1ZS3JE60E282102"}
RPM_VALUES = {
    v / 4
    for v in (
        0x145F,
        0x0000,
        0x41C2,
        0x35CB,
        0x1446,
        0x1287,
        0x3B2E,
        0x152A,
        0x09F6,
        0x2382,
        0x2625,
        0x189F,
        0x13FB,
        0x3F7A,
    )
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[ElmEmulator]:
    with ElmEmulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def elm(emulator: ElmEmulator) -> Iterator[Elm327]:
    emulator.set_dtcs(["0301", "0420", "C100"], ["0171"])
    with Elm327(emulator.port) as adapter:
        yield adapter


def test_init_sequence_and_protocol(elm: Elm327) -> None:
    assert elm.adapter.startswith("ELM327")
    assert elm.protocol == "ISO 15765-4 (CAN 11/500)"
    assert elm.ignition_on
    assert 10.0 < (elm.voltage() or 0) < 16.0


def test_discovery_and_batched_read(elm: Elm327) -> None:
    client = ObdClient(elm)
    supported = client.discover()
    assert {0x04, 0x05, 0x0C, 0x0D, 0x10, 0x2F, 0x42} <= set(supported)
    assert 0x20 in supported and 0x40 in supported  # the bitmap chain was followed past 0x20
    before = elm.counters["requests"]
    reading = client.read([0x0C, 0x0D, 0x05, 0x04, 0x10, 0x2F, 0x42])
    assert elm.counters["requests"] - before <= 3  # 7 PIDs in 2 requests (+ maybe one retry)
    assert reading.ignition_on
    assert reading.values[0x0C] in RPM_VALUES
    assert 0 <= reading.values[0x0D] <= 255
    assert 10.0 < reading.values[0x42] < 16.0
    samples = reading.samples()
    assert isinstance(samples, Samples)
    names = {n for n, _, _ in samples.records()}
    assert {"Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"} <= names
    assert "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature" in names


def test_vin_and_dtcs(elm: Elm327) -> None:
    client = ObdClient(elm)
    assert client.vin() in EMULATOR_VINS
    stored = client.dtcs()
    assert [d.code for d in stored] == ["P0301", "P0420", "U0100"]
    assert stored[1].description == "Catalyst system efficiency below threshold (bank 1)"
    pending = client.dtcs(pending=True)
    assert [(d.code, d.pending) for d in pending] == [("P0171", True)]


def test_clear_dtcs_refused_then_authorised(emulator: ElmEmulator, elm: Elm327) -> None:
    client = ObdClient(elm)
    vin = client.vin()
    with pytest.raises(WriteRefusedError):
        client.clear_dtcs()
    assert len(client.dtcs()) == 3  # nothing was sent
    other_car = ScopedAuthorization(frozenset({0x04}), "1HGCM82633A004352", time.monotonic() + 30)
    with pytest.raises(WriteRefusedError):
        client.clear_dtcs(other_car)
    auth = ScopedAuthorization(frozenset({0x04}), vin, time.monotonic() + 30)
    assert client.clear_dtcs(auth)
    assert client.dtcs() == []
    emulator.set_dtcs(["0301", "0420", "C100"], ["0171"])  # for the other tests


def test_unknown_command_and_garbage_never_crash(elm: Elm327) -> None:
    resp = elm.request(b"\x01\xfe")  # unsupported PID
    assert resp.status.value in ("no_data", "ok")
    assert elm.at("ATXYZ") == ["?"]
    assert elm.counters["at_rejected"] >= 1


def test_cli_scan(emulator: ElmEmulator) -> None:
    out = scan(["--port", emulator.port, "--pids", "0C", "0D", "05"])
    assert out["vin"] in EMULATOR_VINS
    assert out["protocol"].startswith("ISO 15765-4")
    assert "0C" in out["supported_pids"]
    assert set(out["values"]) == {
        "Vehicle.Powertrain.CombustionEngine.Speed",
        "Vehicle.Speed",
        "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature",
    }
    assert {d["code"] for d in out["dtcs"]} >= {"P0301", "P0171"}


def test_ignition_off_is_a_state_and_unplug_reconnects(tmp_path) -> None:  # type: ignore[no-untyped-def]
    emu = ElmEmulator(tmp_path)
    emu.start()
    try:
        elm = Elm327(emu.port, timeout=1.0).open()
        client = ObdClient(elm)
        assert client.read([0x0C]).values
        emu.set_scenario("engineoff")
        off = client.read([0x0C, 0x0D])
        assert off.values == {} and not off.ignition_on  # normal state, no exception
        assert elm.counters["no_data"] >= 1
        emu.set_scenario("car")
        assert client.read([0x0D]).ignition_on

        emu.stop()  # unplug: the pty disappears
        with pytest.raises(SourceUnavailableError):
            client.read([0x0C])
        assert not elm.is_open and elm.counters["unplugged"] == 1
        with pytest.raises(SourceUnavailableError):
            with_backoff(elm.open, attempts=2, first_delay=0.05)
        emu.start()  # plugged back in: same port name
        with_backoff(elm.open, attempts=5, first_delay=0.1)
        assert client.read([0x0C]).values
        elm.close()
    finally:
        emu.stop()


def test_bench_obd_batches_beat_one_pid_per_request() -> None:
    out = bench_obd(["--rounds", "3", "--repeat", "1", "--ecu-delay", "0.02", "--no-python-obd"])
    assert len(out["pids"]) >= 6
    assert out["speedup_vs_naive"] > 1.5
    assert out["pids_per_s"] > out["naive_pids_per_s"]
