"""The service-advisor inbox: the CRM's inbox cards for the advisor and expert queues of the
user's dealer (maintenance predictions, DTC routings, gate arrivals with the customer card, and
whatever else the rules route there); acknowledge / book / issue a coupon act through
``crm.delivery`` and are audited.

The dashboard's Kafka feed files two kinds of cards into that one inbox (``record_filer``):
maintenance predictions from ``carpulse.predictions``, one card per vehicle that merges its
service-due, oil-life and battery predictions (with their evidence series for the charts), filed
only when something is due within the horizon (``dashboards.maintenance``), and the DTCs of
``vehicle-state``. The rules engine files the rest (gate arrivals, ...) from the
CRM worker. A DTC is one card per (vehicle, code, ownership period) whoever files it
(``crm.delivery.file_dtc_card``): the advisor's for a medium or low severity, the expert queue's
for a high one; the advisor's page shows the dealer's expert cards too, marked as such.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape
from sqlalchemy import select

from core.checks import valid_dtcs
from core.dtc import dtc_severity
from core.errors import CrmError, DealerScopeError, DuplicateAction, InboxScopeError
from core.topics import KAFKA_VEHICLE_STATE
from crm import delivery
from crm.schema import CouponTemplate, Vehicle, utcnow
from crm.store import CrmStore, audit, owner_at
from crm.tables import InboxItem
from dashboards.auth import WebSession
from dashboards.data import VehicleCard, customer_card, vehicle_card
from dashboards.live import describe_dtc
from dashboards.maintenance import (
    EVIDENCE_POINTS,
    PARTS,
    Horizon,
    battery_summary,
    due_parts,
    episode_key,
    title,
    with_evidence,
)
from dashboards.web import csrf, render, require

router = APIRouter(tags=["inbox"])
ItemId = Annotated[int, Path(ge=1, le=2**62)]
FEED_KEY: Final = "feed|"  # effect keys of the cards the dashboard's feed files
# a vehicle's unchanged DTC list is filed again after this long: a car sold while a fault stays
# active gets the new owner's card within this time (filing is idempotent per ownership period)
DTC_REFILE_S: Final = 300.0


def _store(request: Request) -> CrmStore:
    return request.app.state.crm  # type: ignore[no-any-return]


PART_NAMES: Final = {"service_due": "Service", "oil_life": "Oil", "battery": "Battery"}


def record_filer(
    store: CrmStore,
    horizon: Horizon | None = None,
    *,
    refile_s: float = DTC_REFILE_S,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[str, dict[str, Any]], None]:
    """Files predictions as one maintenance card per vehicle (only when something is due within
    ``horizon``) and DTC lists as DTC cards, in the CRM inbox."""

    # states repeat every 200 ms: write when the codes change, or every ``refile_s`` (a new owner)
    filed: dict[str, tuple[list[str], float]] = {}
    h = horizon or Horizon()
    latest: dict[str, dict[str, dict[str, Any]]] = {}  # vin -> part -> prediction + evidence

    def file(topic: str, doc: dict[str, Any]) -> None:
        vin, kind = doc.get("vin"), str(doc.get("kind", "prediction"))[:32]
        if not isinstance(vin, str):
            return
        if topic == KAFKA_VEHICLE_STATE:
            codes = valid_dtcs(doc.get("active_dtcs"))  # a topic is input too: checked, capped
            last = filed.get(vin)
            now = clock()
            if codes and (last is None or last[0] != codes or now - last[1] >= refile_s):
                with store.tx() as s:
                    if s.get(Vehicle, vin) is None:
                        return
                    for code in codes:  # one card per fault, in the queue its severity names
                        delivery.file_dtc_card(s, vin=vin, code=code, severity=dtc_severity(code),
                                               text=describe_dtc(code), source="feed")  # fmt: skip
                # only once committed: a write that failed (the database busy) is tried again
                # with the next state of the vehicle, not 5 minutes later
                filed[vin] = (codes, now)
            return
        if kind not in PARTS:
            return
        with store.tx() as s:
            if s.get(Vehicle, vin) is None:
                return
            parts = latest.setdefault(vin, {})
            parts[kind] = with_evidence(doc, parts.get(kind))
            due = due_parts(parts, h)
            prefix = f"{FEED_KEY}maintenance|{vin}|"
            item = s.scalars(
                select(InboxItem).where(
                    InboxItem.effect_key.startswith(prefix, autoescape=True),
                    InboxItem.done_at.is_(None),
                )
            ).first()
            if item is None and not due:
                return  # nothing due soon: no card (and none open to update)
            # the open card of this vehicle, else one card per episode (service cycle, oil
            # interval): a card acted on stays closed for the rest of its episode
            key = (
                item.effect_key if item else f"{FEED_KEY}maintenance|{episode_key(vin, parts, due)}"
            )
            delivery.file_card(
                s, role="advisor", kind="maintenance", key=str(key)[:200], vin=vin,
                title=title(parts, due), customer_id=owner_at(s, vin, utcnow()),
                priority=4, data={"parts": parts, "due": due},
            )  # fmt: skip

    return file


def evidence_svg(points: list[list[float]], width: int = 320, height: int = 90) -> Markup:
    """An inline SVG line chart of ``[ts_us, value]`` points (server-side; no chart library)."""
    pts = [(float(t), float(v)) for t, v in points if v == v]  # drop NaN
    if len(pts) < 2:
        return Markup(
            '<svg class="chart" width="%d" height="%d" role="img" aria-label="no evidence yet"></svg>'
        ) % (width, height)
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    v0, v1 = min(p[1] for p in pts), max(p[1] for p in pts)
    span_t, span_v = (t1 - t0) or 1.0, (v1 - v0) or 1.0
    pad = 6
    coords = " ".join(
        f"{pad + (t - t0) / span_t * (width - 2 * pad):.1f},"
        f"{height - pad - (v - v0) / span_v * (height - 2 * pad):.1f}"
        for t, v in pts
    )
    label = escape(f"{len(pts)} points from {_num(v0)} to {_num(v1)}")
    return Markup(
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{label}"><polyline fill="none" stroke="#1f6feb" '
        f'stroke-width="2" points="{coords}"/><text x="{pad}" y="12" font-size="10">{_num(v1)}</text>'
        f'<text x="{pad}" y="{height - 2}" font-size="10">{_num(v0)}</text></svg>'
    )


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _due(payload: dict[str, Any]) -> dict[str, Any]:
    """Due date, distance left and confidence: as predicted, or estimated from the evidence."""
    out: dict[str, Any] = {k: payload.get(k) for k in ("due_date", "due_km", "confidence")}
    out["window"] = None
    ts_us, days = payload.get("ts_us"), payload.get("days")
    if out["due_date"] is None and isinstance(ts_us, int) and isinstance(days, int | float):
        at = dt.datetime.fromtimestamp(ts_us / 1e6, dt.UTC) + dt.timedelta(days=float(days))
        out["due_date"] = at.date().isoformat()
    km, odo = payload.get("km"), payload.get("odo")
    if out["due_km"] is None and isinstance(km, int | float) and isinstance(odo, int | float):
        out["due_km"] = round(float(km) - float(odo))
    lo, hi = payload.get("days_lo"), payload.get("days_hi")
    if isinstance(lo, int | float) and isinstance(hi, int | float):
        out["window"] = f"{lo:.0f}-{hi:.0f} days"  # the model's interval of the due date
    ev = payload.get("evidence") or []
    if payload.get("kind") == "oil_life" and len(ev) >= 2 and out["due_date"] is None:
        (ta, va), (tb, vb) = ev[0], ev[-1]
        rate = (va - vb) / max((tb - ta) / 86400e6, 1e-9)  # life fraction per day
        if rate > 0 and vb > 0:
            days_left = vb / rate
            out["due_date"] = (
                (dt.datetime.now(dt.UTC) + dt.timedelta(days=min(days_left, 3650)))
                .date()
                .isoformat()
            )
            out["confidence"] = out["confidence"] or round(min(1.0, len(ev) / EVIDENCE_POINTS), 2)
    return out


def maintenance_parts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a maintenance card shows: each part's due date, distance, window, oil life and
    chart, the parts due first (a card filed before the merge holds one prediction itself)."""
    parts = data.get("parts")
    if not isinstance(parts, dict):
        parts = {str(data.get("kind", "prediction")): data}
    raw_due = data.get("due")
    due: list[Any] = raw_due if isinstance(raw_due, list) else list(parts)
    rows = []
    for name, doc in sorted(parts.items(), key=lambda kv: kv[0] not in due):
        if not isinstance(doc, dict):
            continue
        life = doc.get("value") if name == "oil_life" else None
        rows.append({
            "name": PART_NAMES.get(name, name.replace("_", " ")), "kind": name,
            "is_due": name in due, "due": _due(doc),
            "life_pct": round(life * 100) if isinstance(life, int | float) else None,
            "battery": battery_summary(doc) if name == "battery" else None,
            "chart": evidence_svg(doc.get("evidence") or []),
        })  # fmt: skip
    return rows


