"""One maintenance card per vehicle: service-due, oil-life and battery merged, filed only when due soon.

Pure functions, no I/O (``dashboards.inbox.record_filer`` files the card). The card's data keeps
the latest prediction of each part (``service_due``, ``oil_life``) with its evidence series;
``due_parts`` says which of them is due within the ``Horizon``:

* service: due in at most ``days`` days or ``km`` km;
* oil: life left at most ``oil_pct`` %, or the trend of its evidence reaching zero within
  ``days`` days;
* battery: the stream's battery record names a problem (``due``: a weak 12 V battery, an EV
  pack out of balance or below its state of health; ``stream.battery``).

A vehicle whose parts are all far off gets no card (an "oil life left 100 %" card teaches
advisors to ignore the inbox).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

PARTS: Final = ("service_due", "oil_life", "battery")
BATTERY_TEXT: Final = {
    "lv_replace": "12 V battery: replace",
    "lv_weak": "12 V battery: weak",
    "ev_imbalance": "EV pack: cells out of balance",
    "ev_soh_low": "EV pack: state of health low",
    "ev_soh_fading": "EV pack: state of health falling fast",
}
EVIDENCE_POINTS: Final = 60
DAY_US: Final = 86_400e6


@dataclass(frozen=True)
class Horizon:
    """What counts as due (``[dashboard] maintenance_horizon_days``, ``..._km``, ``oil_due_pct``)."""

    days: float = 30.0
    km: float = 1000.0
    oil_pct: float = 20.0


def evidence_value(doc: dict[str, Any]) -> float | None:
    """The series the chart draws: the oil life left or the distance left."""
    if isinstance(doc.get("value"), int | float):
        return float(doc["value"])
    if doc.get("kind") == "battery":  # the cranking dip, else the pack's cell spread
        for key in ("lv_crank_v", "ev_spread_mv"):
            if type(doc.get(key)) in (int, float) and abs(doc[key]) < 1e6:
                return float(doc[key])
        return None
    if isinstance(doc.get("km"), int | float) and isinstance(doc.get("odo"), int | float):
        return round(float(doc["km"]) - float(doc["odo"]), 1)
    return None


def with_evidence(doc: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """``doc`` with the evidence of ``previous`` (the same part's last one) plus its own point."""
    evidence = list((previous or {}).get("evidence") or [])
    value = evidence_value(doc)
    if value is not None and type(doc.get("ts_us")) is int:
        evidence = [*evidence, [doc["ts_us"], value]][-EVIDENCE_POINTS:]
    out = {k: v for k, v in doc.items() if k != "evidence"}
    out["evidence"] = evidence
    return out


def oil_days_left(doc: dict[str, Any]) -> float | None:
    """Days until the oil life reaches zero at the trend of its evidence (None: no trend)."""
    ev = doc.get("evidence") or []
    if len(ev) < 2:
        return None
    (ta, va), (tb, vb) = ev[0], ev[-1]
    rate = (va - vb) / max((tb - ta) / DAY_US, 1e-9)  # life fraction per day
    if rate <= 0 or vb <= 0:
        return 0.0 if vb <= 0 else None
    return float(min(vb / rate, 3650.0))


def service_due(doc: dict[str, Any], h: Horizon) -> bool:
    days, km, odo = doc.get("days"), doc.get("km"), doc.get("odo")
    if isinstance(days, int | float) and days <= h.days:
        return True
    if isinstance(km, int | float) and isinstance(odo, int | float):
        return float(km) - float(odo) <= h.km
    return False


def oil_due(doc: dict[str, Any], h: Horizon) -> bool:
    life = doc.get("value")
    if isinstance(life, int | float) and life * 100 <= h.oil_pct:
        return True
    left = oil_days_left(doc)
    return left is not None and left <= h.days


def battery_due(doc: dict[str, Any], h: Horizon) -> bool:
    probs = doc.get("problems")
    return doc.get("due") is True and any(
        isinstance(p, str) and p in BATTERY_TEXT for p in (probs if isinstance(probs, list) else [])
    )


def battery_summary(doc: dict[str, Any]) -> str:
    """``12 V battery: replace (cranking dips to 9.3 V) · EV pack: ...``: the problems named in
    the record (only known ones: the record came from a topic) and their numbers."""
    probs = doc.get("problems")
    names = [
        p
        for p in (probs if isinstance(probs, list) else [])
        if isinstance(p, str) and p in BATTERY_TEXT
    ]
    if not names:
        return "battery fine"

    def num(key: str) -> float | None:
        x = doc.get(key)
        return float(x) if isinstance(x, int | float) and abs(x) < 1e6 else None

    out = []
    for p in names:
        text = BATTERY_TEXT[p]
        if p.startswith("lv_") and (v := num("lv_crank_v")) is not None:
            text += f" (cranking dips to {v:.1f} V)"
        elif p == "ev_imbalance" and (v := num("ev_spread_mv")) is not None:
            text += f" (cell spread {v:.0f} mV)"
        elif p.startswith("ev_soh_") and (v := num("ev_soh_pct")) is not None:
            trend = soh_trend_text(doc) if p == names[-1] else ""  # said once, at the last
            text += f" ({v:.1f} %{trend})"
        out.append(text)
    return " · ".join(out)


def soh_trend_text(doc: dict[str, Any]) -> str:
    """``, -3.2 %/year, 70 % about 2029-03``: the pack's trend, when the record has one."""
    rate, eol = doc.get("ev_soh_pct_per_year"), doc.get("ev_soh_eol_date")
    out = ""
    if isinstance(rate, int | float) and abs(rate) <= 100:
        out += f", {rate:+.1f} %/year"
    if isinstance(eol, str) and len(eol) == 10 and eol[4] == "-":
        out += f", 70 % about {eol[:7]}"
    return out


def due_parts(parts: dict[str, dict[str, Any]], h: Horizon) -> list[str]:
    """The parts of a vehicle's maintenance due within the horizon, service first."""
    check = {"service_due": service_due, "oil_life": oil_due, "battery": battery_due}
    return [p for p in PARTS if p in parts and check[p](parts[p], h)]


def episode_key(vin: str, parts: dict[str, dict[str, Any]], due: list[str]) -> str:
    """The card of this maintenance episode: the service cycle and the oil interval that are
    due. A card acted on stays closed for its episode; a new cycle or oil interval is a new
    card."""
    cycle = str(parts["service_due"].get("cycle", "")) if "service_due" in due else "-"
    oil = str(parts["oil_life"].get("interval", "")) if "oil_life" in due else "-"
    key = f"{vin}|{cycle}|{oil}"
    if "battery" in due:  # a battery problem episode (keys of cards without one unchanged)
        key += "|" + str(parts["battery"].get("episode", ""))
    return key


def title(parts: dict[str, dict[str, Any]], due: list[str]) -> str:
    """``Service due by 2027-01-03 · Oil change``: what is due, the service date when known."""
    names = []
    for p in due:
        if p == "service_due":
            when = due_date(parts[p])
            names.append(f"Service due by {when}" if when else "Service due")
        elif p == "oil_life":
            names.append("Oil change")
        else:
            names.append("Battery check")
    return " · ".join(names) or "Maintenance"


def due_date(doc: dict[str, Any]) -> str | None:
    ts_us, days = doc.get("ts_us"), doc.get("days")
    if type(ts_us) is int and isinstance(days, int | float):
        at = dt.datetime.fromtimestamp(ts_us / 1e6, dt.UTC) + dt.timedelta(days=float(days))
        return at.date().isoformat()
    return None
