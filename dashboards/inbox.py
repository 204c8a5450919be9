"""The service-advisor inbox: the CRM's inbox cards for the advisor and expert queues of the
user's dealer (maintenance predictions, DTC routings, gate arrivals with the customer card, and
whatever else the rules route there); acknowledge / book / issue a coupon act through
``crm.delivery`` and are audited.

The dashboard's Kafka feed files two kinds of cards into that one inbox (``record_filer``):
maintenance predictions from ``carpulse.predictions`` (with the evidence series for the chart)
and the DTCs of ``vehicle-state``. The rules engine files the rest (gate arrivals, ...) from the
CRM worker. A DTC is one card per (vehicle, code, ownership period) whoever files it
(``crm.delivery.file_dtc_card``): the advisor's for a medium or low severity, the expert queue's
for a high one; the advisor's page shows the dealer's expert cards too, marked as such.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from core.checks import valid_dtcs
from core.topics import KAFKA_VEHICLE_STATE
from crm import delivery
from crm.models import CouponTemplate, Vehicle, utcnow
from crm.normalize import dtc_severity
from crm.store import CrmError, CrmStore, audit, owner_at
from crm.tables import InboxItem
from dashboards.app import csrf, render, require
from dashboards.auth import WebSession
from dashboards.data import DealerScopeError, VehicleCard, customer_card, vehicle_card
from dashboards.live import describe_dtc

router = APIRouter(tags=["inbox"])
EVIDENCE_POINTS: Final = 60
ItemId = Annotated[int, Path(ge=1, le=2**62)]
FEED_KEY: Final = "feed|"  # effect keys of the cards the dashboard's feed files


def _store(request: Request) -> CrmStore:
    return request.app.state.crm  # type: ignore[no-any-return]


def _evidence_value(doc: dict[str, Any]) -> float | None:
    """The series the chart draws: the predicted value (oil life) or the distance left."""
    if isinstance(doc.get("value"), int | float):
        return float(doc["value"])
    if isinstance(doc.get("km"), int | float) and isinstance(doc.get("odo"), int | float):
        return round(float(doc["km"]) - float(doc["odo"]), 1)
    return None


TITLES: Final = {"service_due": "Service due", "oil_life": "Oil change"}


def _title(kind: str, due: dict[str, Any]) -> str:
    name = TITLES.get(kind, kind.replace("_", " ").capitalize())
    return f"{name} by {due['due_date']}" if due.get("due_date") else name


def record_filer(store: CrmStore) -> Callable[[str, dict[str, Any]], None]:
    """Files predictions as maintenance cards and DTC lists as DTC cards, in the CRM inbox."""

    filed: dict[str, list[str]] = {}  # states repeat every 200 ms: write only when codes change

    def file(topic: str, doc: dict[str, Any]) -> None:
        vin, kind = doc.get("vin"), str(doc.get("kind", "prediction"))[:32]
        if not isinstance(vin, str):
            return
        if topic == KAFKA_VEHICLE_STATE:
            codes = valid_dtcs(doc.get("active_dtcs"))  # a topic is input too: checked, capped
            if codes and filed.get(vin) != codes:
                filed[vin] = codes
                with store.tx() as s:
                    if s.get(Vehicle, vin) is None:
                        return
                    for code in codes:  # one card per fault, in the queue its severity names
                        delivery.file_dtc_card(s, vin=vin, code=code, severity=dtc_severity(code),
                                               text=describe_dtc(code), source="feed")  # fmt: skip
            return
        with store.tx() as s:
            if s.get(Vehicle, vin) is None:
                return
            # one card per prediction kind and service cycle; a new cycle is a new card
            key = f"{FEED_KEY}maintenance|{vin}|{kind}|{doc.get('cycle', '')}"[:200]
            item = s.query(InboxItem).filter_by(effect_key=key).one_or_none()
            evidence = list((item.data if item else {}).get("evidence", []))
            value = _evidence_value(doc)
            if value is not None and isinstance(doc.get("ts_us"), int):
                evidence = [*evidence, [doc["ts_us"], value]][-EVIDENCE_POINTS:]
            payload = {k: v for k, v in doc.items() if k != "evidence"}
            payload["evidence"] = evidence
            due = _due(payload)
            delivery.file_card(
                s, role="advisor", kind="maintenance", key=key, vin=vin,
                title=_title(kind, due), customer_id=owner_at(s, vin, utcnow()),
                priority=4, data=payload,
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
                    "due": _due(data) if item.kind == "maintenance" else {},
                    "chart": evidence_svg(data.get("evidence") or [])
                    if item.kind == "maintenance"
                    else "",
                }
            )
    return render(request, "inbox.html", ws, rows=rows, coupon_templates=templates)


def _act(request: Request, fn: Callable[..., Any], *args: Any) -> Response:
    try:
        with _store(request).tx() as s:
            fn(s, *args)
    except delivery.InboxScopeError as err:
        raise HTTPException(403, str(err)) from err
    except delivery.DuplicateAction as err:
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
