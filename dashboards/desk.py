"""The call-centre agent's desk (the console's start page): the open call-centre queue (crashes,
silent cars, and whatever else the rules route to the call centre), the security queue beside it
(CAN intrusions the edge agents saw, ``SECURITY_KINDS``) and the dealer's fleet with online /
moving / alert status, filterable, refreshed live.

The fleet shows no position (``docs/location-privacy.md``): a location is revealed per vehicle,
with a purpose, on the vehicle page. ``online`` is the device's last ``status`` message (the
broker publishes ``offline``, the device's last will, when its connection dies), ``unknown``
when none was heard; ``alert`` is the kind of the vehicle's most urgent open call-centre card.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm import delivery
from crm.schema import PlateAssignment, Vehicle
from crm.store import CrmStore
from dashboards.auth import WebSession
from dashboards.live import SPEED, StateHub
from dashboards.web import render, require

router = APIRouter(tags=["console"])
CALL_CENTRE_ROLES: Final = ("call_centre",)
MAX_FLEET: Final = 2000  # rows on one page; the filter narrows a bigger fleet
Show = Literal["all", "online", "offline", "moving", "alert"]
SECURITY_KINDS: Final = frozenset({"intrusion"})  # call-centre cards shown in the security queue


def queue_rows(s: Session, dealer_id: str) -> list[dict[str, Any]]:
    """The dealer's call-centre cards: open ones first (most urgent first), then the recently
    closed (a silent car that reports again closes its card)."""
    return [
        {
            "id": item.id,
            "kind": item.kind,
            "vin": item.vin,
            "title": item.title,
            "body": item.body,
            "priority": item.priority,
            "at": item.created_at.strftime("%Y-%m-%d %H:%M"),
            "state": delivery.card_state(item),
            "open": item.done_at is None,
        }
        for item in delivery.dealer_inbox(s, dealer_id, CALL_CENTRE_ROLES)
    ]


def fleet_rows(
    s: Session, dealer_id: str, hub: StateHub, queue: list[dict[str, Any]], show: Show, q: str
) -> list[dict[str, Any]]:
    """The dealer's vehicles with their live status, filtered by ``show`` and a text ``q``
    (part of the VIN, plate or model)."""
    vehicles = s.scalars(
        select(Vehicle).where(Vehicle.dealer_id == dealer_id).order_by(Vehicle.vin)
    ).all()
    plates = dict(
        s.execute(
            select(PlateAssignment.vin, PlateAssignment.plate).where(
                PlateAssignment.valid_to.is_(None),
                PlateAssignment.vin.in_([v.vin for v in vehicles]),
            )
        ).all()
    )
    alert_of: dict[str, str] = {}
    for c in queue:  # most urgent first: the first open card of a vehicle names its alert
        if c["open"] and c["vin"] and c["vin"] not in alert_of:
            alert_of[c["vin"]] = c["kind"]
    needle = q.strip().upper()
    rows = []
    for v in vehicles:
        st = hub.states.get(v.vin) or {}
        speed = (st.get("signals") or {}).get(SPEED)
        row = {
            "vin": v.vin,
            "plate": plates.get(v.vin, ""),
            "model": v.model,
            "online": hub.online(v.device_id),
            "moving": st.get("moving"),
            "speed_kmh": None if speed is None else round(float(speed[1])),
            "ignition": st.get("ignition"),
            "health": st.get("health"),
            "alert": alert_of.get(v.vin),
            "last_seen_us": st.get("last_seen_us"),
            "last_seen": _when(st.get("last_seen_us")),
        }
        if needle and not any(needle in str(row[k]).upper() for k in ("vin", "plate", "model")):
            continue
        if show == "online" and row["online"] != "online":
            continue
        if show == "offline" and row["online"] != "offline":
            continue
        if show == "moving" and not row["moving"]:
            continue
        if show == "alert" and row["alert"] is None:
            continue
        rows.append(row)
        if len(rows) >= MAX_FLEET:
            break
    return rows


def _when(us: Any) -> str:
    """A source timestamp as ``2026-12-04 20:31:05 UTC`` (the page's poll replaces the rows, so
    the text is made here, not by the page's script)."""
    if type(us) is not int:
        return "—"
    try:
        return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "—"


def desk(request: Request, ws: WebSession, show: Show, q: str) -> dict[str, Any]:
    store: CrmStore = request.app.state.crm
    hub: StateHub = request.app.state.hub
    with store.tx() as s:
        cards = queue_rows(s, ws.dealer_id or "")
        fleet = fleet_rows(s, ws.dealer_id or "", hub, cards, show, q)
    queue = [c for c in cards if c["kind"] not in SECURITY_KINDS]
    security = [c for c in cards if c["kind"] in SECURITY_KINDS]
    counts = {
        "vehicles": len(fleet),
        "online": sum(r["online"] == "online" for r in fleet),
        "moving": sum(bool(r["moving"]) for r in fleet),
        "alert": sum(r["alert"] is not None for r in fleet),
        "open_cards": sum(c["open"] for c in queue),
        "open_security": sum(c["open"] for c in security),
    }
    return {"queue": queue, "security": security, "fleet": fleet, "counts": counts,
            "show": show, "fleet_q": q}  # fmt: skip


ShowQuery = Annotated[Show, Query()]
TextQuery = Annotated[str, Query(max_length=64)]


@router.get("/console/desk")
def desk_json(
    request: Request,
    show: ShowQuery = "all",
    find: TextQuery = "",
    ws: WebSession = Depends(require("console.view")),
) -> dict[str, Any]:
    """The desk as JSON: ``queue`` (call-centre cards), ``security`` (CAN intrusion cards),
    ``fleet`` (status rows), ``counts``;
    ``show`` all/online/offline/moving/alert, ``find`` part of a VIN, plate or model."""
    return desk(request, ws, show, find)


@router.get("/console/fleet", response_class=HTMLResponse)
def fleet_partial(
    request: Request,
    show: ShowQuery = "all",
    find: TextQuery = "",
    ws: WebSession = Depends(require("console.view")),
) -> Response:
    """The desk's queue and fleet sections (the page polls this every few seconds)."""
    return render(request, "desk.html", ws, **desk(request, ws, show, find))
