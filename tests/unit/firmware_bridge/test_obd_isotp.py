"""OBD-II over raw CAN (ISO 15765-4) with can-isotp on python-can's virtual bus and a simulated ECU."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import can
import pytest

from core.errors import WriteRefusedError
from firmware_bridge.obd.client import ObdClient
from firmware_bridge.obd.isotp_can import EcuSimulator, IsoTpObd

VIN = "1HGCM82633A004352"
VALUES = {
    0x0C: bytes.fromhex("1AF8"),  # 1726 rpm
    0x0D: bytes.fromhex("32"),  # 50 km/h
    0x05: bytes.fromhex("5A"),  # 50 °C
    0x2F: bytes.fromhex("80"),
    0x42: bytes.fromhex("3710"),  # 14.096 V
    0xA6: bytes.fromhex("0001E240"),  # 12 345.6 km
    0x10: bytes.fromhex("0190"),  # 4 g/s
}


@pytest.fixture
def car() -> Iterator[tuple[ObdClient, EcuSimulator]]:
    channel = f"obd-{uuid.uuid4().hex}"
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    tester_bus = can.Bus(interface="virtual", channel=channel)
    ecu = EcuSimulator(ecu_bus, VALUES, vin=VIN, stored=[0x0301, 0xC100], pending=[0x0420])
    transport = IsoTpObd(tester_bus)
    try:
        yield ObdClient(transport), ecu
    finally:
        transport.close()
        ecu.close()
        tester_bus.shutdown()
        ecu_bus.shutdown()


def test_discovery_values_and_samples(car: tuple[ObdClient, EcuSimulator]) -> None:
    client, ecu = car
    supported = client.discover()
    assert set(VALUES) <= set(supported)
    assert 0xA0 in supported  # bitmap 0xA0 announced because 0xA6 is above it
    before = ecu.requests
    reading = client.read(list(VALUES))
    assert ecu.requests - before == 2  # 7 PIDs: 6 + 1 per request
    assert reading.values == pytest.approx(
        {
            0x0C: 1726.0,
            0x0D: 50.0,
            0x05: 50.0,
            0x2F: 128 * 100 / 255,
            0x42: 14.096,
            0xA6: 12_345_600.0,
            0x10: 4.0,
        }
    )
    named = reading.named()
    assert named["Vehicle.TraveledDistance"] == 12_345_600.0
    assert named["Vehicle.Speed"] == 50.0
    assert len(reading.samples()) == 7


def test_multi_frame_vin_and_dtcs(car: tuple[ObdClient, EcuSimulator]) -> None:
    client, _ = car
    assert client.vin() == VIN  # 20 bytes: first frame + 2 consecutive frames with flow control
    assert [d.code for d in client.dtcs()] == ["P0301", "U0100"]
    assert [d.code for d in client.dtcs(pending=True)] == ["P0420"]


def test_unsupported_pid_and_silent_car(car: tuple[ObdClient, EcuSimulator]) -> None:
    client, ecu = car
    reading = client.read([0x0D, 0x5C])  # 0x5C (oil temp) is not in this car
    assert reading.values == {0x0D: 50.0} and reading.missing == [0x5C]
    ecu.values.clear()  # ignition off: the ECU stays silent to mode 01
    off = client.read([0x0D])
    assert off.values == {} and not off.ignition_on


def test_clear_refused_over_can_too(car: tuple[ObdClient, EcuSimulator]) -> None:
    client, ecu = car
    with pytest.raises(WriteRefusedError):
        client.clear_dtcs()
    assert ecu.stored == [0x0301, 0xC100]
