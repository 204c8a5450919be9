"""Redeeming a coupon at the service counter (the advisor's page beside the inbox): the member
shows the QR code (a handheld scanner types it into the field) or reads out the short code.

``crm.member_links.redeem_code`` does it in one conditional UPDATE, so of N parallel scans of
one code exactly one wins; every attempt, refused or not, is audited.

The same page closes a service visit with its amount (``crm.loyalty.close_service``): the
vehicle's service record of the day is written (or corrected), its owner earns the points of
``crm/loyalty.yaml`` and the tier is reviewed. Only the advisor's own dealer's vehicles; an
amount, odometer reading or date the CRM refuses comes back with the CRM's reason, audited as
``service.close.refused``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core.errors import CounterError, CrmError
from crm import loyalty
from crm import member_links as ml
from crm.schema import PlateAssignment, Vehicle
from crm.store import audit
from dashboards import staff_text
from dashboards.auth import WebSession
from dashboards.web import csrf, render, require, staff_lang

router = APIRouter(tags=["inbox"])
STATUS = {"bad": 400, "unknown": 404, "ambiguous": 409, "other_dealer": 404, "redeemed": 409,
          "expired": 409, "voided": 409}  # fmt: skip


@router.get("/inbox/counter", response_class=HTMLResponse)
def counter_page(request: Request, ws: WebSession = Depends(require("inbox.act"))) -> Response:
    return _page(request, ws)


def _page(request: Request, ws: WebSession, status: int = 200, **ctx: Any) -> HTMLResponse:
    ctx = {"result": None, "error": "", "code": "", "closed": None, "close_error": "",
           "typed": {}, "loyalty_cny": loyalty.config().points.service_cny_per_point, **ctx}  # fmt: skip
    page = render(request, "counter.html", ws, **ctx)
    page.status_code = status
    return page


@router.post("/inbox/counter", response_class=HTMLResponse, dependencies=[Depends(csrf)])
def counter_redeem(
    request: Request,
    code: Annotated[str, Form(max_length=300)],
    ws: WebSession = Depends(require("inbox.act")),
) -> Response:
    try:
        result = ml.redeem_code(request.app.state.crm, code, ws.username or "", ws.dealer_id or "")
    except CounterError as err:
        return _page(request, ws, STATUS.get(err.reason, 409), error=_why(request, err), code=code)
    except OperationalError:
        return _page(request, ws, 503, error=_t(request, "busy_scan"), code=code)
    return _page(request, ws, result=result)


def _t(request: Request, key: str) -> str:
    return staff_text.t(staff_lang(request), key)


def _why(request: Request, err: CounterError) -> str:
    """The CRM's reason in English (it names the code and dates); in Chinese by its kind."""
    key = f"counter_{err.reason}"
    lang = staff_lang(request)
    return staff_text.t(lang, key) if lang != "en" and key in staff_text.TEXT else str(err)


_VIN = re.compile(r"[A-Z0-9]{17}")  # the demos' VINs hold I and O, which real ones never do


def _vehicle(s: Any, typed: str, dealer_id: str) -> str:
    """The VIN of a typed VIN or current plate, if it is one of this dealer's vehicles."""
    text = typed.strip()
    vin = text.upper() if _VIN.fullmatch(text.upper()) else None
    if vin is None and 0 < len(text) <= 16:
        vin = s.scalar(
            select(PlateAssignment.vin).where(
                PlateAssignment.plate == text.upper(), PlateAssignment.valid_to.is_(None)
            )
        )
    car = s.get(Vehicle, vin) if vin else None
    if car is None or car.dealer_id != dealer_id:  # another dealer's car: as if unknown
        raise CrmError(f"no vehicle of this dealer has the VIN or plate {text[:20]!r}")
    return car.vin


def _odometer(raw: str) -> float | None:
    text = raw.strip().replace(",", "")
    if not text:
        return None
    try:
        km = float(text)
    except ValueError:
        raise CrmError(f"odometer {raw[:20]!r} is not a number of km") from None
    if not math.isfinite(km):
        raise CrmError(f"odometer {raw[:20]!r} is not a number of km")
    return km


@router.post("/inbox/counter/service", response_class=HTMLResponse, dependencies=[Depends(csrf)])
def counter_close_service(
    request: Request,
    vehicle: Annotated[str, Form(max_length=40)],
    amount: Annotated[str, Form(max_length=40)],
    odometer_km: Annotated[str, Form(max_length=20)] = "",
    work: Annotated[str, Form(max_length=2000)] = "",
    ws: WebSession = Depends(require("inbox.act")),
) -> Response:
    """Close a visit: the owner earns its points and the tier is reviewed (``close_service``)."""
    store, dealer, advisor = request.app.state.crm, ws.dealer_id or "", ws.username or ""
    typed = {"vehicle": vehicle, "amount": amount, "odometer_km": odometer_km, "work": work}
    try:
        with store.tx() as s:
            done = loyalty.close_service(s, vin=_vehicle(s, vehicle, dealer), amount=amount,
                                         advisor=advisor, work=work, odometer_km=_odometer(odometer_km))  # fmt: skip
            audit(s, advisor, "service.close.counter", done.vin or done.customer_id, "service",
                  dealer_id=dealer, customer=done.customer_id, amount=str(done.amount))  # fmt: skip
    except CrmError as err:
        with store.tx() as s:
            audit(s, advisor, "service.close.refused", vehicle.strip()[:40], "service",
                  dealer_id=dealer, reason=str(err)[:200])  # fmt: skip
        return _page(request, ws, 400, close_error=str(err), typed=typed)
    except OperationalError:
        return _page(request, ws, 503, close_error=_t(request, "busy_retry"), typed=typed)
    lang_tier = {lang: loyalty.tier_name(done.tier, lang) for lang in ("en", "zh-CN")}
    moved = done.tier_change and {
        lang: loyalty.tier_name(done.tier_change[0], lang) for lang in ("en", "zh-CN")
    }
    return _page(request, ws, closed=done, tier=lang_tier, moved=moved)