def anomaly_chart(data: dict[str, Any]) -> Markup:
    """The evidence window of an anomaly card (``[ts_us, value]`` points, checked again: the card
    data came from a topic), its last point being the anomalous reading."""
    raw = data.get("evidence")
    pts = [
        [p[0], p[1]]
        for p in (raw if isinstance(raw, list) else [])[-512:]
        if isinstance(p, list) and len(p) == 2
        and all(type(x) in (int, float) and x == x and abs(x) < 1e300 for x in p)
    ]  # fmt: skip
    return evidence_svg(pts)


def _card_for(s: Any, item: InboxItem, dealer_id: str) -> VehicleCard | None:
    try:
        if item.vin:
            return vehicle_card(s, item.vin, dealer_id)
        if item.customer_id:
            return customer_card(s, item.customer_id, dealer_id)
    except (DealerScopeError, CrmError):
        pass
    return None


@router.get("/inbox", response_class=HTMLResponse)
def inbox_page(request: Request, ws: WebSession = Depends(require("inbox.view"))) -> Response:
    rows = []
    with _store(request).tx() as s:
        allowed = set(request.app.state.cfg.coupon_templates)
        templates = [
            t.code
            for t in s.query(CouponTemplate).order_by(CouponTemplate.code)
            if t.code in allowed
        ]
        cards: dict[tuple[str | None, str | None], VehicleCard | None] = {}
        for item in delivery.dealer_inbox(s, ws.dealer_id or ""):
            who = (item.vin, None if item.vin else item.customer_id)
            if who not in cards:  # one vehicle often has several cards
                cards[who] = _card_for(s, item, ws.dealer_id or "")
            card = cards[who]
            if card is None:
                continue
            data = item.data or {}
            rows.append(
                {
                    "item": item,
                    "state": delivery.card_state(item),
                    "data": data,
                    "card": card,
                    "parts": maintenance_parts(data) if item.kind == "maintenance" else [],
                    "chart": anomaly_chart(data) if item.kind == "anomaly" else None,
                }
            )
    return render(request, "inbox.html", ws, rows=rows, coupon_templates=templates)


