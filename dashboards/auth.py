"""Users, roles, argon2 password hashes, server-side sessions and per-session CSRF tokens.

A session is a random 256-bit id in an HttpOnly, SameSite=Strict cookie (``Secure`` on unless
configured off for plain-HTTP development); everything else (user, CSRF token, a location grant)
lives on the server, so a stolen page never carries more than the id. Every state-changing request
must echo the session's CSRF token in the ``csrf_token`` form field or the ``X-CSRF-Token`` header;
the login form gets a token from a pre-login session, so login CSRF is refused too.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Boolean, DateTime, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROLES: Final = ("call_centre_agent", "service_advisor", "dealer_admin", "auditor")

# What each role may do; routes ask for a permission, never for a role name.
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "call_centre_agent": frozenset(
        {"console.view", "location.reveal", "command.send", "member.view"}
    ),
    "service_advisor": frozenset({"console.view", "inbox.view", "inbox.act", "member.view"}),
    "dealer_admin": frozenset(
        {
            "console.view",
            "location.reveal",
            "command.send",
            "member.view",
            "inbox.view",
            "inbox.act",
            "audit.view",
        }
    ),
    "auditor": frozenset({"audit.view"}),
}

COOKIE: Final = "carpulse_session"
_HASHER = PasswordHasher()
# A hash of a random password, verified against when the user is unknown so that a wrong user
# name costs as long as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class UserBase(DeclarativeBase):
    pass


class DashboardUser(UserBase):
    """A web-app user; ``dealer_id`` scopes every vehicle and customer they may see."""

    __tablename__ = "dashboard_users"
    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    dealer_id: Mapped[str] = mapped_column(String(64), default="default")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: dt.datetime.now(dt.UTC)
    )


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def create_tables(engine: Engine) -> None:
    UserBase.metadata.create_all(engine)


def add_user(s: Session, username: str, password: str, role: str, dealer_id: str) -> None:
    """Create or replace a user (the password is stored as an argon2id hash only)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    if len(password) < 8:
        raise ValueError("passwords need at least 8 characters")
    user = s.get(DashboardUser, username)
    if user is None:
        s.add(DashboardUser(username=username, password_hash="", role=role, dealer_id=dealer_id))
        s.flush()
        user = s.get(DashboardUser, username)
        assert user is not None
    user.password_hash = hash_password(password)
    user.role, user.dealer_id, user.active = role, dealer_id, True


def authenticate(s: Session, username: str, password: str) -> DashboardUser | None:
    """The user if the password matches (rehashing outdated parameters), else None."""
    user = s.scalar(select(DashboardUser).where(DashboardUser.username == username))
    stored = user.password_hash if user is not None and user.active else _DUMMY_HASH
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _HASHER.check_needs_rehash(stored):
        user.password_hash = hash_password(password)
    return user


@dataclass
class LocationGrant:
    """A revealed location: one vehicle, until ``expires`` (monotonic seconds)."""

    vin: str
    reason: str
    ticket: str
    expires: float


@dataclass
class WebSession:
    id: str
    csrf: str
    created: float
    last_seen: float
    username: str | None = None
    role: str | None = None
    dealer_id: str | None = None
    grant: LocationGrant | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def can(self, permission: str) -> bool:
        return self.role is not None and permission in PERMISSIONS.get(self.role, frozenset())

    def location_grant(self, vin: str, now: float | None = None) -> LocationGrant | None:
        g = self.grant
        t = time.monotonic() if now is None else now
        if g is not None and g.vin == vin and t < g.expires:
            return g
        return None


class SessionStore:
    """In-process sessions with idle and absolute timeouts (one app process; see README)."""

    def __init__(self, idle_s: float = 1800.0, absolute_s: float = 12 * 3600.0) -> None:
        self.idle_s, self.absolute_s = idle_s, absolute_s
        self._sessions: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def new(self) -> WebSession:
        now = time.monotonic()
        ws = WebSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._prune(now)
            self._sessions[ws.id] = ws
        return ws

    def get(self, sid: str | None) -> WebSession | None:
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            ws = self._sessions.get(sid)
            if ws is None:
                return None
            if now - ws.last_seen > self.idle_s or now - ws.created > self.absolute_s:
                del self._sessions[sid]
                return None
            ws.last_seen = now
            return ws

    def login(self, old: WebSession | None, user: DashboardUser) -> WebSession:
        """A fresh session id and CSRF token for the logged-in user (no session fixation)."""
        if old is not None:
            self.drop(old.id)
        ws = self.new()
        ws.username, ws.role, ws.dealer_id = user.username, user.role, user.dealer_id
        return ws

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def _prune(self, now: float) -> None:
        dead = [k for k, v in self._sessions.items() if now - v.last_seen > self.idle_s]
        for k in dead:
            del self._sessions[k]


def csrf_ok(ws: WebSession | None, supplied: str | None) -> bool:
    return bool(ws and supplied) and hmac.compare_digest(ws.csrf, supplied or "")  # type: ignore[union-attr]
