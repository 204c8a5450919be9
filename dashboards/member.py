"""The mobile member page (H5, for a WeChat service account's or mini-program's web view):
tier and points, the vehicles of the current ownership and their next service, coupons with a QR
code and a short code, sharing a coupon by link and claiming one as a friend.

No password: a member signs in with a signed, expiring link (``crm.member_links``) sent through a
message transport (``crm.transports``). The session that opens is the CRM's ``member_sessions``
row behind its own cookie (``carpulse_member``: HttpOnly, SameSite=Lax so a link opened from a
message carries it, Secure unless configured off, path ``/m``), never a staff session; a logout
ends it and retires the link that opened it. Every POST checks a CSRF token: the session's, or
for a friend without a session, one bound to a signed cookie of the claim form. Words come in
Simplified Chinese (default) and English (``?lang=en``, kept in a cookie).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, BackgroundTasks, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete, select, update

from core.errors import ClaimError, CouponStateError, CrmError, DeliveryError, LinkError
from crm import loyalty
from crm import member_links as ml
from crm.schema import Coupon, CouponTemplate, Customer, utcnow
from crm.store import CrmStore, audit, resolve
from crm.tables import MemberSession
from dashboards.member_text import LANGS, qr_svg, t
from dashboards.web import lang_of, templates

log = logging.getLogger(__name__)
router = APIRouter(tags=["member"])
COOKIE: Final = "carpulse_member"
CLAIM_COOKIE: Final = "carpulse_claim"
LANG_COOKIE: Final = "carpulse_lang"
LINK_MAX: Final = dt.timedelta(days=31)  # longer than [member] link_ttl_h may be (720 h)
CouponId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


@dataclass
class Member:
    customer_id: str
    token: str
    csrf: str


def _store(request: Request) -> CrmStore:
    return request.app.state.crm  # type: ignore[no-any-return]


def member_key(request: Request) -> bytes:
    """``[dashboard] member_key_file``'s key, else one kept in the CRM database (every process
    of the same CRM agrees, ``carpulse member link`` included)."""
    app = request.app
    key: bytes | None = getattr(app.state, "member_key", None)
    if key is None:
        key = app.state.cfg.member_key or app.state.sessions.secret("member-links")
        app.state.member_key = key
    return key


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _mac(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def _page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    lang = lang_of(request, LANG_COOKIE, "zh-CN", LANGS)
    ctx.update(request=request, lang=lang, t=lambda key, **kw: t(lang, key, **kw),
               tier_name=lambda tier: loyalty.tier_name(tier, lang))  # fmt: skip
    resp = templates.TemplateResponse(request, name, ctx, status_code=status)
    if request.query_params.get("lang") in LANGS:
        resp.set_cookie(LANG_COOKIE, lang, httponly=True, samesite="lax", path="/m",
                        secure=request.app.state.cfg.secure_cookies, max_age=365 * 86400)  # fmt: skip
    return resp


def _error(request: Request, status: int, key: str, **ctx: Any) -> HTMLResponse:
    return _page(request, "member_error.html", status, message_key=key, **ctx)


def current_member(request: Request) -> Member | None:
    """The member of the cookie's session, if it is open, unexpired and its customer not erased."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 100:
        return None
    now = utcnow()
    with _store(request).tx() as s:
        row = s.get(MemberSession, _hash(token))
        if row is None or row.ended_at is not None or row.expires_at <= now:
            return None
        cid = resolve(s, row.customer_id)
        cust = s.get(Customer, cid)
        if cust is None or cust.erased_at is not None:
            return None
    return Member(cid, token, _mac(member_key(request), f"csrf|{token}"))


def _csrf_ok(expected: str, supplied: str | None) -> bool:
    return bool(supplied) and hmac.compare_digest(expected, supplied or "")


