"""The vehicle timeline on the console's vehicle page: what happened to the car in the current
ownership period, newest first.

Entries come from what the CRM keeps: the cards the rules and the dashboard's feed filed for the
vehicle (fault codes, anomalies, crashes, silent-car alarms), the dealer gate's sightings of its
plate, and the commands agents sent it (their audit rows; the car's answer, when this dashboard
process still has it, from the command channel). Battery and service cards are maintenance, shown
in the advisor's inbox, not here.

Times: a card's is when it was filed (the CRM or the dashboard's feed, seconds after the car sent
it), a sighting's the camera's, a command's when the agent sent it.

Privacy: only entries at or after the start of the current ownership are read (a new owner's
call never shows the previous owner's faults, crashes, visits or commands); a vehicle between
owners shows what happened since the last ownership ended; one never owned shows everything.
No entry carries a position (a crash card's position stays behind the audited location tool; a
gate sighting names the dealer's own camera). Each view is audited (``vehicle.timeline``) like a
console search: it reads a person's history with the car. Every text comes from the CRM's rows,
some of it from devices (a DTC description, a plate): the template escapes all of it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.schema import AuditRecord, Ownership
from crm.tables import GateSighting, InboxItem

MAX_ENTRIES: Final = 200
MAX_TEXT: Final = 300  # characters of one entry's text (a card body can be long)
CARD_KINDS: Final = ("dtc", "anomaly", "crash", "silent_car", "intrusion")
# the console's labels, English and Chinese (the CRM's staff languages)
LABELS: Final[dict[str, tuple[str, str]]] = {
    "dtc": ("Fault code", "故障码"),
    "anomaly": ("Anomaly", "异常"),
    "crash": ("Crash", "碰撞"),
    "silent_car": ("Silent car", "失联"),
    "intrusion": ("CAN intrusion", "总线入侵"),
    "gate": ("Gate arrival", "到店"),
    "command": ("Command", "远程指令"),
}

Acks = Callable[[str], Any]  # command id -> the car's ack (``dashboards.commands.Ack``) or None


@dataclass(frozen=True)
class Entry:
    at: dt.datetime
    kind: str
    label: str
    label_zh: str
    title: str
    detail: str = ""
    state: str = ""  # open / done for a card, the car's answer for a command


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def period_start(s: Session, vin: str) -> dt.datetime | None:
    """Where the vehicle's visible history starts: the current ownership's start; between
    owners, the end of the last one; never owned, None (all of it)."""
    rows = s.scalars(
        select(Ownership).where(Ownership.vin == vin).order_by(Ownership.valid_from)
    ).all()
    if not rows:
        return None
    last = rows[-1]
    return _utc(last.valid_from if last.valid_to is None else last.valid_to)


def _entry(kind: str, at: dt.datetime, title: str, detail: str = "", state: str = "") -> Entry:
    en, zh = LABELS[kind]
    return Entry(_utc(at), kind, en, zh, title[:MAX_TEXT], detail[:MAX_TEXT], state)


def _card_detail(item: InboxItem) -> str:
    data = item.data if isinstance(item.data, dict) else {}
    if item.kind == "dtc":
        codes = data.get("codes")
        parts = [
            f"{c.get('code')} {c.get('text') or ''}".strip() + f" ({c.get('severity')})"
            for c in (codes if isinstance(codes, list) else [])[:16]
            if isinstance(c, dict)
        ]
        return "; ".join(parts)
    return ""


def vehicle_timeline(
    s: Session, vin: str, acks: Acks | None = None, limit: int = MAX_ENTRIES
) -> tuple[dt.datetime | None, list[Entry]]:
    """The vehicle's timeline (newest first, at most ``limit``) and where its period starts."""
    since = period_start(s, vin)
    entries: list[Entry] = []
    cards = select(InboxItem).where(InboxItem.vin == vin, InboxItem.kind.in_(CARD_KINDS))
    gate = select(GateSighting).where(GateSighting.vin == vin)
    sent = select(AuditRecord).where(
        AuditRecord.subject == vin, AuditRecord.action.startswith("command.", autoescape=True)
    )
    if since is not None:
        cards = cards.where(InboxItem.created_at >= since)
        gate = gate.where(GateSighting.at >= since)
        sent = sent.where(AuditRecord.at >= since)
    for item in s.scalars(cards.order_by(InboxItem.created_at.desc()).limit(limit)):
        state = "done" if item.done_at is not None else "open"
        entries.append(_entry(item.kind, item.created_at, item.title, _card_detail(item), state))
    for g in s.scalars(gate.order_by(GateSighting.at.desc()).limit(limit)):
        who = "face match" if g.face_customer_id else "plate"
        entries.append(
            _entry(
                "gate", g.at, f"Plate {g.plate or '—'} at the gate", f"{who} · camera {g.camera}"
            )
        )
    for a in s.scalars(sent.order_by(AuditRecord.at.desc()).limit(limit)):
        detail = a.detail if isinstance(a.detail, dict) else {}
        name = a.action.removeprefix("command.")
        answer = ""
        cid = detail.get("command")
        if acks is not None and isinstance(cid, str):
            ack = acks(cid)
            answer = "pending" if ack is None else f"{ack.status}: {ack.detail or ack.reason}"
        entries.append(_entry("command", a.at, f"{name} sent by {a.actor}", "", answer))
    entries.sort(key=lambda e: e.at, reverse=True)
    return since, entries[:limit]


def timeline_view(request: Any, vin: str, ws: Any) -> dict[str, Any]:
    """What the vehicle page shows (``timeline.html``); the read is audited."""
    from crm.store import audit  # the app imports the store anyway; kept beside its one use

    channel = request.app.state.commands
    with request.app.state.crm.tx() as s:
        since, entries = vehicle_timeline(s, vin, None if channel is None else channel.ack)
        audit(s, ws.username or "", "vehicle.timeline", vin, "console", dealer_id=ws.dealer_id,
              entries=len(entries))  # fmt: skip
    return {"since": since, "entries": entries}
