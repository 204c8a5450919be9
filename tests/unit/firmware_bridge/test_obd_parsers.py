"""ELM327 response parser, PID decoders, DTC decoder, write gate: examples and hypothesis fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.dtc import describe
from core.errors import CarpulseError, WriteRefusedError
from firmware_bridge.obd.base import (
    ObdTransport,
    ScopedAuthorization,
    WriteAuthorization,
    with_backoff,
)
from firmware_bridge.obd.dtc import code_from_bytes, decode_dtcs
from firmware_bridge.obd.pids import (
    EXTENSION_PREFIX,
    PIDS,
    decode_bitmap,
    decode_pid,
    split_multi_pid,
    vss_catalog,
)
from firmware_bridge.obd.responses import (
    CAN_11,
    CAN_29,
    LEGACY,
    ElmResponse,
    Status,
    parse_response,
)
from tests.conftest import require_data

# ----- ELM327 response parser -------------------------------------------------------------------


def test_single_frame_with_headers_no_spaces() -> None:
    r = parse_response("7E804410C1AF8\r\r", CAN_11, "010C")
    assert r.status is Status.OK
    assert r.messages == {"7E8": bytes.fromhex("410C1AF8")}
    assert r.dropped == []


def test_spaces_searching_and_two_ecus() -> None:
    raw = "SEARCHING...\r7E8 04 41 0C 1A F8 \r7EA 04 41 0C 00 00\r\r"
    r = parse_response(raw, CAN_11)
    assert r.messages == {"7E8": bytes.fromhex("410C1AF8"), "7EA": bytes.fromhex("410C0000")}


def test_multi_frame_vin_is_reassembled_and_padding_cut() -> None:
    raw = "7E81014490201575030\r7E8215A5A5A39395A54\r7E82253333930303030\r"
    r = parse_response(raw, CAN_11, "0902")
    assert r.messages["7E8"] == bytes.fromhex("490201") + b"WP0ZZZ99ZTS390000"


def test_29_bit_headers() -> None:
    r = parse_response("18DAF110 03 41 0D 32\r", CAN_29)
    assert r.messages == {"18DAF110": bytes.fromhex("410D32")}


def test_legacy_header_and_checksum_dropped() -> None:
    r = parse_response("48 6B 10 41 0D 32 C1\r", LEGACY)
    assert r.messages == {"10": bytes.fromhex("410D32")}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("NO DATA\r\r", Status.NO_DATA),
        ("SEARCHING...\rUNABLE TO CONNECT\r", Status.UNABLE_TO_CONNECT),
        ("STOPPED\r", Status.STOPPED),
        ("CAN ERROR\r", Status.CAN_ERROR),
        ("BUS INIT: ...ERROR\r", Status.BUS_INIT_ERROR),
        ("BUS INIT:ERROR\r", Status.BUS_INIT_ERROR),
        ("?\r", Status.UNKNOWN_COMMAND),
        ("BUFFER FULL\r", Status.BUFFER_FULL),
        ("ERR94\r", Status.ADAPTER_ERROR),
        ("\x00\x00zz%%\r", Status.GARBAGE),
        ("", Status.GARBAGE),
    ],
)
def test_status_words(raw: str, status: Status) -> None:
    r = parse_response(raw, CAN_11)
    assert r.status is status
    assert r.messages == {}


def test_truncated_and_out_of_order_multi_frames_are_reported() -> None:
    r = parse_response("7E81014490201575030\r7E8225A5A5A39395A54\r", CAN_11)
    assert r.messages == {}
    assert any("out of order" in d for d in r.dropped)
    r = parse_response("7E81014490201575030\r", CAN_11)
    assert any("truncated" in d for d in r.dropped)


def test_single_frame_length_longer_than_data_is_dropped() -> None:
    r = parse_response("7E807410C1A\r", CAN_11)
    assert r.messages == {} and r.dropped


# Tokens an adapter really prints, plus noise: random text alone would rarely look like a frame.
_ELM_TOKENS = st.sampled_from(
    [
        *"0123456789ABCDEF \r\n>:?.\x00\xff",
        "7E8",
        "7E8 10 14 ",
        "7E8 21 ",
        "7E8 06 41 00 ",
        "NO DATA",
        "STOPPED",
        "SEARCHING...",
        "BUS INIT: ...",
        "ERR",
        "18DAF110 ",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_ELM_TOKENS, max_size=80).map("".join), st.sampled_from([CAN_11, CAN_29, LEGACY]))
def test_fuzz_parser_never_raises(raw: str, family: str) -> None:
    r = parse_response(raw, family)
    assert isinstance(r, ElmResponse)
    assert (r.status is Status.OK) == bool(r.messages)
    for msg in r.messages.values():
        assert isinstance(msg, bytes)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60))
def test_fuzz_round_trip_of_isotp_framing(payload: bytes) -> None:
    """Any payload framed as an ECU would (single or multi frame) parses back exactly."""
    if len(payload) <= 7:
        lines = [f"7E8{len(payload):02X}{payload.hex().upper()}"]
    else:
        lines = [f"7E81{len(payload) >> 8:X}{len(payload) & 0xFF:02X}{payload[:6].hex().upper()}"]
        rest = payload[6:]
        for seq, i in enumerate(range(0, len(rest), 7), 1):
            chunk = rest[i : i + 7].ljust(7, b"\x00")
            lines.append(f"7E82{seq & 0xF:X}{chunk.hex().upper()}")
    assert parse_response("\r".join(lines) + "\r", CAN_11).messages == {"7E8": payload}


# ----- PID decoders -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid", "data", "value"),
    [
        (0x0C, "1AF8", 1726.0),
        (0x0D, "32", 50.0),
        (0x05, "5A", 50.0),
        (0x04, "FF", 100.0),
        (0x10, "0190", 4.0),
        (0x2F, "80", 128 * 100 / 255),
        (0x42, "3710", 14.096),
        (0xA6, "0001E240", 12_345_600.0),  # 12 345.6 km in metres
        (0x06, "80", 0.0),
        (0x3C, "1194", 410.0),
        (0x01, "83076504", 3.0),
    ],
)
def test_standard_decoders(pid: int, data: str, value: float) -> None:
    assert decode_pid(pid, bytes.fromhex(data)) == pytest.approx(value)


def test_bitmap_and_multi_pid_split() -> None:
    assert decode_bitmap(0, bytes.fromhex("BE1FA813"))[:6] == [0x01, 0x03, 0x04, 0x05, 0x06, 0x07]
    assert decode_bitmap(0x20, bytes.fromhex("80000001")) == [0x21, 0x40]
    parts, left = split_multi_pid(
        bytes.fromhex("0C1AF80D3205 5A".replace(" ", "")), [0x0C, 0x0D, 0x05]
    )
    assert parts == {0x0C: b"\x1a\xf8", 0x0D: b"\x32", 0x05: b"\x5a"} and left == 0
    parts, left = split_multi_pid(bytes.fromhex("0C1AF899"), [0x0C])
    assert parts == {0x0C: b"\x1a\xf8"} and left == 1


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=8))
def test_fuzz_pid_decoders(pid: int, data: bytes) -> None:
    value = decode_pid(pid, data)
    if pid not in PIDS or len(data) < PIDS[pid].length:
        assert value is None
    else:
        assert value is not None and value == value  # finite number, not NaN


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.lists(st.integers(0, 255), max_size=6))
def test_fuzz_multi_pid_split(payload: bytes, wanted: list[int]) -> None:
    parts, left = split_multi_pid(payload, wanted)
    assert set(parts) <= set(wanted)
    assert 0 <= left <= len(payload)


def test_vss_paths_are_in_the_catalog_or_marked_extensions() -> None:
    catalog = vss_catalog(require_data("vss/vss.csv"))
    for spec in PIDS.values():
        assert spec.vss in catalog or spec.vss.startswith(EXTENSION_PREFIX), spec
    assert "Vehicle.Speed" in catalog
    # The catalog itself has no OBD branch: extensions must not collide with it.
    assert not any(s.startswith(EXTENSION_PREFIX) for s in catalog)


# ----- DTCs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "code"),
    [
        (0x01, 0x43, "P0143"),
        (0x03, 0x01, "P0301"),
        (0x41, 0x23, "C0123"),
        (0x81, 0x00, "B0100"),
        (0xC1, 0x00, "U0100"),
        (0x12, 0x34, "P1234"),
        (0xE2, 0x4F, "U224F"),
    ],
)
def test_dtc_letters_and_digits(a: int, b: int, code: str) -> None:
    assert code_from_bytes(a, b) == code


def test_dtc_descriptions() -> None:
    assert describe("P0301") == "Cylinder 1 misfire detected"
    assert describe("U0100").startswith("Lost communication with ECM")
    assert describe("P1234") == "manufacturer-specific powertrain code"
    assert describe("P0399").startswith("generic powertrain code: ignition")
    assert describe("B3999") == "manufacturer-specific body code"
    assert describe("zz") == "unknown code"


def test_decode_dtcs_with_count_byte_and_padding() -> None:
    dtcs = decode_dtcs(bytes.fromhex("02030104 20"), "7E8")  # odd: count byte first
    assert [d.code for d in dtcs] == ["P0301", "P0420"]
    assert decode_dtcs(bytes.fromhex("00")) == []
    legacy = decode_dtcs(bytes.fromhex("030100000000"))  # legacy: 3 pairs, zero padded
    assert [d.code for d in legacy] == ["P0301"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.booleans())
def test_fuzz_dtc_decoder(payload: bytes, pending: bool) -> None:
    for dtc in decode_dtcs(payload, "7E8", pending):
        assert len(dtc.code) == 5 and dtc.code[0] in "PCBU" and dtc.description
        assert dtc.pending is pending


# ----- write gate and backoff ---------------------------------------------------------------


class _Recorder(ObdTransport):
    """A transport that answers every request positively and records what was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def _request_internal(self, payload: bytes) -> ElmResponse:
        self.sent.append(payload)
        return ElmResponse(Status.OK, {"7E8": bytes((payload[0] + 0x40,))})