@router.get("/m/signin", response_class=HTMLResponse)
def sign_in(request: Request) -> Response:
    token = request.query_params.get("t", "")
    key, cfg = member_key(request), request.app.state.cfg
    try:
        link = ml.read_sign_in(key, token)
    except LinkError as err:
        log.info("member sign-in refused: %s", err.reason)
        return _error(request, 403, "err_" + err.reason, token=token[:300])
    now = utcnow()
    with _store(request).tx() as s:
        retired = s.scalar(
            select(MemberSession.token_hash)
            .where(MemberSession.link_nonce == link.nonce, MemberSession.ended_at.is_not(None))
            .limit(1)
        )
        cust = s.get(Customer, link.customer_id)
        if retired is not None:
            return _error(request, 403, "err_signed_out")
        if cust is None or cust.erased_at is not None:
            return _error(request, 403, "err_tampered")
        # rows older than any link's life that no longer open a session retire nothing: gone
        s.execute(delete(MemberSession).where(MemberSession.expires_at < now,
                                              MemberSession.created_at < now - LINK_MAX))  # fmt: skip
        session = secrets.token_urlsafe(32)
        expires = now + dt.timedelta(seconds=cfg.member_session_s)
        s.add(MemberSession(token_hash=_hash(session), customer_id=resolve(s, cust.id),
                            link_nonce=link.nonce, created_at=now, expires_at=expires))  # fmt: skip
        audit(s, cust.id, "member.signin", cust.id, "member-page", dealer_id=cust.dealer_id)
    resp = RedirectResponse("/m", status_code=303)  # the token leaves the address bar
    resp.set_cookie(COOKIE, session, httponly=True, samesite="lax", path="/m",
                    secure=cfg.secure_cookies, max_age=int(cfg.member_session_s))  # fmt: skip
    return resp


@router.get("/m", response_class=HTMLResponse)
def member_page(request: Request) -> Response:
    me = current_member(request)
    if me is None:
        return _error(request, 401, "err_login")
    with _store(request).tx() as s:
        view = ml.member_view(s, me.customer_id)
    qr = {c["id"]: qr_svg(c["code"]) for c in view.coupons["valid"]}
    return _page(request, "member.html", view=view, qr=qr, csrf=me.csrf)


