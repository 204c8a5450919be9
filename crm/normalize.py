"""Stream records -> ``CrmEvent``: predictions, crash alerts, anomalies, device events (DTC, gate plates).

Pure functions, no I/O, so the Faust agents stay thin and the dry run can replay a log file.
A record that is not for the CRM gives ``[]``; a malformed one raises ``DecodeError`` (counted
and dead-lettered by the caller): every field is type- and range-checked (``core.checks``), a
DTC list is at most ``MAX_DTCS`` SAE codes, and with ``gates`` given a ``gate.*`` event counts
only from a registered gate camera (``WireError('not_a_gate')``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Container
from typing import Any, Final

from core.checks import MAX_ID_LEN, bounded_str, check_dtcs, finite
from core.crm_events import CrmEvent
from core.dtc import dtc_severity
from core.errors import DecodeError, WireError
from core.topics import KAFKA_ALERTS, KAFKA_ANOMALIES, KAFKA_EVENTS, KAFKA_PREDICTIONS
from core.wire import decode_event

MAX_PLATE_LEN: Final = 32
MAX_TS_US: Final = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
MAX_DAYS: Final = 36_500.0  # a prediction further out than a century is not one


def _ts(ts_us: Any) -> dt.datetime:
    if type(ts_us) is not int or not 0 <= ts_us <= MAX_TS_US:
        raise DecodeError("ts_us must be an integer of microseconds between 1970 and 9999")
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ts_us)


def _str(value: Any, what: str, max_len: int = MAX_ID_LEN, min_len: int = 1) -> str:
    try:
        return bounded_str(value, "bad_field", what, max_len=max_len, min_len=min_len)
    except WireError as err:
        raise DecodeError(str(err)) from err


def _num(value: Any, what: str, limit: float = 1e12) -> float:
    try:
        x = finite(value, "bad_field", what)
    except WireError as err:
        raise DecodeError(str(err)) from err
    if not -limit <= x <= limit:
        raise DecodeError(f"{what} out of range")
    return x


def _opt_num(value: Any) -> float | None:
    """A score the device may leave out: a finite number or None (anything else dropped)."""
    if type(value) is int and abs(value) <= 10**12:
        return float(value)
    if type(value) is float and math.isfinite(value) and abs(value) <= 1e12:
        return value
    return None


def _json(payload: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise DecodeError(f"{what}: not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise DecodeError(f"{what}: expected a JSON object")
    return doc


def from_oil_life(doc: dict[str, Any]) -> list[CrmEvent]:
    """An oil-life prediction (``stream.partition_models``: ``value`` is the life left, 0..1) as a
    maintenance event; ``interval`` names the oil interval (the rule's once-per-period)."""
    vin = _str(doc.get("vin"), "oil_life vin")
    life = _num(doc.get("value"), "oil_life value", 10.0)
    if not 0.0 <= life <= 1.0:
        raise DecodeError("oil_life value must be the life left between 0 and 1")
    interval = doc.get("interval", "")
    if not isinstance(interval, str | int) or len(str(interval)) > MAX_ID_LEN:
        raise DecodeError("oil_life interval must be a short string")
    ts = _ts(doc.get("ts_us"))
    return [
        CrmEvent(
            kind="oil_life",
            ts=ts,
            id=f"{vin}:oil_life:{doc['ts_us']}",
            vin=vin,
            data={"life_pct": round(life * 100, 1), "interval": str(interval) or "first_seen"},
            source=KAFKA_PREDICTIONS,
        )
    ]


BATTERY_PROBLEMS: Final = ("lv_replace", "lv_weak", "ev_imbalance", "ev_soh_low", "ev_soh_fading")
# numbers a battery record may carry, with their range (anything else is refused)
BATTERY_NUMBERS: Final = {
    "lv_health_pct": (0.0, 100.0),
    "lv_soc_pct": (0.0, 100.0),
    "lv_crank_v": (0.0, 20.0),
    "ev_spread_mv": (0.0, 5000.0),
    "ev_soh_pct": (0.0, 100.0),
    "ev_soh_pct_per_year": (-100.0, 100.0),
}
_ISO_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def from_battery(doc: dict[str, Any]) -> list[CrmEvent]:
    """A 12 V / EV battery record (``stream.battery``): its problems (a list of known names),
    ``due`` (any problem), the problem ``episode`` (the rule's once-per-period) and the numbers
    they were judged from (each null or within its range)."""
    vin = _str(doc.get("vin"), "battery vin")
    problems = doc.get("problems")
    if type(problems) is not list or len(problems) > len(BATTERY_PROBLEMS):
        raise DecodeError("battery problems must be a short list")
    if not all(type(p) is str and p in BATTERY_PROBLEMS for p in problems):
        raise DecodeError(f"battery problems must be among {BATTERY_PROBLEMS}")
    due = doc.get("due")
    if type(due) is not bool or due != bool(problems):
        raise DecodeError("battery due must be true exactly when there are problems")
    episode = doc.get("episode", "")
    if type(episode) is not str or len(episode) > MAX_ID_LEN:
        raise DecodeError("battery episode must be a short string")
    data: dict[str, Any] = {"problems": ",".join(problems), "due": due, "episode": episode}
    for name, (lo, hi) in BATTERY_NUMBERS.items():
        raw = doc.get(name)
        if raw is not None:
            x = _num(raw, f"battery {name}")
            if not lo <= x <= hi:
                raise DecodeError(f"battery {name} out of range {lo}..{hi}")
            raw = round(x, 2)
        data[name] = raw
    eol = doc.get("ev_soh_eol_date")
    if eol is not None:  # the day the pack's trend reaches 70 % (stream.battery)
        try:
            if type(eol) is not str or not _ISO_DATE.match(eol):
                raise ValueError(eol)
            dt.date.fromisoformat(eol)
        except ValueError as err:
            raise DecodeError("battery ev_soh_eol_date must be a YYYY-MM-DD date") from err
    data["ev_soh_eol_date"] = eol
    data["lv_bad"] = any(p.startswith("lv_") for p in problems)
    data["ev_bad"] = any(p.startswith("ev_") for p in problems)
    return [
        CrmEvent(
            kind="battery",
            ts=_ts(doc.get("ts_us")),
            id=f"{vin}:battery:{doc['ts_us']}",
            vin=vin,
            data=data,
            source=KAFKA_PREDICTIONS,
        )
    ]


def from_prediction(payload: bytes) -> list[CrmEvent]:
    doc = _json(payload, KAFKA_PREDICTIONS)
    if doc.get("kind") == "oil_life":
        return from_oil_life(doc)
    if doc.get("kind") == "battery":
        return from_battery(doc)
    if doc.get("kind") != "service_due":
        return []  # other predictions are not CRM events
    vin = _str(doc.get("vin"), "service_due vin")
    days = _num(doc.get("days"), "service_due days", MAX_DAYS)
    km, odo = _num(doc.get("km"), "service_due km"), _num(doc.get("odo"), "service_due odo")
    ts = _ts(doc.get("ts_us"))
    try:
        due = ts + dt.timedelta(days=days)
    except OverflowError as err:
        raise DecodeError("service_due: due date out of range") from err
    cycle = doc.get("cycle") or f"km{int(km)}"
    if not isinstance(cycle, str | int) or len(str(cycle)) > MAX_ID_LEN:
        raise DecodeError("service_due cycle must be a short string")
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


SILENT_KINDS: Final = {"silent": "silent_car", "silent_end": "silent_car_end"}


def from_silent(doc: dict[str, Any]) -> list[CrmEvent]:
    """A silent car (``stream.silence``): ``silent_car`` opens the episode's call-centre card,
    ``silent_car_end`` (the car reports again) closes it; both carry the episode's id."""
    kind = SILENT_KINDS[doc["kind"]]
    vin = _str(doc.get("vin"), f"{kind} vin")
    alarm = _str(doc.get("alarm_id"), f"{kind} alarm_id", max_len=128)
    raw = doc.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    speed, silent_s = _opt_num(data.get("speed_kmh")), _opt_num(data.get("silent_s"))
    status = data.get("device_status")
    return [
        CrmEvent(
            kind=kind,
            ts=_ts(doc.get("ts_us")),
            id=alarm if kind == "silent_car" else f"{alarm}:end",
            vin=vin,
            device=_str(doc["device"], f"{kind} device") if doc.get("device") else None,
            data={
                "alarm_id": alarm,
                "speed_kmh": None if speed is None else round(speed),
                "silent_s": None if silent_s is None else round(silent_s),
                "device_status": status if status in ("online", "offline") else "unknown",
                "severity": "critical",
            },
            source=KAFKA_ALERTS,
        )
    ]


def from_alert(payload: bytes) -> list[CrmEvent]:
    doc = _json(payload, KAFKA_ALERTS)
    if isinstance(doc.get("kind"), str) and doc["kind"] in SILENT_KINDS:  # a list is no kind
        return from_silent(doc)
    if doc.get("kind") != "crash":
        return []
    vin = _str(doc.get("vin"), "crash alert vin")
    device = doc.get("device")
    if device is not None:
        device = _str(device, "crash alert device")
    loc = doc.get("location")
    if loc is not None:  # kept as given only when it is a position
        if type(loc) is not dict or not {"lat", "lon"} <= set(loc):
            loc = None
        else:
            lat, lon = _opt_num(loc.get("lat")), _opt_num(loc.get("lon"))
            ok = lat is not None and lon is not None and abs(lat) <= 90 and abs(lon) <= 180
            loc = {"lat": lat, "lon": lon, "ts_us": loc.get("ts_us")} if ok else None
    raw = doc.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return [
        CrmEvent(
            kind="crash",
            ts=_ts(doc.get("ts_us")),
            id=f"{vin}:crash:{doc['ts_us']}",
            vin=vin,
            device=device,
            data={
                "trigger": str(data.get("trigger", data.get("reason", "crash")))[:MAX_ID_LEN],
                "location": loc,
                "severity": "critical",
            },
            source=KAFKA_ALERTS,
        )
    ]


def from_device_event(payload: bytes, gates: Container[str] | None = None) -> list[CrmEvent]:
    """CRM events of one device event; with ``gates``, ``gate.*`` only from those devices."""
    try:
        ev = decode_event(payload)
    except WireError as err:  # its reason is the dead letter's
        raise WireError(err.reason, f"{KAFKA_EVENTS}: {err.detail}") from err
    base = f"{ev.device_id}:{ev.boot_id}:{ev.seq}"
    if gates is not None and ev.kind.startswith("gate.") and ev.device_id not in gates:
        raise WireError("not_a_gate", f"{ev.device_id!r} is not a registered gate ({ev.kind})")
    ts = _ts(ev.ts_us)
    if ev.kind == "gate.plate":
        plate = ev.data.get("plate")
        if type(plate) is not str or not 0 < len(plate) <= MAX_PLATE_LEN:
            raise DecodeError(f"gate.plate event {base} without a plate")
        return [
            CrmEvent(
                kind="gate_arrival",
                ts=ts,
                id=base,
                data={
                    "plate": plate,
                    "camera": str(ev.data.get("camera", ""))[:MAX_ID_LEN],
                    "confidence": _opt_num(ev.data.get("confidence")),
                },
                source=KAFKA_EVENTS,
            )
        ]
    if ev.kind == "gate.face":
        member = ev.data.get("member_id")
        if type(member) is not str or not 0 < len(member) <= MAX_ID_LEN:
            raise DecodeError(f"gate.face event {base} without a member_id")
        return [
            CrmEvent(
                kind="gate_arrival",
                ts=ts,
                id=base,
                customer_id=member,
                data={
                    "via": "face",
                    "camera": str(ev.data.get("camera", ""))[:MAX_ID_LEN],
                    "similarity": _opt_num(ev.data.get("similarity")),
                },
                source=KAFKA_EVENTS,
            )
        ]
    if ev.kind == "dtc":
        codes = check_dtcs(ev.data.get("codes"), f"dtc event {base}")
        sev, desc = ev.data.get("severity"), ev.data.get("descriptions")
        declared: dict[str, Any] = sev if isinstance(sev, dict) else {}
        texts: dict[str, Any] = desc if isinstance(desc, dict) else {}
        out = []
        for code in codes:
            out.append(
                CrmEvent(
                    kind="dtc",
                    ts=ts,
                    id=f"{base}:{code}",
                    device=ev.device_id,
                    data={
                        "code": code,
                        "severity": dtc_severity(code, declared.get(code)),
                        "description": str(texts.get(code, ""))[:500],
                    },
                    source=KAFKA_EVENTS,
                )
            )
        return out
    if ev.kind == "intrusion":
        return [from_intrusion(ev, base, ts)]
    return []


INTRUSION_KINDS: Final = frozenset({"dos", "fuzzing", "injection", "forged_payload", "bad_dlc"})
INTRUSION_REASONS: Final = ("unknown_id", "bad_dlc", "frozen_bits", "short_gap", "high_rate")
_CAN_ID: Final = re.compile(r"^0x[0-9a-f]{3,8}$")
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def from_intrusion(ev: Any, base: str, ts: dt.datetime) -> CrmEvent:
    """An edge ``intrusion`` event (``edge.intrusion``) as a security card's facts: every field
    checked, ids and reasons turned into short text (the card shows them escaped)."""
    d = ev.data
    attack = d.get("kind")
    if not isinstance(attack, str) or attack not in INTRUSION_KINDS:
        raise DecodeError(f"intrusion event {base}: kind must be one of {sorted(INTRUSION_KINDS)}")
    flagged = _num(d.get("flagged"), "intrusion flagged", 1e12)
    frames = _num(d.get("frames"), "intrusion frames", 1e12)
    score = _num(d.get("score"), "intrusion score", 1.0)
    raw_reasons = d.get("reasons")
    reasons = raw_reasons if isinstance(raw_reasons, dict) else {}
    why = [
        f"{r} {int(n)}"
        for r in INTRUSION_REASONS
        if type(n := reasons.get(r)) is int and 0 < n <= 10**12
    ]
    rows = d.get("ids") if isinstance(d.get("ids"), list) else []
    ids = []
    for row in rows[:8]:
        if not isinstance(row, dict) or type(row.get("id")) is not str:
            continue
        if (
            not _CAN_ID.fullmatch(row["id"])
            or type(row.get("frames")) is not int
            or not 0 <= row["frames"] <= 10**12
        ):
            continue
        known = "known" if row.get("known") is True else "unknown"
        ids.append(f"{row['id']} ({known}, {row['frames']} frames)")
    model, src = d.get("vehicle_model"), d.get("source")
    return CrmEvent(
        kind="intrusion",
        ts=ts,
        id=base,
        device=ev.device_id,
        data={
            "attack": attack,
            "attack_text": attack.replace("_", " "),
            "score": round(max(score, 0.0), 4),
            "score_pct": round(100 * max(score, 0.0), 1),
            "flagged": int(flagged),
            "frames": int(frames),
            "reasons": ", ".join(why) or "-",
            "ids": "; ".join(ids) or "-",
            "distinct_ids": int(_opt_num(d.get("distinct_ids")) or len(ids)),
            "source": src if isinstance(src, str) and _NAME.fullmatch(src) else "",
            "vehicle_model": model if isinstance(model, str) and _NAME.fullmatch(model) else "",
            "follow_up": d.get("follow_up") is True,
            "severity": "high",
        },
        source=KAFKA_EVENTS,
    )


MAX_EVIDENCE: Final = 512  # points of an anomaly's evidence window kept (the stream sends 60)
MAX_SIGNAL_LEN: Final = 256


def from_anomaly(payload: bytes) -> list[CrmEvent]:
    """An anomaly of the stream's detector (``stream.anomaly``): one event per (vehicle, signal)
    episode, with its evidence window as ``[ts_us, value]`` points (non-finite values dropped,
    at most ``MAX_EVIDENCE``); ``slot`` (vin|signal) is what the rule's cool-down is about."""
    doc = _json(payload, KAFKA_ANOMALIES)
    vin = _str(doc.get("vin"), "anomaly vin")
    signal = _str(doc.get("signal"), "anomaly signal", max_len=MAX_SIGNAL_LEN)
    ts = _ts(doc.get("ts_us"))
    value, score = _num(doc.get("value"), "anomaly value"), _num(doc.get("score"), "anomaly score")
    threshold = _opt_num(doc.get("threshold"))
    detector = _str(doc.get("detector", "unknown"), "anomaly detector")
    win = doc.get("window")
    win = win if isinstance(win, dict) else {}
    t_raw, v_raw = win.get("ts_us"), win.get("values")
    if not isinstance(t_raw, list) or not isinstance(v_raw, list) or len(t_raw) != len(v_raw):
        raise DecodeError("anomaly window must hold ts_us and values lists of one length")
    evidence = []
    for t, raw in zip(t_raw[-MAX_EVIDENCE:], v_raw[-MAX_EVIDENCE:], strict=True):
        v = _opt_num(raw)
        if type(t) is int and 0 <= t <= MAX_TS_US and v is not None:
            evidence.append([t, v])
    return [
        CrmEvent(
            kind="anomaly",
            ts=ts,
            id=f"{vin}:anomaly:{signal}:{doc['ts_us']}"[: MAX_ID_LEN * 4],
            vin=vin,
            data={
                "signal": signal,
                "signal_name": signal.rsplit(".", 1)[-1],
                "slot": f"{vin}|{signal}",
                "value": round(value, 3),
                "score": round(score, 3),
                "threshold": threshold,
                "detector": detector,
                "evidence": evidence,
            },
            source=KAFKA_ANOMALIES,
        )
    ]


NORMALISERS: Final = {
    KAFKA_ANOMALIES: from_anomaly,
    KAFKA_PREDICTIONS: from_prediction,
    KAFKA_ALERTS: from_alert,
    KAFKA_EVENTS: from_device_event,
}


def from_record(topic: str, payload: bytes, gates: Container[str] | None = None) -> list[CrmEvent]:
    """The CRM events in one record of ``topic``; ``gates``: see ``from_device_event``."""
    if topic == KAFKA_EVENTS:
        return from_device_event(payload, gates)
    fn = NORMALISERS.get(topic)
    if fn is None:
        raise DecodeError(f"the CRM does not consume topic {topic!r}")
    return fn(payload)