@pytest.mark.parametrize("payload", [b"\x04", b"\x08\x01", b"\x2e\xf1\x90", b"\x31\x01", b"\x14"])
def test_writes_are_refused_without_authorization(payload: bytes) -> None:
    tr = _Recorder()
    with pytest.raises(WriteRefusedError, match="signed command"):
        tr.request(payload)
    assert tr.sent == [] and tr.counters["refused"] == 1
    assert issubclass(WriteRefusedError, CarpulseError)


def test_scoped_authorization_is_per_service_vin_time_and_count() -> None:
    now = [100.0]
    auth = ScopedAuthorization(
        frozenset({0x04}), "VIN1", expires_at=110.0, uses=1, clock=lambda: now[0]
    )
    tr = _Recorder()
    tr.vin = "OTHER"
    with pytest.raises(WriteRefusedError):
        tr.request(b"\x04", auth)
    tr.vin = "VIN1"
    with pytest.raises(WriteRefusedError):
        tr.request(b"\x2e\x00", auth)  # another service
    assert tr.request(b"\x04", auth).status is Status.OK
    with pytest.raises(WriteRefusedError):
        tr.request(b"\x04", auth)  # used up
    auth2 = ScopedAuthorization(frozenset({0x04}), None, expires_at=110.0, clock=lambda: now[0])
    now[0] = 111.0
    with pytest.raises(WriteRefusedError):
        tr.request(b"\x04", auth2)  # expired
    assert tr.sent == [b"\x04"]
    assert isinstance(auth, WriteAuthorization)


def test_backoff_doubles_and_gives_up() -> None:
    from core.errors import SourceUnavailableError

    waits: list[float] = []
    calls = [0]

    def flaky() -> str:
        calls[0] += 1
        if calls[0] < 4:
            raise SourceUnavailableError("unplugged")
        return "ok"

    assert with_backoff(flaky, attempts=5, first_delay=0.5, sleep=waits.append) == "ok"
    assert waits == [0.5, 1.0, 2.0]

    def dead() -> str:
        raise SourceUnavailableError("gone")

    waits.clear()
    with pytest.raises(SourceUnavailableError):
        with_backoff(dead, attempts=4, first_delay=1, max_delay=2, sleep=waits.append)
    assert waits == [1, 2, 2]