@router.post("/m/logout", response_class=HTMLResponse)
def member_logout(
    request: Request, csrf_token: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    me = current_member(request)
    if me is None:
        return _error(request, 401, "err_login")
    if not _csrf_ok(me.csrf, csrf_token):
        return _error(request, 403, "err_csrf")
    with _store(request).tx() as s:
        row = s.get(MemberSession, _hash(me.token))
        if row is not None:  # retires the link too: the same nonce cannot open a session again
            s.execute(update(MemberSession).where(MemberSession.link_nonce == row.link_nonce)
                      .values(ended_at=utcnow()))  # fmt: skip
    resp = _page(request, "member_error.html", 200, message_key="signed_out", plain=True)
    resp.delete_cookie(COOKIE, path="/m")
    return resp


@router.post("/m/coupons/{coupon_id}/share", response_class=HTMLResponse)
def share(
    request: Request, coupon_id: CouponId, csrf_token: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    me = current_member(request)
    if me is None:
        return _error(request, 401, "err_login")
    if not _csrf_ok(me.csrf, csrf_token):
        return _error(request, 403, "err_csrf")
    try:
        with _store(request).tx() as s:
            token = ml.share_token(s, member_key(request), coupon_id, me.customer_id)
            c = s.get(Coupon, coupon_id)
            assert c is not None
            tpl = s.get(CouponTemplate, c.template_code)
            offer = ml.read_share(member_key(request), token)
    except CouponStateError:
        return _error(request, 409, "err_gone")
    except CrmError:  # another member's coupon is not found, like a made-up id
        return _error(request, 404, "err_gone")
    base = request.app.state.cfg.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    link = f"{base}/m/claim?t={token}"
    return _page(request, "member_share.html", link=link, qr=qr_svg(link, scale=3),
                 tpl=tpl, until=offer.expires.date(), csrf=me.csrf, lang_base="/m")  # fmt: skip


def _claim_form(
    request: Request,
    token: str,
    status: int = 200,
    error: str = "",
    typed: dict[str, str] | None = None,
) -> Response:
    key = member_key(request)
    try:
        offer = ml.read_share(key, token)
    except LinkError as err:
        return _error(request, 403 if err.reason != "used" else 409, "err_" + err.reason)
    with _store(request).tx() as s:
        c = s.get(Coupon, offer.coupon_id)
        if c is None or c.holder_id != offer.from_id or ml._chain_len(s, c.id) != offer.chain:
            return _error(request, 409, "err_used")
        tpl = s.get(CouponTemplate, c.template_code)
        sharer = s.get(Customer, offer.from_id)
        name = (sharer.display_name if sharer else "")[:1] + "**"  # the friend knows who
    nonce = request.cookies.get(CLAIM_COOKIE) or secrets.token_urlsafe(16)
    resp = _page(request, "member_claim.html", status, token=token, tpl=tpl, sharer=name,
                 until=c.valid_until.date(), csrf=_mac(key, f"claim|{nonce}"), error=error, typed=typed or {})  # fmt: skip
    resp.set_cookie(CLAIM_COOKIE, nonce, httponly=True, samesite="strict", path="/m/claim",
                    secure=request.app.state.cfg.secure_cookies, max_age=3600)  # fmt: skip
    return resp


@router.get("/m/claim", response_class=HTMLResponse)
def claim_page(request: Request) -> Response:
    return _claim_form(request, request.query_params.get("t", "")[:300])


@router.post("/m/claim", response_class=HTMLResponse)
def claim(
    request: Request,
    t_: Annotated[str, Form(alias="t", max_length=300)],
    phone: Annotated[str, Form(max_length=40)],
    name: Annotated[str, Form(max_length=100)] = "",
    terms: Annotated[str, Form(max_length=8)] = "",
    marketing: Annotated[str, Form(max_length=8)] = "",
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    key = member_key(request)
    nonce = request.cookies.get(CLAIM_COOKIE)
    if not nonce or not _csrf_ok(_mac(key, f"claim|{nonce}"), csrf_token):
        return _error(request, 403, "err_csrf")
    try:
        with _store(request).tx() as s:
            _, friend, _ = ml.claim_share(
                s, key, t_, phone, name, terms=terms == "on", marketing=marketing == "on"
            )
    except ClaimError as err:
        return _claim_form(request, t_, 400, "err_" + err.reason, {"phone": phone, "name": name})
    except LinkError as err:
        return _error(request, 403 if err.reason != "used" else 409, "err_" + err.reason)
    except CouponStateError:  # a parallel claim won, or the coupon was used meanwhile
        return _error(request, 409, "err_used")
    sent = send_sign_in(request, friend)
    return _page(request, "member_error.html", 200, message_key="claimed_help" if sent
                 else "claimed_nolink", plain=True, title_key="claimed")  # fmt: skip


def send_sign_in(request: Request, customer_id: str) -> bool:
    """A sign-in link to the customer through the configured transport (False: none, or it
    failed; the failure is logged, the claim stands)."""
    cfg = request.app.state.cfg
    transport = cfg.member_transport
    if transport is None:
        return False
    base = cfg.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    ttl = dt.timedelta(seconds=cfg.member_link_ttl_s)
    try:
        with _store(request).tx() as s:
            url = ml.issue_sign_in(s, member_key(request), customer_id, base, ttl)
            transport.send_link(s, customer_id, url, ttl.total_seconds() / 3600)
    except (DeliveryError, CrmError) as err:
        log.warning("sign-in link to %s not sent: %s", customer_id, err)
        return False
    return True


def demo_link(store: CrmStore, settings: Any, vin: str, base_url: str) -> str:
    """``make demo``: a sign-in link for the owner of ``vin`` (the demo's first car), who is
    given a welcome coupon to share if they hold no live one; signed with the key the demo's
    dashboard uses (``[member] key_file``, else the CRM database's)."""
    from crm.store import issue_coupon, owner_at
    from dashboards.auth import SessionStore

    key = settings.member.resolved_key() or SessionStore(store.engine).secret("member-links")
    now = utcnow()
    with store.tx() as s:
        cid = owner_at(s, vin, now)
        if cid is None:
            raise CrmError(f"the demo vehicle {vin} has no owner")
        live = s.scalar(
            select(Coupon.id)
            .where(
                Coupon.holder_id == cid,
                Coupon.state.in_(("issued", "shared")),
                Coupon.valid_until >= now,
            )
            .limit(1)
        )
        tpl = s.get(CouponTemplate, "tier-welcome") or s.scalars(select(CouponTemplate)).first()
        if live is None and tpl is not None:
            issue_coupon(s, tpl.code, cid, now + dt.timedelta(days=tpl.valid_days), vin=vin)
        ttl = dt.timedelta(hours=settings.member.link_ttl_h)
        return ml.issue_sign_in(s, key, cid, base_url, ttl)


# ----- a new link by phone ------------------------------------------------------------------------
ASK_COOKIE: Final = "carpulse_ask"
ASK_PER_PHONE: Final = 3  # link requests per phone number and hour
ASK_PER_ADDRESS: Final = 10  # ... and per client address


def _ask_form(request: Request, status: int = 200, note: str = "") -> Response:
    nonce = request.cookies.get(ASK_COOKIE) or secrets.token_urlsafe(16)
    csrf = _mac(member_key(request), f"ask|{nonce}")
    resp = _page(request, "member_login.html", status, csrf=csrf, note=note)
    resp.set_cookie(ASK_COOKIE, nonce, httponly=True, samesite="strict", path="/m/login",
                    secure=request.app.state.cfg.secure_cookies, max_age=3600)  # fmt: skip
    return resp


@router.get("/m/login", response_class=HTMLResponse)
def ask_page(request: Request) -> Response:
    return _ask_form(request)


@router.post("/m/login", response_class=HTMLResponse)
def ask_link(
    request: Request,
    background: BackgroundTasks,
    phone: Annotated[str, Form(max_length=40)],
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """Send a sign-in link to a member's phone. The answer is the same whether the number is a
    member's or not (no enumeration); at most ``ASK_PER_PHONE`` requests per number and
    ``ASK_PER_ADDRESS`` per client address an hour (no message flood), counted in the audit log."""
    from sqlalchemy import func

    from crm.schema import AuditRecord, CustomerIdentity
    from dashboards.throttle import address_subject

    nonce = request.cookies.get(ASK_COOKIE)
    if not nonce or not _csrf_ok(_mac(member_key(request), f"ask|{nonce}"), csrf_token):
        return _error(request, 403, "err_csrf")
    try:
        number = ml.normalize_phone(phone)
    except ClaimError:
        return _ask_form(request, 400, "err_phone")
    who = "phone:" + _mac(member_key(request), f"phone|{number}")[:32]
    addr = address_subject(request.client.host if request.client else None)
    since = utcnow() - dt.timedelta(hours=1)
    with _store(request).tx() as s:
        recent = select(func.count(AuditRecord.id)).where(
            AuditRecord.action == "member.link.request", AuditRecord.at >= since
        )
        if (s.scalar(recent.where(AuditRecord.subject == who)) or 0) >= ASK_PER_PHONE or (
            s.scalar(recent.where(AuditRecord.actor == addr)) or 0
        ) >= ASK_PER_ADDRESS:
            page = _ask_form(request, 429, "err_busy")
            page.headers["Retry-After"] = "3600"
            return page
        audit(s, addr, "member.link.request", who, "member-page")
        cid = s.scalar(
            select(CustomerIdentity.customer_id).where(
                CustomerIdentity.kind == "phone", CustomerIdentity.value == number
            )
        )
    if cid is not None:  # after the answer: its timing tells nothing either
        background.add_task(send_sign_in, request, cid)
    return _ask_form(request, 200, "asked")
