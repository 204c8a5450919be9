"""Users, roles, argon2 password hashes, server-side sessions and per-session CSRF tokens.

A session is a random 256-bit id in an HttpOnly, SameSite=Strict cookie (``Secure`` on unless
configured off for plain-HTTP development); everything else (user, a location grant) lives on the
server, in the CRM database under a SHA-256 of the id, so a stolen page never carries more than
the id, a restart logs nobody out and several dashboard processes agree. Every state-changing request
must echo the session's CSRF token in the ``csrf_token`` form field or the ``X-CSRF-Token`` header;
the login form gets a token from a pre-login session, so login CSRF is refused too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import JSON, Boolean, DateTime, Float, String, delete, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROLES: Final = ("call_centre_agent", "service_advisor", "dealer_admin", "auditor")

# What each role may do; routes ask for a permission, never for a role name.
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "call_centre_agent": frozenset(
        {"console.view", "location.reveal", "command.send", "member.view", "queue.act"}
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
            "queue.act",
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
    """Users and sessions. The inbox used to be a table of its own (``advisor_inbox``, made here,
    never by a migration); it is the CRM's ``inbox_items`` now, so the old table goes."""
    UserBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS advisor_inbox"))


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
    """A revealed location: one vehicle, until ``expires`` (Unix seconds)."""

    vin: str
    reason: str
    ticket: str
    expires: float


class SessionRow(UserBase):
    """A server-side session. Only a SHA-256 of the cookie's token is stored, so a copy of the
    database opens no session; the CSRF token is derived from the token, never stored."""

    __tablename__ = "dashboard_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str | None] = mapped_column(String(64), default=None)
    role: Mapped[str | None] = mapped_column(String(32), default=None)
    dealer_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created: Mapped[float] = mapped_column(Float)  # Unix seconds
    last_seen: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float, index=True)  # min(idle, absolute) deadline
    grant: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


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
        t = time.time() if now is None else now
        if g is not None and g.vin == vin and t < g.expires:
            return g
        return None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _csrf(token: str) -> str:
    return hmac.new(token.encode(), b"carpulse-csrf", hashlib.sha256).hexdigest()


class SessionStore:
    """Sessions in the CRM database (table ``dashboard_sessions``) with idle and absolute
    timeouts: a restart logs nobody out, and every dashboard process sees the same sessions
    and location grants."""

    TOUCH_EVERY_S: Final = 30.0  # write last_seen at most this often (a read per request)

    def __init__(
        self, engine: Engine, idle_s: float = 1800.0, absolute_s: float = 12 * 3600.0
    ) -> None:
        self.engine = engine
        self.idle_s, self.absolute_s = idle_s, absolute_s
        self._last_prune = 0.0

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def new(self) -> WebSession:
        now = time.time()
        token = secrets.token_urlsafe(32)
        with self._session() as s, s.begin():
            if now - self._last_prune > 60.0:
                self._last_prune = now
                s.execute(delete(SessionRow).where(SessionRow.expires < now))
            s.add(SessionRow(token_hash=_hash(token), created=now, last_seen=now,
                             expires=now + min(self.idle_s, self.absolute_s)))  # fmt: skip
        return WebSession(token, _csrf(token), now, now)

    def get(self, sid: str | None) -> WebSession | None:
        if not sid or len(sid) > 200:
            return None
        now = time.time()
        with self._session() as s, s.begin():
            row = s.get(SessionRow, _hash(sid))
            if row is None:
                return None
            if now >= row.expires:
                s.delete(row)
                return None
            if now - row.last_seen >= self.TOUCH_EVERY_S:
                row.last_seen = now
                row.expires = min(now + self.idle_s, row.created + self.absolute_s)
            g = row.grant
            grant = LocationGrant(**g) if g else None
            return WebSession(sid, _csrf(sid), row.created, row.last_seen, row.username,
                              row.role, row.dealer_id, grant)  # fmt: skip

    def login(self, old: WebSession | None, user: DashboardUser) -> WebSession:
        """A fresh session id and CSRF token for the logged-in user (no session fixation)."""
        if old is not None:
            self.drop(old.id)
        ws = self.new()
        with self._session() as s, s.begin():
            row = s.get(SessionRow, _hash(ws.id))
            assert row is not None
            row.username, row.role, row.dealer_id = user.username, user.role, user.dealer_id
        ws.username, ws.role, ws.dealer_id = user.username, user.role, user.dealer_id
        return ws

    def set_grant(self, ws: WebSession, grant: LocationGrant | None) -> None:
        """Store the session's one location grant (a new reveal replaces the previous one)."""
        with self._session() as s, s.begin():
            row = s.get(SessionRow, _hash(ws.id))
            if row is not None:
                row.grant = None if grant is None else dataclasses.asdict(grant)
        ws.grant = grant

    def refresh_grant(self, ws: WebSession) -> LocationGrant | None:
        """The grant as stored now (a reveal in another request or process)."""
        with self._session() as s:
            row = s.get(SessionRow, _hash(ws.id))
            g = None if row is None else row.grant
        ws.grant = LocationGrant(**g) if g else None
        return ws.grant

    def drop(self, sid: str) -> None:
        with self._session() as s, s.begin():
            s.execute(delete(SessionRow).where(SessionRow.token_hash == _hash(sid)))


def csrf_ok(ws: WebSession | None, supplied: str | None) -> bool:
    return bool(ws and supplied) and hmac.compare_digest(ws.csrf, supplied or "")  # type: ignore[union-attr]
