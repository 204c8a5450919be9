"""One maintenance card per vehicle: service-due and oil-life merged, filed only when due soon.

Pure functions, no I/O (``dashboards.inbox.record_filer`` files the card). The card's data keeps
the latest prediction of each part (``service_due``, ``oil_life``) with its evidence series;
``due_parts`` says which of them is due within the ``Horizon``:

* service: due in at most ``days`` days or ``km`` km;
* oil: life left at most ``oil_pct`` %, or the trend of its evidence reaching zero within
  ``days`` days.

A vehicle whose parts are all far off gets no card (an "oil life left 100 %" card teaches
advisors to ignore the inbox).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

PARTS: Final = ("service_due", "oil_life")
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


def due_parts(parts: dict[str, dict[str, Any]], h: Horizon) -> list[str]:
    """The parts of a vehicle's maintenance due within the horizon, service first."""
    check = {"service_due": service_due, "oil_life": oil_due}
    return [p for p in PARTS if p in parts and check[p](parts[p], h)]


def episode_key(vin: str, parts: dict[str, dict[str, Any]], due: list[str]) -> str:
    """The card of this maintenance episode: the service cycle and the oil interval that are
    due. A card acted on stays closed for its episode; a new cycle or oil interval is a new
    card."""
    cycle = str(parts["service_due"].get("cycle", "")) if "service_due" in due else "-"
    oil = str(parts["oil_life"].get("interval", "")) if "oil_life" in due else "-"
    return f"{vin}|{cycle}|{oil}"


def title(parts: dict[str, dict[str, Any]], due: list[str]) -> str:
    """``Service due by 2027-01-03 · Oil change``: what is due, the service date when known."""
    names = []
    for p in due:
        if p == "service_due":
            when = due_date(parts[p])
            names.append(f"Service due by {when}" if when else "Service due")
        else:
            names.append("Oil change")
    return " · ".join(names) or "Maintenance"


def due_date(doc: dict[str, Any]) -> str | None:
    ts_us, days = doc.get("ts_us"), doc.get("days")
    if type(ts_us) is int and isinstance(days, int | float):
        at = dt.datetime.fromtimestamp(ts_us / 1e6, dt.UTC) + dt.timedelta(days=float(days))
        return at.date().isoformat()
    return None
