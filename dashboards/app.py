"""The FastAPI app: login, logout, the audit page, static files and the live feed; it
assembles the page modules' routers.

``create_app(DashboardConfig(...))`` builds it; ``carpulse dashboard`` serves it with uvicorn.
Screens live in ``dashboards.console`` (call centre), ``dashboards.inbox`` (service advisors),
``dashboards.desk``, ``dashboards.counter`` and ``dashboards.member``; the request helpers they
share (session, role checks, CSRF, templates, language) in ``dashboards.web``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select

from core.config import MqttSettings
from core.errors import ConfigError, SchemaError
from crm.migrate import check_schema, migrate
from crm.schema import AuditRecord
from crm.store import CrmStore, audit
from dashboards import auth
from dashboards.auth import COOKIE, PRELOGIN_COOKIE, PRELOGIN_S, SessionStore, WebSession
from dashboards.live import KafkaFeed, StateHub
from dashboards.maintenance import Horizon
from dashboards.metrics import install as install_metrics
from dashboards.throttle import LoginThrottle, address_subject
from dashboards.web import (
    HERE,
    NeedLogin,
    csrf,
    get_prelogin,
    get_session,
    login_csrf,
    render,
    require,
    set_cookie,
)

log = logging.getLogger(__name__)


@dataclass
class DashboardConfig:
    """Everything the app needs; ``carpulse dashboard`` fills it from the settings."""

    crm_url: str
    kafka_bootstrap: str | None = None  # None: no live feed (tests that drive the hub directly)
    # aiokafka client options (security, the dashboards' own principal); None: bootstrap only
    kafka_options: dict[str, Any] | None = None
    mqtt: MqttSettings | None = None  # None: commands are disabled (shown as such)
    mqtt_password: str | None = None
    signing_key: Path | None = None
    secure_cookies: bool = True
    reveal_seconds: float = 300.0
    session_idle_s: float = 1800.0
    # the coupon templates advisors may issue from the inbox (none unless listed)
    coupon_templates: list[str] = field(default_factory=list)
    maintenance: Horizon = field(default_factory=Horizon)  # what the inbox files
    public_url: str = ""  # where users reach the app ([dashboard] public_url); for links
    # True: migrate the CRM at start (the demo); else its schema is checked and an old one refused
    migrate: bool = False
    login_max_account_failures: int = 5  # then 429 for the account (see dashboards.throttle)
    login_max_address_failures: int = 20  # then 429 for the client address, whatever the name
    login_window_s: float = 900.0
    password_checks: int = 2  # argon2 verifications at once; more wait, then 503
    password_check_wait_s: float = 2.0  # how long a login waits for a free verification slot
    session_recheck_s: float = 5.0  # an open live stream re-reads its session this often
    # who may read /metrics ([metrics] allow): loopback unless the settings say otherwise
    metrics_allow: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # the member page (dashboards.member): link key (None: one kept in the CRM database), how
    # long a sign-in link and a member session last, how links reach members (crm.transports)
    member_key: bytes | None = None
    member_link_ttl_s: float = 86400.0
    member_session_s: float = 30 * 86400.0
    member_transport: Any = None  # a crm.transports.MessageTransport; None: links are not sent


def _login_refused(
    request: Request, old: WebSession | None, status: int, wait: int, error: str
) -> Response:
    page = render(request, "login.html", old or get_prelogin(request), error=error)
    page.status_code = status
    page.headers["Retry-After"] = str(wait)
    return page


def create_app(cfg: DashboardConfig) -> FastAPI:
    from dashboards import console, counter, desk, inbox, member

    store = CrmStore.from_url(cfg.crm_url)
    try:
        if cfg.migrate:
            migrate(store.engine)
        else:  # `carpulse crm migrate` is the step that changes the schema
            check_schema(store.engine)
    except SchemaError:
        store.engine.dispose()
        raise
    except ConfigError as err:
        # not reachable yet (the database starts after us): serve, and /readyz says why
        log.warning("%s: not ready until the database answers", err)
    except Exception:
        store.engine.dispose()
        raise
    hub = StateHub()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feed: KafkaFeed | None = None
        channel = None
        if cfg.kafka_bootstrap:
            feed = KafkaFeed(
                cfg.kafka_bootstrap,
                hub,
                inbox.record_filer(store, cfg.maintenance),
                options=cfg.kafka_options,
            )
            await feed.start()
        if cfg.mqtt is not None and cfg.signing_key is not None:
            from core.signing import load_private_key
            from dashboards.commands import CommandChannel

            channel = CommandChannel(cfg.mqtt, load_private_key(cfg.signing_key), cfg.mqtt_password)
            try:
                channel.start()
            except Exception as err:  # the console still works read-only without a broker
                log.error("commands disabled: %s", err)
                channel = None
        app.state.commands = channel
        app.state.feed = feed
        try:
            yield
        finally:
            if feed is not None:
                await feed.stop()
            if channel is not None:
                channel.stop()

    app = FastAPI(
        title="carpulse dashboards",
        version="0.1.0",
        description="Call-centre console and service-advisor inbox.",
        lifespan=lifespan,
    )
    app.state.cfg, app.state.crm, app.state.hub = cfg, store, hub
    app.state.sessions = SessionStore(store.engine, idle_s=cfg.session_idle_s)
    app.state.commands = None
    app.state.command_owners = {}  # command id -> (user, dealer): status only for its sender
    throttle = LoginThrottle(
        cfg.login_max_account_failures, cfg.login_max_address_failures, cfg.login_window_s
    )
    app.state.throttle = throttle
    if (auth.GATE.limit, auth.GATE.wait_s) != (cfg.password_checks, cfg.password_check_wait_s):
        auth.GATE = auth.VerifyGate(cfg.password_checks, cfg.password_check_wait_s)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    metrics = install_metrics(app, cfg.metrics_allow)  # /metrics, /readyz, request counters

    @app.exception_handler(NeedLogin)
    async def _need_login(request: Request, _exc: NeedLogin) -> Response:
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"detail": "log in first"}, status_code=401)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        resp: Response = await call_next(request)
        # Everything is served from here: no CDN, no inline script from elsewhere, no framing.
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "media-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/healthz", tags=["meta"])
    def healthz(request: Request) -> dict[str, Any]:
        feed = request.app.state.feed
        return {
            "ok": True,
            "vehicles": len(hub.states),
            "feed": None if feed is None else feed.ready.is_set(),
            "commands": request.app.state.commands is not None,
        }

    @app.get("/", response_class=HTMLResponse, tags=["pages"])
    def home(request: Request) -> Response:
        ws = get_session(request)
        if ws is None or ws.username is None:
            return RedirectResponse("/login", status_code=303)
        target = {"service_advisor": "/inbox", "auditor": "/audit", "platform_admin": "/audit"}.get(
            ws.role or "", "/console"
        )
        return RedirectResponse(target, status_code=303)

    @app.get("/login", response_class=HTMLResponse, tags=["auth"])
    def login_page(request: Request) -> Response:
        ws = get_session(request)
        if ws is not None:
            return render(request, "login.html", ws, error="")
        # No session row before a successful login: the form's token is a signed cookie's.
        pre = get_prelogin(request) or request.app.state.sessions.new_prelogin()
        resp = render(request, "login.html", pre, error="")
        resp.set_cookie(PRELOGIN_COOKIE, pre.id, httponly=True, samesite="strict",
                        secure=cfg.secure_cookies, path="/login", max_age=int(PRELOGIN_S))  # fmt: skip
        return resp

    @app.post("/login", tags=["auth"], dependencies=[Depends(login_csrf)])
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=256)],
    ) -> Response:
        old = get_session(request)
        host = request.client.host if request.client else None
        with store.tx() as s:
            wait = throttle.retry_after(s, username, host)
        if wait:  # no password check at all: a guessing flood costs no argon2
            metrics.logins.labels("throttled").inc()
            log.warning("login throttled: %r from %s for %d s", username[:64], host, wait)
            return _login_refused(request, old, 429, wait, "err_throttled")
        try:
            with store.tx() as s:
                user = auth.authenticate(s, username, password)
                who = s.get(auth.DashboardUser, username[:64])
                dealer = None if who is None else who.dealer_id
                if user is None:
                    audit(s, username[:64], "login.failed", address_subject(host), "dashboard",
                          dealer_id=dealer)  # fmt: skip
                else:
                    audit(s, user.username, "login", address_subject(host), "dashboard",
                          dealer_id=dealer, role=user.role)  # fmt: skip
                    s.flush()  # a rehashed password is written before the user leaves the session
                    s.expunge(user)
        except auth.LoginBusy:
            metrics.logins.labels("busy").inc()
            return _login_refused(request, old, 503, 1, "err_busy_login")
        metrics.logins.labels("failed" if user is None else "success").inc()
        if user is None:
            form_ws = old or get_prelogin(request)
            page = render(request, "login.html", form_ws, error="err_wrong")
            page.status_code = 401
            return page
        ws = request.app.state.sessions.login(old, user)
        resp = RedirectResponse("/", status_code=303)
        set_cookie(resp, ws, cfg.secure_cookies)
        resp.delete_cookie(PRELOGIN_COOKIE, path="/login")
        return resp

    @app.post("/logout", tags=["auth"], dependencies=[Depends(csrf)])
    def logout(request: Request) -> Response:
        ws = get_session(request)
        if ws is not None:
            request.app.state.sessions.drop(ws.id)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/audit", response_class=HTMLResponse, tags=["pages"])
    def audit_page(request: Request, ws: WebSession = Depends(require("audit.view"))) -> Response:
        """The newest audit rows of the user's dealer (a platform administrator's: all rows);
        the read itself is audited."""
        everything = ws.can("audit.all")
        query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(200)
        if not everything:
            query = query.where(AuditRecord.dealer_id == ws.dealer_id)
        with store.tx() as s:
            rows = list(s.scalars(query))
            audit(s, ws.username or "", "audit.view", "audit_log", "audit",
                  dealer_id=None if everything else ws.dealer_id,
                  scope="all" if everything else ws.dealer_id, rows=len(rows))  # fmt: skip
        return render(request, "audit.html", ws, rows=rows)

    app.include_router(desk.router)
    app.include_router(console.router)
    app.include_router(inbox.router)
    app.include_router(counter.router)
    app.include_router(member.router)
    return app
