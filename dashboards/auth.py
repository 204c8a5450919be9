"""Users, roles, argon2 password hashes, server-side sessions and per-session CSRF tokens.

A session is a random 256-bit id in an HttpOnly, SameSite=Strict cookie (``Secure`` on unless
configured off for plain-HTTP development); everything else (user, a location grant) lives on the
server, in the CRM database under a SHA-256 of the id, so a stolen page never carries more than
the id, a restart logs nobody out and several dashboard processes agree. Every state-changing request
must echo the session's CSRF token in the ``csrf_token`` form field or the ``X-CSRF-Token`` header.
The login form's token comes from a signed pre-login cookie (HMAC with a secret kept in the CRM
database, so every process agrees), not from a session row: a row is written only on a successful
login, so unauthenticated ``GET /login`` requests cost no storage. Login CSRF is refused too.
Every request reads the user again: a deactivated or deleted user's session ends, a changed role or
dealer applies at once. At most ``GATE.limit`` argon2 checks run at once (``VerifyGate``); failed
logins are throttled per account and per address by ``dashboards.throttle``.
The tables are made by the CRM's Alembic migrations (0004), never here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import JSON, Boolean, DateTime, Float, String, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROLES: Final = ("call_centre_agent", "service_advisor", "dealer_admin", "auditor", "platform_admin")

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
    # the operator of the platform: every dealer's audit rows, nothing of any dealer's customers
    "platform_admin": frozenset({"audit.view", "audit.all"}),
}

COOKIE: Final = "carpulse_session"
PRELOGIN_COOKIE: Final = "carpulse_prelogin"
PRELOGIN_S: Final = 3600.0  # a login form older than this asks for a reload
_HASHER = PasswordHasher()


class LoginBusy(Exception):
    """Every password-check slot is taken: the caller answers 503 with Retry-After."""


class VerifyGate:
    """At most ``limit`` argon2 verifications at once (each costs ~50 ms of CPU and 64 MiB), so
    a flood of logins queues briefly and is then refused instead of eating every core."""

    def __init__(self, limit: int = 2, wait_s: float = 2.0) -> None:
        self.limit, self.wait_s = limit, wait_s
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.running = self.peak = self.refused = 0

    def verify(self, stored: str, password: str) -> bool:
        if not self._sem.acquire(timeout=self.wait_s):
            with self._lock:
                self.refused += 1
            raise LoginBusy("too many logins at once")
        try:
            with self._lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                return bool(_HASHER.verify(stored, password))
            except (VerificationError, InvalidHashError):
                return False
        finally:
            with self._lock:
                self.running -= 1
            self._sem.release()


GATE = VerifyGate()
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


class DashboardSecret(UserBase):
    """Server-side secrets shared by every dashboard process (the pre-login cookie's HMAC key)."""

    __tablename__ = "dashboard_secrets"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))


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
    """The user if the password matches (rehashing outdated parameters), else None.

    Raises ``LoginBusy`` when every verification slot stays taken (see ``VerifyGate``)."""
    user = s.scalar(select(DashboardUser).where(DashboardUser.username == username))
    stored = user.password_hash if user is not None and user.active else _DUMMY_HASH
    if not GATE.verify(stored, password):
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
        self._key: bytes | None = None

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def new(self, user: DashboardUser | None = None) -> WebSession:
        """A stored session (the app makes one only for a logged-in ``user``)."""
        now = time.time()
        token = secrets.token_urlsafe(32)
        who = (user.username, user.role, user.dealer_id) if user else (None, None, None)
        with self._session() as s, s.begin():
            if now - self._last_prune > 60.0:
                self._last_prune = now
                s.execute(delete(SessionRow).where(SessionRow.expires < now))
            s.add(SessionRow(token_hash=_hash(token), created=now, last_seen=now,
                             expires=now + min(self.idle_s, self.absolute_s),
                             username=who[0], role=who[1], dealer_id=who[2]))  # fmt: skip
        return WebSession(token, _csrf(token), now, now, *who)

    def _secret(self) -> bytes:
        """The pre-login HMAC key: made once per database (the first process to ask wins)."""
        if self._key is None:
            self._key = self.secret("prelogin")
        return self._key

    def secret(self, name: str) -> bytes:
        """A named server-side key (``prelogin``, ``audit``), made by the first process to ask."""
        with self._session() as s, s.begin():
            row = s.get(DashboardSecret, name)
            if row is None:
                try:
                    with s.begin_nested():
                        s.add(DashboardSecret(name=name, value=secrets.token_hex(32)))
                except IntegrityError:
                    pass  # another process made it first
                row = s.get(DashboardSecret, name)
            assert row is not None
            return bytes.fromhex(row.value)

    def _sign(self, msg: str) -> str:
        return hmac.new(self._secret(), msg.encode(), hashlib.sha256).hexdigest()

    def new_prelogin(self, now: float | None = None) -> WebSession:
        """A login form's anonymous session: nothing stored; its id is the signed cookie value
        ``<nonce>.<issued>.<hmac>`` and its CSRF token an HMAC of the nonce."""
        issued = int(time.time() if now is None else now)
        nonce = secrets.token_urlsafe(16)
        value = f"{nonce}.{issued}.{self._sign(f'{nonce}.{issued}')}"
        return WebSession(value, self._sign(f"csrf|{nonce}"), issued, issued)

    def prelogin(self, value: str | None, now: float | None = None) -> WebSession | None:
        """The pre-login session of a cookie, if its signature is right and it is fresh."""
        if not value or len(value) > 200 or value.count(".") != 2:
            return None
        nonce, issued_s, sig = value.split(".")
        if not issued_s.isdigit() or not hmac.compare_digest(
            sig, self._sign(f"{nonce}.{issued_s}")
        ):
            return None
        issued, t = int(issued_s), time.time() if now is None else now
        if not issued - 60 <= t < issued + PRELOGIN_S:  # 60 s of clock skew between processes
            return None
        return WebSession(value, self._sign(f"csrf|{nonce}"), issued, issued)

    def get(self, sid: str | None) -> WebSession | None:
        """The session, with the user's role and dealer as they are now: a deleted or deactivated
        user's sessions end at their next request, a demoted user's role changes at once."""
        if not sid or len(sid) > 200:
            return None
        now = time.time()
        with self._session() as s, s.begin():
            row = s.get(SessionRow, _hash(sid))
            if row is None:
                return None
            user = None if row.username is None else s.get(DashboardUser, row.username)
            if now >= row.expires or (
                row.username is not None and (user is None or not user.active)
            ):
                s.delete(row)
                return None
            if now - row.last_seen >= self.TOUCH_EVERY_S:
                row.last_seen = now
                row.expires = min(now + self.idle_s, row.created + self.absolute_s)
            role, dealer = (user.role, user.dealer_id) if user else (row.role, row.dealer_id)
            g = row.grant
            grant = LocationGrant(**g) if g else None
            return WebSession(sid, _csrf(sid), row.created, row.last_seen, row.username,
                              role, dealer, grant)  # fmt: skip

    def login(self, old: WebSession | None, user: DashboardUser) -> WebSession:
        """A fresh session id and CSRF token for the logged-in user (no session fixation)."""
        if old is not None:
            self.drop(old.id)
        return self.new(user)

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
