"""Redeeming a coupon at the service counter (the advisor's page beside the inbox): the member
shows the QR code (a handheld scanner types it into the field) or reads out the short code.

``crm.member_links.redeem_code`` does it in one conditional UPDATE, so of N parallel scans of
one code exactly one wins; every attempt, refused or not, is audited.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.exc import OperationalError

from crm import member_links as ml
from dashboards.app import csrf, render, require
from dashboards.auth import WebSession

router = APIRouter(tags=["inbox"])
STATUS = {"bad": 400, "unknown": 404, "ambiguous": 409, "other_dealer": 404, "redeemed": 409,
          "expired": 409, "voided": 409}  # fmt: skip


@router.get("/inbox/counter", response_class=HTMLResponse)
def counter_page(request: Request, ws: WebSession = Depends(require("inbox.act"))) -> Response:
    return render(request, "counter.html", ws, result=None, error="", code="")


@router.post("/inbox/counter", response_class=HTMLResponse, dependencies=[Depends(csrf)])
def counter_redeem(
    request: Request,
    code: Annotated[str, Form(max_length=300)],
    ws: WebSession = Depends(require("inbox.act")),
) -> Response:
    try:
        result = ml.redeem_code(request.app.state.crm, code, ws.username or "", ws.dealer_id or "")
    except ml.CounterError as err:
        page = render(request, "counter.html", ws, result=None, error=str(err), code=code)
        page.status_code = STATUS.get(err.reason, 409)
        return page
    except OperationalError:
        page = render(request, "counter.html", ws, result=None, error="busy; scan again", code=code)
        page.status_code = 503
        return page
    return render(request, "counter.html", ws, result=result, error="", code="")
