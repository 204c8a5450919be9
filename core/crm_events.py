"""Event shapes the CRM consumes: the normalised ``CrmEvent`` and the service-due prediction record.

Producers (the stream's prediction publisher, tools, tests) write a *service-due prediction* on
``carpulse.predictions`` as JSON::

    {"vin": "LSV...", "kind": "service_due", "ts_us": 1767225600000000,
     "days": 21.5,           # days until the service is due (central estimate)
     "km": 45000.0,          # odometer at which it is due
     "odo": 44310.0,         # odometer now
     "cycle": "2025-06-01"}  # optional: identifies the service interval (e.g. last service date)

Crash alerts (``carpulse.alerts``) and device events (``carpulse.events``: ``dtc`` with
``{"codes": [...]}``, ``gate.plate`` with ``{"plate", "camera", ...}``) keep their own shapes
(see ``stream.alerts`` and ``edge.gate``); the CRM turns all of them into ``CrmEvent``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final

# The kinds a CRM rule triggers on (``on:`` in a rules file). ``silent_car_end`` is an event
# too, but no rule's: it closes the card of its ``silent_car`` episode (crm.agents).
EVENT_KINDS: Final = (
    "service_due",
    "gate_arrival",
    "tier_upgraded",
    "coupon_expiring",
    "dtc",
    "crash",
    "silent_car",
    "oil_life",
    "anomaly",
    "tier_downgraded",
    "customer_inactive",
    "referral_rewarded",
    "battery",
    "intrusion",
)


@dataclass(frozen=True)
class CrmEvent:
    """One thing that happened, as the CRM rules see it. ``id`` is stable across replays."""

    kind: str
    ts: dt.datetime  # aware UTC, the time it happened (not when it was processed)
    id: str
    vin: str | None = None
    device: str | None = None
    customer_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ts": self.ts.isoformat(),
            "id": self.id,
            "vin": self.vin,
            "device": self.device,
            "customer_id": self.customer_id,
            "data": self.data,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CrmEvent:
        """Inverse of ``to_json``; raises ``KeyError``/``ValueError``/``TypeError`` on bad input."""
        ts = dt.datetime.fromisoformat(str(doc["ts"]))
        if ts.tzinfo is None:
            raise ValueError(f"naive timestamp {doc['ts']!r}: add a UTC offset")
        data = doc.get("data") or {}
        if not isinstance(data, dict):
            raise TypeError("data must be a mapping")
        return cls(
            kind=str(doc["kind"]),
            ts=ts.astimezone(dt.UTC),
            id=str(doc.get("id") or f"{doc.get('vin')}:{ts.isoformat()}"),
            vin=doc.get("vin"),
            device=doc.get("device"),
            customer_id=doc.get("customer_id"),
            data=data,
            source=str(doc.get("source", "")),
        )
