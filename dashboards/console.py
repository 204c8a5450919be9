"""The call-centre console: search, live vehicle state over SSE, location reveal, signed commands.

A location is shown only with a grant (a reveal through ``crm.privacy.read_location``) that still
holds when the view is made: every page, state request and live update asks the CRM again
(``crm.privacy.grant_in_force``), a withdrawn consent or a sale ends the grant (audited), and a
fix taken before the current ownership began is never shown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from core.errors import (
    CrmError,
    DealerScopeError,
    InboxScopeError,
    PrivacyError,
    PublishError,
    WireError,
)
from crm import delivery
from crm.privacy import Fix, grant_in_force, read_location
from crm.schema import Vehicle
from crm.store import CrmStore, audit
from dashboards.auth import LocationGrant, SessionStore, WebSession
from dashboards.data import search, vehicle_card
from dashboards.desk import desk
from dashboards.live import StateHub, public_view
from dashboards.timeline import timeline_view
from dashboards.web import REASON_CODES, csrf, render, require

router = APIRouter(tags=["console"])
VIN_RE: Final = r"^[A-HJ-NPR-Z0-9]{11,17}$"
TICKET_RE: Final = re.compile(r"^[A-Za-z0-9-]{3,32}$")
VinPath = Annotated[str, Path(pattern=VIN_RE)]
CALL_CENTRE_ROLES: Final = ("call_centre",)
MAX_COMMANDS: Final = 10_000  # command owners remembered (the channel keeps as many acks)


def _store(request: Request) -> CrmStore:
    return request.app.state.crm  # type: ignore[no-any-return]


def _card(request: Request, vin: str, ws: WebSession) -> Any:
    """The card, or 404: for an unknown vehicle and for another dealer's alike, so a VIN's
    existence elsewhere does not leak (the attempt on another dealer's vehicle is audited)."""
    with _store(request).tx() as s:
        try:
            return vehicle_card(s, vin, ws.dealer_id or "")
        except DealerScopeError:
            audit(s, ws.username or "", "vehicle.denied", vin, "console",
                  dealer_id=ws.dealer_id)  # fmt: skip
        except CrmError:
            pass
    raise HTTPException(404, f"no vehicle {vin}")


def _location_since(request: Request, vin: str, ws: WebSession) -> int | None:
    """With a grant for ``vin`` that still holds: the current ownership's start (us). A grant
    that no longer holds (consent withdrawn, vehicle sold) ends here, on the record."""
    grant = ws.location_grant(vin)
    if grant is None:
        return None
    with _store(request).tx() as s:
        since = grant_in_force(s, vin, grant.reason)
        if since is None:
            audit(s, ws.username or "", "location.grant.ended", vin, grant.reason,
                  ticket=grant.ticket, why="no consent of the current owner")  # fmt: skip
    if since is None:
        sessions: SessionStore = request.app.state.sessions
        sessions.set_grant(ws, None)
        return None
    return int(since.timestamp() * 1_000_000)


def located_view(state: dict[str, Any], since_us: int | None) -> dict[str, Any]:
    """``public_view`` with the location only if granted and taken since ``since_us``."""
    loc = state.get("location")
    ts = loc.get("ts_us") if isinstance(loc, dict) else None
    shown = since_us is not None and type(ts) is int and ts >= since_us
    return public_view(state, shown)


def _state_view(request: Request, vin: str, ws: WebSession) -> dict[str, Any]:
    hub: StateHub = request.app.state.hub
    state = hub.states.get(vin) or {"vin": vin}
    return located_view(state, _location_since(request, vin, ws))


@router.get("/console", response_class=HTMLResponse)
def console_page(
    request: Request,
    q: Annotated[str, Query(max_length=64)] = "",
    ws: WebSession = Depends(require("console.view")),
) -> Response:
    results = []
    partial = request.headers.get("hx-request") == "true"
    with _store(request).tx() as s:
        if q:
            results = search(s, q, ws.dealer_id or "")
            audit(s, ws.username or "", "console.search", "-", "console",
                  dealer_id=ws.dealer_id, hits=len(results))  # fmt: skip
    # the agent's desk: the call-centre queue and the dealer's fleet (dashboards.desk)
    board = {} if partial else desk(request, ws, "all", "")
    hub: StateHub = request.app.state.hub
    return render(
        request,
        "search_results.html" if partial else "console.html",
        ws,
        q=q,
        results=results,
        **board,
        alerts=_alerts_for(request, ws, list(hub.alerts)),
    )


@router.post("/console/queue/{item_id}/acknowledge", dependencies=[Depends(csrf)])
def ack_queue_item(
    request: Request,
    item_id: Annotated[int, Path(ge=1, le=2**62)],
    ws: WebSession = Depends(require("queue.act")),
) -> Response:
    """Mark a call-centre card handled (audited); only the dealer's call-centre cards."""
    try:
        with _store(request).tx() as s:
            delivery.acknowledge(s, item_id, ws.username or "", ws.dealer_id or "",
                                 CALL_CENTRE_ROLES)  # fmt: skip
    except InboxScopeError as err:
        raise HTTPException(403, str(err)) from err
    return RedirectResponse("/console", status_code=303)


@router.get("/console/vehicles/{vin}", response_class=HTMLResponse)
def vehicle_page(
    request: Request, vin: VinPath, ws: WebSession = Depends(require("console.view"))
) -> Response:
    card = _card(request, vin, ws)
    hub: StateHub = request.app.state.hub
    return render(
        request,
        "vehicle.html",
        ws,
        card=card,
        view=_state_view(request, vin, ws),
        grant=ws.location_grant(vin),
        alerts=_alerts_for(request, ws, list(hub.alerts)),
        commands_on=request.app.state.commands is not None,
        timeline=timeline_view(request, vin, ws),  # dashboards.timeline (audited)
    )


@router.get("/console/vehicles/{vin}/state")
def vehicle_state(
    request: Request, vin: VinPath, ws: WebSession = Depends(require("console.view"))
) -> dict[str, Any]:
    _card(request, vin, ws)
    return _state_view(request, vin, ws)


def _alerts_for(
    request: Request, ws: WebSession, alerts: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Crash and silent-car alerts of this dealer's vehicles, without locations (reveal is per
    vehicle); a ``silent_end`` tells the page to take a silent car's banner down."""
    vins = {a.get("vin") for a in alerts if isinstance(a.get("vin"), str)}
    if not vins:
        return []
    with _store(request).tx() as s:
        mine = {v for v in vins if (veh := s.get(Vehicle, v)) and veh.dealer_id == ws.dealer_id}
    return [
        {k: a.get(k) for k in ("kind", "vin", "ts_us", "severity", "received_us", "alarm_id")}
        for a in alerts
        if a.get("vin") in mine
    ]


@router.get("/console/events")
async def events(
    request: Request,
    vin: Annotated[str | None, Query(pattern=VIN_RE)] = None,
    ws: WebSession = Depends(require("console.view")),
) -> StreamingResponse:
    """Server-sent events: ``state`` for ``vin`` (if given) and ``alert`` for the dealer's cars."""
    if vin is not None:
        _card(request, vin, ws)
    hub: StateHub = request.app.state.hub
    sessions: SessionStore = request.app.state.sessions
    recheck_s: float = request.app.state.cfg.session_recheck_s
    q = hub.subscribe()

    async def still_valid() -> bool:
        """The session as stored now: logged out, expired, the user deactivated, demoted or
        moved to another dealer ends the stream."""
        fresh = await asyncio.to_thread(sessions.get, ws.id)
        return (
            fresh is not None
            and fresh.can("console.view")
            and fresh.username == ws.username
            and fresh.dealer_id == ws.dealer_id
        )

    async def gen() -> AsyncIterator[bytes]:
        try:
            if vin is not None:
                yield _sse("state", await asyncio.to_thread(_state_view, request, vin, ws))
            next_check = time.monotonic() + recheck_s
            while True:
                if time.monotonic() >= next_check:
                    if not await still_valid():
                        yield _sse("end", {"reason": "session ended"})
                        return
                    next_check = time.monotonic() + recheck_s
                timeout = max(0.05, min(15.0, next_check - time.monotonic()))
                try:
                    kind, doc = await asyncio.wait_for(q.get(), timeout=timeout)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if await request.is_disconnected():
                    return
                if kind == "state" and doc.get("vin") == vin and vin is not None:
                    # the grant as stored now: a reveal (or its end) in another request or
                    # process; then consent and ownership as the CRM has them now
                    await asyncio.to_thread(sessions.refresh_grant, ws)
                    since = await asyncio.to_thread(_location_since, request, vin, ws)
                    yield _sse("state", located_view(doc, since))
                elif kind == "alert":
                    for a in _alerts_for(request, ws, [doc]):
                        yield _sse("alert", a)
        finally:
            hub.unsubscribe(q)

    return StreamingResponse(
        gen(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
    )


def _sse(event: str, doc: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(doc, default=str)}\n\n".encode()


def _live_fix(request: Request, vin: str) -> Fix | None:
    """The vehicle's current position from the ``vehicle-state`` feed, as a CRM fix; for a
    vehicle whose state carries none (no consent), the fix of its latest crash alert, which
    ``read_location`` shows only for a crash response."""
    hub: StateHub = request.app.state.hub
    loc = (hub.states.get(vin) or {}).get("location")
    source = "vehicle-state"
    if not isinstance(loc, dict):
        alert = next((a for a in hub.alerts if a.get("vin") == vin), None)
        loc, source = (alert or {}).get("location"), "crash-alert"
    if not isinstance(loc, dict):
        return None
    try:
        lat, lon, ts_us = float(loc["lat"]), float(loc["lon"]), int(loc["ts_us"])
    except (KeyError, TypeError, ValueError):
        return None
    try:
        at = dt.datetime.fromtimestamp(ts_us / 1e6, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return Fix(vin, at, lat, lon, source)


@router.post("/console/vehicles/{vin}/reveal", dependencies=[Depends(csrf)])
def reveal_location(
    request: Request,
    vin: VinPath,
    reason: Annotated[str, Form(max_length=32)],
    ticket: Annotated[str, Form(max_length=32)],
    ws: WebSession = Depends(require("location.reveal")),
) -> Response:
    """Show one vehicle's location for a limited time, for a reason and a ticket.

    The one door is ``crm.privacy.read_location`` (consent, purpose, ticket, current ownership
    only, refusals audited); it is given the live fix from ``vehicle-state``. The grant then
    lets this session's console follow that vehicle's live position for ``reveal_seconds``.
    """
    if reason not in REASON_CODES:
        raise HTTPException(422, f"reason must be one of {sorted(REASON_CODES)}")
    if not TICKET_RE.match(ticket):
        raise HTTPException(422, "ticket id: 3-32 letters, digits or dashes")
    _card(request, vin, ws)
    seconds = request.app.state.cfg.reveal_seconds
    try:
        with _store(request).tx() as s:
            fix = read_location(s, ws.username or "", vin, reason, ticket,
                                live=_live_fix(request, vin))  # fmt: skip
    except PrivacyError as err:
        raise HTTPException(403, str(err)) from err
    # One vehicle at a time: a new reveal replaces the previous grant.
    sessions: SessionStore = request.app.state.sessions
    sessions.set_grant(ws, LocationGrant(vin, reason, ticket, time.time() + seconds))
    location = None
    if fix is not None:
        location = {"lat": fix.lat, "lon": fix.lon, "at": fix.at.isoformat(), "source": fix.source}
    return JSONResponse({"vin": vin, "seconds": seconds, "location": location})


def _send(
    request: Request, ws: WebSession, vin: str, name: str, args: dict[str, Any]
) -> dict[str, Any]:
    card = _card(request, vin, ws)
    channel = request.app.state.commands
    if channel is None:
        raise HTTPException(503, "commands are not configured (no MQTT or signing key)")
    if not card.device_id:
        raise HTTPException(409, f"vehicle {vin} has no connected device")
    try:
        cid = channel.send(card.device_id, name, args)
    except WireError as err:
        raise HTTPException(422, err.detail) from err
    except PublishError as err:
        raise HTTPException(502, str(err)) from err
    _remember_owner(request, cid, ws)
    with _store(request).tx() as s:
        audit(s, ws.username or "", f"command.{name}", vin, "console", dealer_id=ws.dealer_id,
              command=cid, device=card.device_id, args=_audited_args(request, args))  # fmt: skip
    return {"id": cid, "name": name, "vin": vin, "status": "sent"}


def _audited_args(request: Request, args: dict[str, Any]) -> dict[str, Any]:
    """A command's arguments as the audit log keeps them: a destination (address or coordinates)
    only as an HMAC under a server-side key, so the log proves which destination was sent when
    it is presented, but reading the log reveals no place."""
    if not args:
        return {}
    sessions: SessionStore = request.app.state.sessions
    canon = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    mac = hmac.new(sessions.secret("audit"), canon.encode(), hashlib.sha256).hexdigest()
    kind = "coordinates" if "lat" in args else "address" if "address" in args else "args"
    return {"kind": kind, "hmac_sha256": mac}


def _remember_owner(request: Request, cid: str, ws: WebSession) -> None:
    owners: dict[str, tuple[str, str]] = request.app.state.command_owners
    while len(owners) >= MAX_COMMANDS:
        owners.pop(next(iter(owners)))
    owners[cid] = (ws.username or "", ws.dealer_id or "")


@router.post("/console/vehicles/{vin}/destination", dependencies=[Depends(csrf)])
def send_destination(
    request: Request,
    vin: VinPath,
    address: Annotated[str, Form(max_length=500)] = "",
    lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Form(ge=-180, le=180)] = None,
    ws: WebSession = Depends(require("command.send")),
) -> dict[str, Any]:
    """Send a navigation destination (an address or coordinates) as a signed command."""
    args: dict[str, Any] = {}
    if lat is not None and lon is not None:
        args = {"lat": lat, "lon": lon}
    elif address.strip():
        args = {"address": address.strip()}
    else:
        raise HTTPException(422, "give an address or both lat and lon")
    return _send(request, ws, vin, "navigate", args)


@router.post("/console/vehicles/{vin}/doors", dependencies=[Depends(csrf)])
def doors(
    request: Request,
    vin: VinPath,
    action: Annotated[str, Form(pattern="^(lock|unlock)$")],
    confirm: Annotated[str, Form(max_length=17)] = "",
    ws: WebSession = Depends(require("command.send")),
) -> dict[str, Any]:
    """Remote lock/unlock; ``confirm`` must repeat the last 6 characters of the VIN."""
    if confirm.strip().upper() != vin[-6:]:
        raise HTTPException(422, "confirm by typing the last 6 characters of the VIN")
    return _send(request, ws, vin, action, {})


@router.get("/console/commands/{command_id}")
def command_status(
    request: Request,
    command_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
    ws: WebSession = Depends(require("command.send")),
) -> dict[str, Any]:
    """The car's answer to a command, for the user who sent it only (404 for anyone else,
    as for an unknown id)."""
    owner = request.app.state.command_owners.get(command_id)
    if owner is None or owner != (ws.username or "", ws.dealer_id or ""):
        raise HTTPException(404, f"no command {command_id}")
    channel = request.app.state.commands
    ack = None if channel is None else channel.ack(command_id)
    if ack is None:
        return {"id": command_id, "status": "pending"}
    return {"id": command_id, "status": ack.status, "reason": ack.reason, "detail": ack.detail}