def _act(request: Request, fn: Callable[..., Any], *args: Any) -> Response:
    try:
        with _store(request).tx() as s:
            fn(s, *args)
    except InboxScopeError as err:
        raise HTTPException(403, str(err)) from err
    except DuplicateAction as err:
        raise HTTPException(409, str(err)) from err
    except CrmError as err:
        raise HTTPException(409, str(err)) from err
    return RedirectResponse("/inbox", status_code=303)


@router.post("/inbox/{item_id}/acknowledge", dependencies=[Depends(csrf)])
def ack_item(
    request: Request, item_id: ItemId, ws: WebSession = Depends(require("inbox.act"))
) -> Response:
    return _act(request, delivery.acknowledge, item_id, ws.username, ws.dealer_id)


@router.post("/inbox/{item_id}/book", dependencies=[Depends(csrf)])
def book_item(
    request: Request,
    item_id: ItemId,
    at: Annotated[dt.datetime, Form()],
    ws: WebSession = Depends(require("inbox.act")),
) -> Response:
    when = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return _act(request, delivery.book, item_id, when, ws.username, ws.dealer_id)


@router.post("/inbox/{item_id}/coupon", dependencies=[Depends(csrf)])
def coupon_item(
    request: Request,
    item_id: ItemId,
    template: Annotated[str, Form(max_length=64)],
    ws: WebSession = Depends(require("inbox.act")),
) -> Response:
    """Issue a coupon of an allowed template (``DashboardConfig.coupon_templates``) to the card's
    customer; any other template is refused and the attempt audited."""
    if template not in request.app.state.cfg.coupon_templates:
        with _store(request).tx() as s:
            audit(s, ws.username or "", "inbox.coupon.denied", str(item_id), "service",
                  dealer_id=ws.dealer_id, template=template)  # fmt: skip
        raise HTTPException(403, f"coupon template {template!r} may not be issued from the inbox")
    return _act(request, delivery.coupon, item_id, template, ws.username, ws.dealer_id)
