"""Stream records -> ``CrmEvent``: predictions, crash alerts, device events (DTC, gate plates).

Pure functions, no I/O, so the Faust agents stay thin and the dry run can replay a log file.
A record that is not for the CRM gives ``[]``; a malformed one raises ``DecodeError`` (counted
and dead-lettered by the caller).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Final

from core.crm_events import CrmEvent
from core.errors import DecodeError, WireError
from core.topics import KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_PREDICTIONS
from core.wire import decode_event

# SAE J2012 codes whose fault can damage the engine or the driver's safety if driven on:
# misfires, overheating, oil pressure, brakes/ABS, airbags, high-voltage isolation.
HIGH_DTC: Final = re.compile(
    r"^(P030\d|P031[0-2]|P0217|P0218|P052[0-4]|P0A0[ABCDEF]|P1A|C00[2-3]\d|C0[1-2][0-9]{2}|B00\d\d)"
)
MEDIUM_DTC: Final = re.compile(r"^(P0[1-4]\d\d|U0\d\d\d)")
DTC_RE: Final = re.compile(r"^[PCBU][0-9A-F]{4}$")


def dtc_severity(code: str, declared: str | None = None) -> str:
    """``high``, ``medium`` or ``low``: the device's own label when it gives one, else by code."""
    if declared in ("high", "medium", "low"):
        return declared
    if HIGH_DTC.match(code):
        return "high"
    return "medium" if MEDIUM_DTC.match(code) else "low"


def _ts(ts_us: Any) -> dt.datetime:
    if not isinstance(ts_us, int) or isinstance(ts_us, bool):
        raise DecodeError(f"ts_us must be an integer of microseconds, got {ts_us!r}")
    return dt.datetime.fromtimestamp(ts_us / 1e6, dt.UTC)


def _json(payload: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise DecodeError(f"{what}: not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise DecodeError(f"{what}: expected a JSON object")
    return doc


def from_prediction(payload: bytes) -> list[CrmEvent]:
    doc = _json(payload, KAFKA_PREDICTIONS)
    if doc.get("kind") != "service_due":
        return []  # oil-life and other predictions are not CRM events (yet)
    try:
        vin, days, km, odo = (
            str(doc["vin"]),
            float(doc["days"]),
            float(doc["km"]),
            float(doc["odo"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DecodeError(f"service_due prediction: missing or bad field {err}") from err
    ts = _ts(doc.get("ts_us"))
    due = ts + dt.timedelta(days=days)
    cycle = doc.get("cycle") or f"km{int(km)}"
    return [
        CrmEvent(
            kind="service_due",
            ts=ts,
            id=f"{vin}:service_due:{doc['ts_us']}",
            vin=vin,
            data={
                "days": round(days, 1),
                "km": km,
                "odo": odo,
                "km_left": round(km - odo, 1),
                "due_date": due.strftime("%Y-%m-%d"),
                "cycle": str(cycle),
            },
            source=KAFKA_PREDICTIONS,
        )
    ]


def from_alert(payload: bytes) -> list[CrmEvent]:
    doc = _json(payload, KAFKA_ALERTS)
    if doc.get("kind") != "crash":
        return []
    vin = doc.get("vin")
    if not isinstance(vin, str) or not vin:
        raise DecodeError("crash alert without a vin")
    raw = doc.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return [
        CrmEvent(
            kind="crash",
            ts=_ts(doc.get("ts_us")),
            id=f"{vin}:crash:{doc['ts_us']}",
            vin=vin,
            device=doc.get("device"),
            data={
                "trigger": str(data.get("trigger", data.get("reason", "crash"))),
                "location": doc.get("location"),
                "severity": "critical",
            },
            source=KAFKA_ALERTS,
        )
    ]


def from_device_event(payload: bytes) -> list[CrmEvent]:
    try:
        ev = decode_event(payload)
    except WireError as err:
        raise DecodeError(f"{KAFKA_EVENTS}: {err}") from err
    base = f"{ev.device_id}:{ev.boot_id}:{ev.seq}"
    ts = _ts(ev.ts_us)
    if ev.kind == "gate.plate":
        plate = ev.data.get("plate")
        if not isinstance(plate, str) or not plate:
            raise DecodeError(f"gate.plate event {base} without a plate")
        return [
            CrmEvent(
                kind="gate_arrival",
                ts=ts,
                id=base,
                data={
                    "plate": plate,
                    "camera": str(ev.data.get("camera", "")),
                    "confidence": ev.data.get("confidence"),
                },
                source=KAFKA_EVENTS,
            )
        ]
    if ev.kind == "gate.face":
        member = ev.data.get("member_id")
        if not isinstance(member, str) or not member:
            raise DecodeError(f"gate.face event {base} without a member_id")
        return [
            CrmEvent(
                kind="gate_arrival",
                ts=ts,
                id=base,
                customer_id=member,
                data={
                    "via": "face",
                    "camera": str(ev.data.get("camera", "")),
                    "similarity": ev.data.get("similarity"),
                },
                source=KAFKA_EVENTS,
            )
        ]
    if ev.kind == "dtc":
        codes = ev.data.get("codes")
        if not isinstance(codes, list):
            raise DecodeError(f"dtc event {base}: 'codes' must be a list")
        sev, desc = ev.data.get("severity"), ev.data.get("descriptions")
        declared: dict[str, Any] = sev if isinstance(sev, dict) else {}
        texts: dict[str, Any] = desc if isinstance(desc, dict) else {}
        out = []
        for code in sorted({str(c).upper() for c in codes}):
            if not DTC_RE.match(code):
                raise DecodeError(f"dtc event {base}: bad code {code!r}")
            out.append(
                CrmEvent(
                    kind="dtc",
                    ts=ts,
                    id=f"{base}:{code}",
                    device=ev.device_id,
                    data={
                        "code": code,
                        "severity": dtc_severity(code, declared.get(code)),
                        "description": str(texts.get(code, "")),
                    },
                    source=KAFKA_EVENTS,
                )
            )
        return out
    return []


NORMALISERS: Final = {
    KAFKA_PREDICTIONS: from_prediction,
    KAFKA_ALERTS: from_alert,
    KAFKA_EVENTS: from_device_event,
}


def from_record(topic: str, payload: bytes) -> list[CrmEvent]:
    """The CRM events in one record of ``topic``."""
    fn = NORMALISERS.get(topic)
    if fn is None:
        raise DecodeError(f"the CRM does not consume topic {topic!r}")
    return fn(payload)
