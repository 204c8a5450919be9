"""CRM operations over the schema: identity merge, ownership, consent, tiers, coupons, effects, audit.

Every operation takes a ``Session`` and leaves committing to the caller's unit of work (``store.tx()``),
so a rule's effect record and the coupon it issues commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Final, NoReturn

from sqlalchemy import Engine, create_engine, event, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import CouponStateError, CrmError
from crm import audit as crm_audit
from crm.schema import (
    CONSENT_PURPOSES,
    IDENTITY_KINDS,
    AuditRecord,
    Consent,
    Coupon,
    CouponShare,
    CouponTemplate,
    Customer,
    CustomerIdentity,
    CustomerMerge,
    Effect,
    Member,
    Ownership,
    utcnow,
)
from crm.tables import PointsEntry


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for SQLite (WAL, foreign keys on) or PostgreSQL (psycopg 3)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        @event.listens_for(engine, "savepoint")
        def _write_lock_first(conn: Any, _name: str) -> None:
            # A SAVEPOINT outside a transaction opens a deferred one: its first read takes a
            # snapshot, and if another connection commits before its first write, SQLite
            # answers "database is locked" at once, without waiting (SQLITE_BUSY_SNAPSHOT).
            # Taking the write lock first makes that write wait its turn (busy_timeout).
            raw = conn.connection.dbapi_connection
            if raw is not None and not raw.in_transaction:
                try:
                    raw.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as err:  # as SQLAlchemy's (the callers retry it)
                    raise OperationalError("BEGIN IMMEDIATE", None, err) from err

    return engine


@event.listens_for(Session, "before_flush")
def _audit_is_append_only(session: Session, _ctx: Any, _instances: Any) -> None:
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, AuditRecord):
            raise CrmError("the audit log is append-only: records cannot be changed or deleted")
        if isinstance(obj, CouponShare) and (obj in session.deleted or session.is_modified(obj)):
            raise CrmError("the share chain is append-only: shares cannot be changed or deleted")
        if isinstance(obj, PointsEntry) and (obj in session.deleted or session.is_modified(obj)):
            raise CrmError("the points ledger is append-only: add a correcting entry instead")


KEEP_LOADED: Final = 256  # objects a unit of work keeps from being dropped and loaded again


def _keep_loaded(session: Session, instance: Any) -> None:
    """SQLAlchemy's identity map holds objects weakly: a vehicle or customer that one step of a
    transaction read and let go was read again by the next ``s.get`` (a CRM event read its car
    three times). A unit of work keeps its last ``KEEP_LOADED`` loaded objects alive, so a
    big scan still lets go of what it passed."""
    kept = session.info.get("kept")
    if kept is None:
        kept = session.info["kept"] = deque(maxlen=KEEP_LOADED)
    kept.append(instance)


class CrmStore:
    """Holds the engine and hands out transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        event.listen(self._sessions, "loaded_as_persistent", _keep_loaded)

    @classmethod
    def from_url(cls, url: str) -> CrmStore:
        return cls(make_engine(url))

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on error."""
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> tuple[bool, str]:
        """Readiness: ``SELECT 1`` on a connection of the pool; (ok, what answered or why not)."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as err:
            cause = getattr(err, "orig", None) or err
            return False, f"{self.engine.dialect.name} database: {str(cause)[:200]}"
        return True, f"{self.engine.dialect.name} database answers"


# ----- audit -------------------------------------------------------------------------------------
def audit(
    s: Session,
    actor: str,
    action: str,
    subject: str,
    purpose: str = "",
    *,
    dealer_id: str | None = None,
    **detail: Any,
) -> AuditRecord:
    """Queue an audit record; it is written, hash-chained, when ``s`` commits (``crm.audit``).

    ``dealer_id`` scopes it (default: the dealer of the subject vehicle, customer or coupon)."""
    rec = AuditRecord(actor=actor, action=action, subject=subject, purpose=purpose, detail=detail,
                      dealer_id=dealer_id, at=utcnow())  # fmt: skip
    crm_audit.queue(s, rec)
    return rec


# ----- customers and identities ------------------------------------------------------------------
def resolve(s: Session, customer_id: str) -> str:
    """Follow merges to the surviving customer id."""
    seen = set()
    current = customer_id
    while True:
        cust = s.get(Customer, current)
        if cust is None:
            raise CrmError(f"unknown customer {customer_id!r}")
        if cust.merged_into is None:
            return current
        if current in seen:
            raise CrmError(f"merge cycle at {current!r}")
        seen.add(current)
        current = cust.merged_into


