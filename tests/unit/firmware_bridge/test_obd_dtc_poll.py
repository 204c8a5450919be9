"""DTC polls through the real ELM327 parser, with hostile adapter replies: errors, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DtcReadError
from firmware_bridge.obd.base import ObdTransport
from firmware_bridge.obd.client import ObdClient
from firmware_bridge.obd.dtc_poll import MAX_CODES, poll_dtcs
from firmware_bridge.obd.responses import ElmResponse, parse_response


class _Adapter(ObdTransport):
    """Answers each request with the adapter text scripted for it (default: NO DATA)."""

    def __init__(self, replies: dict[bytes, str]) -> None:
        super().__init__()
        self.replies = replies
        self.sent: list[bytes] = []

    def _request_internal(self, payload: bytes) -> ElmResponse:
        self.sent.append(payload)
        return parse_response(self.replies.get(payload, "NO DATA\r\r>"))


GOOD = {
    b"\x03": "7E8 06 43 02 03 01 42 00\r>",
    b"\x07": "7E8 02 47 00\r>",
    b"\x01\x01": "7E8 06 41 01 82 07 A1 00\r>",
}


def test_two_ecus_merge_codes_and_mil() -> None:
    replies = dict(GOOD)
    replies[b"\x03"] = "7E8 06 43 02 03 01 42 00\r7E9 04 43 01 C1 00\r>"
    replies[b"\x01\x01"] = "7E8 06 41 01 00 07 A1 00\r7E9 06 41 01 81 00 00 00\r>"
    snap = poll_dtcs(ObdClient(_Adapter(replies)), freeze_frame=False)
    assert snap.stored == ("C0200", "P0301", "U0100")
    assert (snap.mil, snap.count, snap.pending) == (True, 1, ())


def test_multi_frame_answer_is_reassembled() -> None:
    replies = dict(GOOD)
    # 5 codes + count byte = 12 bytes: a first frame and one consecutive frame
    replies[b"\x03"] = "7E8 10 0C 43 05 01 01 01 02\r7E8 21 01 03 01 04 01 05 00\r>"
    snap = poll_dtcs(ObdClient(_Adapter(replies)), freeze_frame=False)
    assert snap.stored == ("P0101", "P0102", "P0103", "P0104", "P0105")


@pytest.mark.parametrize(
    "reply",
    [
        "NO DATA\r>",
        "?\r>",
        "CAN ERROR\r>",
        "%$#@!garbage\x00\xff\r>",
        "7E8 03 7F 03 12\r>",  # negative response
        "7E8 10 20 43 05 01 01 01 02\r>",  # first frame, the rest never came
        "",
    ],
)
def test_unusable_mode_03_is_an_error_not_an_empty_list(reply: str) -> None:
    replies = dict(GOOD)
    replies[b"\x03"] = reply
    with pytest.raises(DtcReadError):
        poll_dtcs(ObdClient(_Adapter(replies)))


def test_odd_lengths_and_huge_replies_are_cut() -> None:
    replies = dict(GOOD)
    replies[b"\x03"] = "7E8 04 43 02 01 03\r>"  # count 2, one code and a half: the whole one
    assert poll_dtcs(ObdClient(_Adapter(replies)), freeze_frame=False).stored == ("P0103",)
    codes = [(0x01, i) for i in range(100)]  # 100 distinct codes over a 201-byte message
    body = bytes([0x43, 100, *[b for c in codes for b in c]])
    frames = [f"7E8 1{len(body) >> 8:X} {len(body) & 0xFF:02X} " + body[:6].hex(" ")]
    for n, i in enumerate(range(6, len(body), 7), 1):
        frames.append(f"7E8 2{n & 0xF:X} " + body[i : i + 7].ljust(7, b"\0").hex(" "))
    replies[b"\x03"] = "\r".join(frames) + "\r>"
    snap = poll_dtcs(ObdClient(_Adapter(replies)), freeze_frame=False)
    assert len(snap.stored) == MAX_CODES and snap.truncated == 100 - MAX_CODES


def test_freeze_frame_only_what_the_ecu_answers_and_no_mode_04() -> None:
    replies = dict(GOOD)
    replies[b"\x02\x02\x00"] = "7E8 05 42 02 00 03 01\r>"
    replies[b"\x02\x0d\x00"] = "7E8 04 42 0D 00 34\r>"
    replies[b"\x02\x0c\x00"] = "7E8 03 7F 02 12\r>"
    adapter = _Adapter(replies)
    snap = poll_dtcs(ObdClient(adapter))
    assert snap.freeze_dtc == "P0301"
    assert snap.freeze_frame == {"Vehicle.Speed": 52.0}
    assert all(p[0] in (0x01, 0x02, 0x03, 0x07) for p in adapter.sent)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([b"\x03", b"\x07", b"\x01\x01", b"\x02\x02\x00"]),
                       st.text(max_size=300)))  # fmt: skip
def test_fuzz_poll_raises_only_dtc_read_error(replies: dict[bytes, str]) -> None:
    try:
        snap = poll_dtcs(ObdClient(_Adapter(replies)))
    except DtcReadError:
        return
    assert len(snap.stored) <= MAX_CODES and len(snap.pending) <= MAX_CODES
