"""UDS ReadDTCInformation (19 02) on python-can's virtual bus with the simulated ECU, the OBD
source reading DTCs that way, and hostile answers as errors."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DtcReadError
from edge.sources.obd import ObdSource
from firmware_bridge.obd.isotp_can import EcuSimulator, IsoTpObd
from firmware_bridge.obd.uds import parse_by_status_mask, poll_uds_dtcs

VALUES = {0x0C: bytes.fromhex("1AF8"), 0x0D: bytes.fromhex("32")}


@pytest.fixture
def bus_pair() -> Iterator[tuple[str, EcuSimulator]]:
    channel = f"uds-{uuid.uuid4().hex}"
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    # 20 codes: a 83-byte answer over 12 ISO-TP frames
    ecu = EcuSimulator(ecu_bus, VALUES, stored=[0x0217, 0x0420, *range(0x0100, 0x0112)],
                       pending=[0x0171])  # fmt: skip
    try:
        yield channel, ecu
    finally:
        ecu.close()
        ecu_bus.shutdown()


def test_poll_over_isotp(bus_pair: tuple[str, EcuSimulator]) -> None:
    channel, _ecu = bus_pair
    tester = can.Bus(interface="virtual", channel=channel)
    transport = IsoTpObd(tester)
    try:
        snap = poll_uds_dtcs(transport)
    finally:
        transport.close()
        tester.shutdown()
    assert snap.stored[:3] == ("P0100", "P0101", "P0102") and len(snap.stored) == 20
    assert "P0217" in snap.stored and snap.pending == ("P0171",) and snap.mil is True


def test_obd_source_reads_dtcs_by_uds_on_can(bus_pair: tuple[str, EcuSimulator]) -> None:
    channel, ecu = bus_pair
    src = ObdSource("obd", can_channel=channel, can_interface="virtual", pids=[0x0C, 0x0D],
                    interval_s=0.05, dtc_interval_s=0.2, dtc_protocol="uds")  # fmt: skip
    got = []
    with src:
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            src.read(0.1)
            while src.events:
                got.append(src.events.popleft()[3])
            if len(got) == 1:
                ecu.stored, ecu.pending = [0x0217], []  # a workshop cleared the others
    assert len(got) == 2, src.dtc_counters
    assert got[0]["mil"] is True and len(got[0]["codes"]) == 20
    assert got[1]["codes"] == ["P0217"] and len(got[1]["cleared"]) == 19
    assert src.dtc_counters["errors"] == 0


@pytest.mark.parametrize(
    "body",
    [b"", b"\x02", b"\x03\xff\x02\x17\x00\x08", b"\x01\xff\x00\x05"],  # short, wrong sub-function
)
def test_not_a_report_is_an_error(body: bytes) -> None:
    with pytest.raises(DtcReadError):
        parse_by_status_mask(body)


def test_partial_records_and_empty_codes_are_dropped() -> None:
    body = b"\x02\xff" + b"\x02\x17\x00\x88" + b"\x00\x00\x00\x08" + b"\x04\x20\x00"
    assert parse_by_status_mask(body) == [("P0217", 0x88)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_parser_raises_only_dtc_read_error(body: bytes) -> None:
    try:
        records = parse_by_status_mask(body)
    except DtcReadError:
        return
    assert all(len(code) == 5 and 0 <= status <= 255 for code, status in records)