def _check_identities(identities: Mapping[str, str]) -> None:
    for kind, value in identities.items():
        if kind not in IDENTITY_KINDS:
            raise CrmError(f"unknown identity kind {kind!r}; expected one of {IDENTITY_KINDS}")
        if not value or len(value) > 128:
            raise CrmError(f"identity {kind} must be 1..128 characters")


def merge_customers(s: Session, survivor_id: str, merged_id: str, reason: str) -> str:
    """Fold ``merged_id`` into ``survivor_id``: identities, ownerships, coupons and membership move."""
    survivor_id, merged_id = resolve(s, survivor_id), resolve(s, merged_id)
    if survivor_id == merged_id:
        return survivor_id
    moved = {"identities": 0, "ownerships": 0, "coupons": 0}
    for ident in s.scalars(
        select(CustomerIdentity).where(CustomerIdentity.customer_id == merged_id)
    ):
        ident.customer_id = survivor_id
        moved["identities"] += 1
    for own in s.scalars(select(Ownership).where(Ownership.customer_id == merged_id)):
        own.customer_id = survivor_id
        moved["ownerships"] += 1
    for cp in s.scalars(select(Coupon).where(Coupon.holder_id == merged_id)):
        cp.holder_id = survivor_id
        moved["coupons"] += 1
    # Survivorship for membership: keep the higher totals, the survivor's tier history.
    m_old, m_new = s.get(Member, merged_id), s.get(Member, survivor_id)
    if m_old is not None:
        if m_new is None:
            s.add(
                Member(
                    customer_id=survivor_id,
                    tier=m_old.tier,
                    points=m_old.points,
                    visits=m_old.visits,
                    spend=m_old.spend,
                    tier_since=m_old.tier_since,
                )
            )
        else:
            m_new.points += m_old.points
            m_new.visits += m_old.visits
            m_new.spend = Decimal(m_new.spend) + Decimal(m_old.spend)
        s.delete(m_old)
    merged = s.get(Customer, merged_id)
    assert merged is not None
    merged.merged_into = survivor_id
    s.add(CustomerMerge(survivor_id=survivor_id, merged_id=merged_id, reason=reason, detail=moved))
    audit(s, "crm", "customer.merge", survivor_id, merged=merged_id, moved=moved)
    return survivor_id


def find_or_create_customer(
    s: Session, identities: Mapping[str, str], display_name: str = "", source: str = ""
) -> str:
    """The unified customer for these identities, creating or merging as needed.

    Survivorship: when identities point at several customers, the oldest survives and the others
    are merged into it (history kept in ``customer_merges``).
    """
    _check_identities(identities)
    found: list[Customer] = []
    for kind, value in identities.items():
        ident = s.scalar(
            select(CustomerIdentity).where(
                CustomerIdentity.kind == kind, CustomerIdentity.value == value
            )
        )
        if ident is not None:
            cust = s.get(Customer, resolve(s, ident.customer_id))
            if cust is not None and cust not in found:
                found.append(cust)
    if found:
        found.sort(key=lambda c: (c.created_at, c.id))
        survivor = found[0].id
        for other in found[1:]:
            merge_customers(s, survivor, other.id, reason=f"shared identity ({source or 'match'})")
    else:
        cust = Customer(display_name=display_name)
        s.add(cust)
        s.flush()
        survivor = cust.id
    for kind, value in identities.items():
        exists = s.scalar(
            select(CustomerIdentity).where(
                CustomerIdentity.kind == kind, CustomerIdentity.value == value
            )
        )
        if exists is None:
            s.add(CustomerIdentity(customer_id=survivor, kind=kind, value=value, source=source))
    s.flush()
    return survivor


# ----- vehicles and ownership --------------------------------------------------------------------
def transfer_ownership(s: Session, vin: str, customer_id: str, at: dt.datetime) -> None:
    """Close the current ownership at ``at`` and open the new owner's from ``at``."""
    customer_id = resolve(s, customer_id)
    current = s.scalar(select(Ownership).where(Ownership.vin == vin, Ownership.valid_to.is_(None)))
    if current is not None:
        if at <= current.valid_from:
            raise CrmError(
                f"ownership change at {at} is not after the current one ({current.valid_from})"
            )
        current.valid_to = at
    s.add(Ownership(vin=vin, customer_id=customer_id, valid_from=at))
    audit(s, "crm", "vehicle.ownership", vin, new_owner=customer_id, at=at.isoformat())


