"""DTC snapshots -> ``dtc`` events on change: new and cleared codes, MIL on/off, freeze frame.

The event's ``codes`` is the full list of confirmed (mode 03) codes, the contract the stream
(``stream.alerts``: it replaces the vehicle's ``active_dtcs``) and the CRM (``crm.normalize``: one
CRM event per code, with ``descriptions``) already consume. Beside it::

    {"codes": ["P0301"], "pending": ["P0171"], "new": ["P0301"], "cleared": [],
     "new_pending": [], "mil": true, "mil_changed": true, "dtc_count": 1,
     "descriptions": {"P0301": "Cylinder 1 misfire detected"},
     "freeze_frame": {"dtc": "P0301", "values": {"Vehicle.Speed": 52.0}}}   # when the ECU has one

The first snapshot after a start is always published (the cloud's list is replaced by the car's),
later ones only when the stored or pending codes or the MIL changed.
"""

from __future__ import annotations

from typing import Any

from core.dtc import describe
from firmware_bridge.obd.dtc_poll import DtcSnapshot

DTC_PRIORITY = 2


class DtcWatcher:
    """Remembers the last published snapshot; :meth:`update` returns event data on a change."""

    def __init__(self) -> None:
        self.last: DtcSnapshot | None = None

    def update(self, snap: DtcSnapshot) -> dict[str, Any] | None:
        prev = self.last
        if prev is not None and (prev.stored, prev.pending, prev.mil) == (
            snap.stored,
            snap.pending,
            snap.mil,
        ):
            return None
        # A MIL the ECU did not report this time keeps its last known state.
        mil = snap.mil if snap.mil is not None else (prev.mil if prev else None)
        old_s = set(prev.stored) if prev else set()
        old_p = set(prev.pending) if prev else set()
        data: dict[str, Any] = {
            "codes": list(snap.stored),
            "pending": list(snap.pending),
            "new": sorted(set(snap.stored) - old_s),
            "cleared": sorted(old_s - set(snap.stored)),
            "new_pending": sorted(set(snap.pending) - old_p),
            "mil": mil,
            "mil_changed": prev is not None and mil is not None and mil != prev.mil,
            "descriptions": {c: describe(c) for c in (*snap.stored, *snap.pending)},
        }
        if snap.count is not None:
            data["dtc_count"] = snap.count
        if snap.truncated:
            data["truncated"] = snap.truncated
        if snap.freeze_frame or snap.freeze_dtc:
            data["freeze_frame"] = {"dtc": snap.freeze_dtc, "values": dict(snap.freeze_frame)}
        self.last = DtcSnapshot(
            snap.stored, snap.pending, mil, snap.count, snap.truncated,
            snap.freeze_dtc, dict(snap.freeze_frame),
        )  # fmt: skip
        return data
