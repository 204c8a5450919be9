"""The service-advisor inbox: maintenance predictions, DTC routing, gate arrivals; audited actions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape
from sqlalchemy.exc import IntegrityError

from core.topics import KAFKA_VEHICLE_STATE
from crm.models import CouponTemplate
from crm.store import CrmError, CrmStore
from dashboards.app import csrf, render, require
from dashboards.auth import WebSession
from dashboards.data import (
    DealerScopeError,
    InboxItem,
    acknowledge,
    book_appointment,
    inbox,
    issue_item_coupon,
    upsert_inbox,
    vehicle_card,
)
from dashboards.live import describe_dtc

router = APIRouter(tags=["inbox"])
EVIDENCE_POINTS: Final = 60
ItemId = Annotated[int, Path(ge=1, le=2**62)]


def _store(request: Request) -> CrmStore:
    return request.app.state.crm  # type: ignore[no-any-return]


def record_filer(store: CrmStore) -> Callable[[str, dict[str, Any]], None]:
    """Files predictions as maintenance items and DTC lists as DTC items routed to the dealer."""

    filed: dict[str, list[str]] = {}  # states repeat every 200 ms: write only when codes change

    def file(topic: str, doc: dict[str, Any]) -> None:
        vin, kind = doc.get("vin"), doc.get("kind", "prediction")
        if not isinstance(vin, str):
            return
        if topic == KAFKA_VEHICLE_STATE:
            codes = sorted(str(c) for c in doc.get("active_dtcs") or [])
            if codes and filed.get(vin) != codes:
                filed[vin] = codes
                with store.tx() as s:
                    codes_doc = {"codes": [{"code": c, "text": describe_dtc(c)} for c in codes]}
                    upsert_inbox(s, "dtc", vin, f"dtc|{vin}|{','.join(codes)}", codes_doc)
            return
        with store.tx() as s:
            key = f"maintenance|{vin}|{kind}"
            item = s.query(InboxItem).filter_by(dedupe_key=key).one_or_none()
            payload: dict[str, Any] = dict(item.payload) if item else {"kind": kind, "evidence": []}
            evidence = list(payload.get("evidence", []))
            if isinstance(doc.get("value"), int | float) and isinstance(doc.get("ts_us"), int):
                evidence = [*evidence, [doc["ts_us"], float(doc["value"])]][-EVIDENCE_POINTS:]
            payload.update({k: v for k, v in doc.items() if k not in ("evidence",)})
            payload["evidence"] = evidence
            upsert_inbox(s, "maintenance", vin, key, payload)

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
    label = escape(f"{len(pts)} points from {v0:.3g} to {v1:.3g}")
    return Markup(
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{label}"><polyline fill="none" stroke="#1f6feb" '
        f'stroke-width="2" points="{coords}"/><text x="{pad}" y="12" font-size="10">{v1:.3g}</text>'
        f'<text x="{pad}" y="{height - 2}" font-size="10">{v0:.3g}</text></svg>'
    )


def _due(payload: dict[str, Any]) -> dict[str, Any]:
    """Due date / distance / confidence as predicted, or estimated from an oil-life fraction."""
    out = {k: payload.get(k) for k in ("due_date", "due_km", "confidence")}
    ev = payload.get("evidence") or []
    if payload.get("kind") == "oil_life" and len(ev) >= 2 and out["due_date"] is None:
        (ta, va), (tb, vb) = ev[0], ev[-1]
        rate = (va - vb) / max((tb - ta) / 86400e6, 1e-9)  # life fraction per day
        if rate > 0 and vb > 0:
            days = vb / rate
            out["due_date"] = (
                (dt.datetime.now(dt.UTC) + dt.timedelta(days=min(days, 3650))).date().isoformat()
            )
            out["confidence"] = out["confidence"] or round(min(1.0, len(ev) / EVIDENCE_POINTS), 2)
    return out


@router.get("/inbox", response_class=HTMLResponse)
def inbox_page(request: Request, ws: WebSession = Depends(require("inbox.view"))) -> Response:
    rows = []
    with _store(request).tx() as s:
        templates = [t.code for t in s.query(CouponTemplate).order_by(CouponTemplate.code)]
        for item in inbox(s, ws.dealer_id or ""):
            try:
                card = vehicle_card(s, item.vin, ws.dealer_id or "")
            except (DealerScopeError, CrmError):
                continue
            rows.append(
                {
                    "item": item,
                    "card": card,
                    "due": _due(item.payload),
                    "chart": evidence_svg(item.payload.get("evidence") or []),
                }
            )
    return render(request, "inbox.html", ws, rows=rows, coupon_templates=templates)


def _act(request: Request, fn: Callable[..., Any], *args: Any) -> Response:
    try:
        with _store(request).tx() as s:
            fn(s, *args)
    except DealerScopeError as err:
        raise HTTPException(403, str(err)) from err
    except IntegrityError as err:
        raise HTTPException(409, "already done for this item") from err
    except CrmError as err:
        raise HTTPException(409, str(err)) from err
    return RedirectResponse("/inbox", status_code=303)


@router.post("/inbox/{item_id}/acknowledge", dependencies=[Depends(csrf)])
def ack_item(
    request: Request, item_id: ItemId, ws: WebSession = Depends(require("inbox.act"))
) -> Response:
    return _act(request, acknowledge, item_id, ws.username, ws.dealer_id)


@router.post("/inbox/{item_id}/book", dependencies=[Depends(csrf)])
def book_item(
    request: Request,
    item_id: ItemId,
    at: Annotated[dt.datetime, Form()],
    ws: WebSession = Depends(require("inbox.act")),
) -> Response:
    when = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return _act(request, book_appointment, item_id, when, ws.username, ws.dealer_id)


@router.post("/inbox/{item_id}/coupon", dependencies=[Depends(csrf)])
def coupon_item(
    request: Request,
    item_id: ItemId,
    template: Annotated[str, Form(max_length=64)],
    ws: WebSession = Depends(require("inbox.act")),
) -> Response:
    return _act(request, issue_item_coupon, item_id, template, ws.username, ws.dealer_id)