def ownership_at(s: Session, vin: str, at: dt.datetime) -> Ownership | None:
    """The ownership ``[valid_from, valid_to)`` that holds ``at`` (None: nobody owned it then)."""
    return s.scalar(
        select(Ownership).where(
            Ownership.vin == vin,
            Ownership.valid_from <= at,
            (Ownership.valid_to.is_(None)) | (Ownership.valid_to > at),
        )
    )


def owner_at(s: Session, vin: str, at: dt.datetime) -> str | None:
    row = ownership_at(s, vin, at)
    return None if row is None else resolve(s, row.customer_id)


def visible_windows(
    s: Session, vin: str, customer_id: str
) -> list[tuple[dt.datetime, dt.datetime | None]]:
    """The intervals of a vehicle's history a customer may see: only while they owned it."""
    customer_id = resolve(s, customer_id)
    rows = s.scalars(
        select(Ownership)
        .where(Ownership.vin == vin, Ownership.customer_id == customer_id)
        .order_by(Ownership.valid_from)
    )
    return [(r.valid_from, r.valid_to) for r in rows]


# ----- consent ------------------------------------------------------------------------------------
def set_consent(
    s: Session, customer_id: str, purpose: str, granted: bool, source: str = ""
) -> None:
    if purpose not in CONSENT_PURPOSES:
        raise CrmError(f"unknown consent purpose {purpose!r}; expected one of {CONSENT_PURPOSES}")
    customer_id = resolve(s, customer_id)
    s.add(Consent(customer_id=customer_id, purpose=purpose, granted=granted, source=source))
    audit(s, source or "crm", "consent." + ("grant" if granted else "revoke"), customer_id, purpose)


def consents_in_force(s: Session, customer_id: str, purposes: Sequence[str]) -> dict[str, bool]:
    """``has_consent`` now for each of ``purposes``, in one query."""
    customer_id = resolve(s, customer_id)
    rows = s.execute(
        select(Consent.purpose, Consent.granted)
        .where(Consent.customer_id == customer_id, Consent.purpose.in_(list(purposes)))
        .order_by(Consent.at, Consent.id)
    )
    latest = {p: False for p in purposes}
    for purpose, granted in rows:  # in time order: the last row of a purpose is in force
        latest[purpose] = bool(granted)
    return latest


def has_consent(s: Session, customer_id: str, purpose: str, at: dt.datetime | None = None) -> bool:
    customer_id = resolve(s, customer_id)
    q = select(Consent).where(Consent.customer_id == customer_id, Consent.purpose == purpose)
    if at is not None:
        q = q.where(Consent.at <= at)
    latest = s.scalar(q.order_by(Consent.at.desc(), Consent.id.desc()).limit(1))
    return bool(latest and latest.granted)


# ----- effects (exactly once) ---------------------------------------------------------------------
def effect_key(rule: str, subject: str, period: str) -> str:
    return f"{rule}|{subject}|{period}"


def claim_effect(
    s: Session,
    rule: str,
    subject: str,
    period: str,
    kind: str,
    payload: dict[str, Any] | None = None,
) -> bool:
    """Record an effect once: False if (rule, subject, period) already happened (nothing written)."""
    key = effect_key(rule, subject, period)
    if s.scalar(select(Effect.id).where(Effect.key == key)) is not None:
        return False
    try:
        with s.begin_nested():
            s.add(
                Effect(
                    key=key,
                    rule=rule,
                    subject=subject,
                    period=period,
                    kind=kind,
                    payload=payload or {},
                )
            )
    except IntegrityError:  # a concurrent writer won the race on the unique key
        return False
    return True


# ----- coupons ------------------------------------------------------------------------------------
LIVE = ("issued", "shared")  # the states a share or a redemption starts from


