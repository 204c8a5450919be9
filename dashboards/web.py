"""Request helpers every page module shares: the logged-in session, role checks, CSRF, the
templates and the staff pages' language. ``dashboards.app`` only assembles the routers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from crm import loyalty
from crm.privacy import READ_PURPOSES
from dashboards import staff_text
from dashboards.auth import COOKIE, PRELOGIN_COOKIE, SessionStore, WebSession, csrf_ok

HERE: Final = Path(__file__).parent
# The purposes crm.privacy.read_location accepts, with the console's labels.
REASON_CODES: Final = {
    "crash-response": "Crash or medical emergency",
    "roadside-assistance": "Breakdown assistance",
    "theft": "Stolen vehicle (police reference)",
    "customer-request": "Customer asked on the phone",
}
assert set(REASON_CODES) == set(READ_PURPOSES), "console reasons must be the CRM's read purposes"


class NeedLogin(Exception):
    pass


def _templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape is on for .html
    t.env.globals["reason_codes"] = REASON_CODES
    t.env.globals["staff_keys"] = staff_text.TEXT  # to ask whether a data value has words
    return t


templates = _templates()


def get_session(request: Request) -> WebSession | None:
    store: SessionStore = request.app.state.sessions
    return store.get(request.cookies.get(COOKIE))


def require(permission: str) -> Any:
    """Dependency: the logged-in session with ``permission`` (401 / 403 otherwise)."""

    def dep(request: Request) -> WebSession:
        ws = get_session(request)
        if ws is None or ws.username is None:
            raise NeedLogin()
        if not ws.can(permission):
            raise HTTPException(403, f"your role ({ws.role}) may not do this ({permission})")
        return ws

    return dep


def get_prelogin(request: Request) -> WebSession | None:
    """The login form's signed, unstored pre-login session (see ``dashboards.auth``)."""
    store: SessionStore = request.app.state.sessions
    return store.prelogin(request.cookies.get(PRELOGIN_COOKIE))


async def _supplied_csrf(request: Request) -> str | None:
    supplied = request.headers.get("x-csrf-token")
    if supplied is None:
        form = await request.form()
        value = form.get("csrf_token")
        supplied = value if isinstance(value, str) else None
    return supplied


async def csrf(request: Request) -> None:
    """Dependency of every state-changing route: the session's token in the form or a header."""
    if not csrf_ok(get_session(request), await _supplied_csrf(request)):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")


async def login_csrf(request: Request) -> None:
    """``POST /login``: the session's token, or the pre-login cookie's."""
    supplied = await _supplied_csrf(request)
    if not (csrf_ok(get_session(request), supplied) or csrf_ok(get_prelogin(request), supplied)):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")


def set_cookie(resp: Response, ws: WebSession, secure: bool) -> None:
    resp.set_cookie(
        COOKIE, ws.id, httponly=True, samesite="strict", secure=secure, path="/", max_age=None
    )


def lang_of(request: Request, cookie: str, default: str, langs: tuple[str, ...]) -> str:
    """``?lang=`` if it names one of ``langs``, else the cookie's, else ``default`` (the staff
    pages pass theirs, ``dashboards.staff_text``; the member page its own)."""
    asked = request.query_params.get("lang") or request.cookies.get(cookie)
    return asked if asked is not None and asked in langs else default


def staff_lang(request: Request) -> str:
    """The staff pages' language: ``?lang=``, else the cookie's, else English."""
    return lang_of(request, staff_text.COOKIE, staff_text.DEFAULT, staff_text.LANGS)


def render(request: Request, name: str, ws: WebSession | None, **ctx: Any) -> HTMLResponse:
    lang = staff_lang(request)
    switch = request.url.include_query_params(lang="en" if lang == "zh-CN" else "zh-CN")
    ctx.update(request=request, ws=ws, csrf=ws.csrf if ws else "", lang=lang,
               t=lambda key, **kw: staff_text.t(lang, key, **kw),
               tier_name=lambda tier: loyalty.tier_name(tier, lang),
               lang_switch=f"{switch.path}?{switch.query}")  # fmt: skip
    resp = templates.TemplateResponse(request, name, ctx)
    if request.query_params.get("lang") in staff_text.LANGS:  # remembered for every staff page
        resp.set_cookie(staff_text.COOKIE, lang, httponly=True, samesite="lax", path="/",
                        secure=request.app.state.cfg.secure_cookies, max_age=365 * 86400)  # fmt: skip
    return resp
