"""DTC snapshots become dtc events only on change, in the shape the stream and the CRM consume."""

from __future__ import annotations

import pytest

from core.checks import check_dtcs
from core.errors import SourceUnavailableError
from core.wire import Event, decode_event, encode_event
from crm.normalize import from_device_event
from edge.dtc_watch import DtcWatcher
from edge.sources.obd import ObdSource
from firmware_bridge.obd.base import ObdTransport
from firmware_bridge.obd.client import ObdClient
from firmware_bridge.obd.dtc_poll import DtcSnapshot
from firmware_bridge.obd.responses import ElmResponse, parse_response


def _snap(stored=(), pending=(), mil=False, **kw) -> DtcSnapshot:  # type: ignore[no-untyped-def]
    return DtcSnapshot(tuple(stored), tuple(pending), mil, len(stored), **kw)


def test_first_new_same_cleared_and_mil() -> None:
    w = DtcWatcher()
    first = w.update(_snap())
    assert first is not None and first["codes"] == [] and first["mil_changed"] is False
    assert w.update(_snap()) is None
    ev = w.update(_snap(["P0301"], ["P0171"], True, freeze_dtc="P0301",
                        freeze_frame={"Vehicle.Speed": 52.0}))  # fmt: skip
    assert ev is not None
    assert (ev["new"], ev["cleared"], ev["new_pending"]) == (["P0301"], [], ["P0171"])
    assert ev["mil"] is True and ev["mil_changed"] is True and ev["dtc_count"] == 1
    assert ev["freeze_frame"] == {"dtc": "P0301", "values": {"Vehicle.Speed": 52.0}}
    assert ev["descriptions"]["P0301"] == "Cylinder 1 misfire detected"
    assert w.update(_snap(["P0301"], ["P0171"], True)) is None
    gone = w.update(_snap())
    assert gone is not None and gone["cleared"] == ["P0301"] and gone["mil_changed"] is True
    assert gone["codes"] == [] and "freeze_frame" not in gone


def test_unknown_mil_keeps_the_last_state() -> None:
    w = DtcWatcher()
    w.update(_snap(["P0420"], mil=True))
    ev = w.update(_snap(["P0420", "P0301"], mil=None))
    assert ev is not None and ev["mil"] is True and ev["mil_changed"] is False


def test_event_passes_the_wire_and_the_crm_normaliser() -> None:
    data = DtcWatcher().update(_snap(["P0217", "P0456"], mil=True))
    assert data is not None
    assert check_dtcs(data["codes"]) == ["P0217", "P0456"]
    payload = encode_event(Event("car-1", "b", 1, "dtc", 1_700_000_000_000_000, 2, data))
    assert decode_event(payload).data == data
    crm = from_device_event(payload)
    assert [(e.data["code"], e.data["severity"]) for e in crm] == [("P0217", "high"),
                                                                  ("P0456", "medium")]  # fmt: skip
    assert crm[0].data["description"] == "Engine overtemperature condition"


class _Adapter(ObdTransport):
    """Scripted adapter text per request through the real parser; ``fail`` raises instead."""

    def __init__(self, replies: dict[bytes, str], fail: Exception | None = None) -> None:
        super().__init__()
        self.replies, self.fail = replies, fail

    def _request_internal(self, payload: bytes) -> ElmResponse:
        if self.fail is not None:
            raise self.fail
        return parse_response(self.replies.get(payload, "NO DATA\r>"))


def _source(adapter: _Adapter) -> ObdSource:
    src = ObdSource("obd", port="unused", dtc_interval_s=1)
    src.transport, src.client = adapter, ObdClient(adapter)  # opened by hand: no serial port
    return src


def test_source_counts_bad_answers_and_never_reports_them_as_cleared() -> None:
    good = {b"\x03": "7E8 04 43 01 03 01\r>", b"\x07": "7E8 02 47 00\r>",
            b"\x01\x01": "7E8 06 41 01 81 00 00 00\r>"}  # fmt: skip
    adapter = _Adapter(good)
    src = _source(adapter)
    assert src.poll_dtcs() is not None and src.events[-1][3]["codes"] == ["P0301"]
    for bad in ("NO DATA\r>", "\x00\xff garbage", "7E8 03 7F 03 11\r>", "7E8 10 40 43 09\r>"):
        adapter.replies = {**good, b"\x03": bad}
        assert src.poll_dtcs() is None
    assert src.dtc_counters["errors"] == 4 and len(src.events) == 1
    adapter.fail = ValueError("adapter went mad")  # an unforeseen failure: counted too
    assert src.poll_dtcs() is None and src.dtc_counters["errors"] == 5
    adapter.fail = SourceUnavailableError("unplugged")  # a lost link is the agent's business
    with pytest.raises(SourceUnavailableError):
        src.poll_dtcs()
    adapter.fail, adapter.replies = None, {**good, b"\x03": "7E8 02 43 00\r>"}
    cleared = src.poll_dtcs()
    assert cleared is not None and cleared["cleared"] == ["P0301"]