def issue_coupon(
    s: Session,
    template_code: str,
    customer_id: str,
    valid_until: dt.datetime,
    *,
    vin: str | None = None,
    effect: str | None = None,
) -> Coupon:
    if s.get(CouponTemplate, template_code) is None:
        raise CrmError(f"unknown coupon template {template_code!r}")
    customer_id = resolve(s, customer_id)
    coupon = Coupon(
        template_code=template_code,
        owner_id=customer_id,
        holder_id=customer_id,
        vin=vin,
        valid_until=valid_until,
        effect_key=effect,
    )
    s.add(coupon)
    s.flush()
    audit(s, "crm", "coupon.issue", coupon.id, customer=customer_id, template=template_code)
    return coupon


def share_coupon(
    s: Session, coupon_id: str, from_id: str, to_id: str, now: dt.datetime | None = None
) -> None:
    """Pass a coupon on: one conditional UPDATE (held by ``from_id``, still live), so a share
    racing a redemption or a void can never overwrite it; the chain gains a row."""
    now = now or utcnow()
    coupon = _coupon(s, coupon_id)
    from_id, to_id = resolve(s, from_id), resolve(s, to_id)
    template = s.get(CouponTemplate, coupon.template_code)
    if template is not None and not template.shareable:
        raise CouponStateError(f"coupon {coupon_id} ({coupon.template_code}) cannot be shared")
    result = s.execute(
        update(Coupon)
        .where(
            Coupon.id == coupon_id,
            Coupon.state.in_(LIVE),
            Coupon.holder_id == from_id,
            Coupon.valid_until >= now,
        )
        .values(holder_id=to_id, state="shared")
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        _refused(s, coupon_id, now, "be shared", from_id)
    s.refresh(coupon)
    s.add(CouponShare(coupon_id=coupon_id, from_id=from_id, to_id=to_id, at=now))
    audit(s, from_id, "coupon.share", coupon_id, to=to_id)


def mark_redeemed(s: Session, coupon_id: str, by_id: str, now: dt.datetime | None = None) -> Coupon:
    """Mark the coupon redeemed atomically: of two concurrent redemptions exactly one succeeds.
    ``crm.loyalty.redeem_coupon`` calls this and then grants the points."""
    now = now or utcnow()
    by_id = resolve(s, by_id)
    result = s.execute(
        update(Coupon)
        .where(
            Coupon.id == coupon_id,
            Coupon.state.in_(LIVE),
            Coupon.holder_id == by_id,
            Coupon.valid_until >= now,
        )
        .values(state="redeemed", redeemed_at=now, redeemed_by=by_id)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        _refused(s, coupon_id, now, "be redeemed", by_id)
    coupon = _coupon(s, coupon_id)
    s.refresh(coupon)
    audit(s, by_id, "coupon.redeem", coupon_id)
    return coupon


def expire_coupons(s: Session, now: dt.datetime | None = None) -> int:
    """Mark live coupons past their date as expired (each with an audit record); returns how
    many. Each coupon's UPDATE is conditional, so a coupon expires once, and a redemption that
    commits first wins."""
    now = now or utcnow()
    due = list(s.scalars(select(Coupon.id).where(Coupon.state.in_(LIVE), Coupon.valid_until < now)))
    n = 0
    for coupon_id in due:
        result = s.execute(
            update(Coupon)
            .where(Coupon.id == coupon_id, Coupon.state.in_(LIVE), Coupon.valid_until < now)
            .values(state="expired")
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            audit(s, "crm", "coupon.expire", coupon_id)
            n += 1
    return n


def _refused(s: Session, coupon_id: str, now: dt.datetime, what: str, who: str) -> NoReturn:
    """Why a conditional coupon UPDATE matched no row, as the error to raise."""
    coupon = _coupon(s, coupon_id)
    s.refresh(coupon)
    if coupon.state not in LIVE:
        raise CouponStateError(f"coupon {coupon_id} cannot {what}: it is {coupon.state}")
    if coupon.valid_until < now:
        raise CouponStateError(
            f"coupon {coupon_id} cannot {what}: it expired on {coupon.valid_until:%Y-%m-%d}"
        )
    raise CouponStateError(
        f"coupon {coupon_id} cannot {what} by {who}: it is not held by {who} "
        f"(it is held by {coupon.holder_id})"
    )


def _coupon(s: Session, coupon_id: str) -> Coupon:
    coupon = s.get(Coupon, coupon_id)
    if coupon is None:
        raise CrmError(f"unknown coupon {coupon_id!r}")
    return coupon
