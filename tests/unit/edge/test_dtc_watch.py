"""DTC snapshots become dtc events only on change, in the shape the stream and the CRM consume."""

from __future__ import annotations

from core.checks import check_dtcs
from core.wire import Event, decode_event, encode_event
from crm.normalize import from_device_event
from edge.dtc_watch import DtcWatcher
from firmware_bridge.obd.dtc_poll import DtcSnapshot


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
