"""CRM tables added by migration 0002 (rule firings, inbox, outbox, parked events, contacts, personal
data), 0006 (dealer-system references, service history), 0007 (enrolled gate cameras), 0008 (the
points ledger) and 0009 (member-page sessions)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from crm.schema import Base, utcnow

INBOX_ROLES = ("advisor", "call_centre", "expert")
OUTBOX_STATES = ("pending", "sent", "dead")


class RuleFiring(Base):
    """One effect of a rule at *event* time, for cool-downs and per-customer rate limits.

    ``effects.created_at`` is wall-clock time; a replay needs the time of the event instead.
    """

    __tablename__ = "rule_firings"
    __table_args__ = (
        Index("ix_firing_rule_subject_at", "rule", "subject", "at"),
        Index("ix_firing_customer_group_at", "customer_id", "rate_group", "at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    effect_key: Mapped[str] = mapped_column(ForeignKey("effects.key"), unique=True)
    rule: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str | None] = mapped_column(String(32), default=None)
    rate_group: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column()


class InboxItem(Base):
    """A card in the dashboard inbox of a role (service advisor, call centre, expert)."""

    __tablename__ = "inbox_items"
    __table_args__ = (
        CheckConstraint(f"role IN {INBOX_ROLES!r}", name="ck_inbox_role"),
        Index("ix_inbox_role_open", "role", "done_at", "priority"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    role: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=5)  # 0 = top
    kind: Mapped[str] = mapped_column(String(32))
    vin: Mapped[str | None] = mapped_column(String(17), default=None)
    customer_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    lang: Mapped[str] = mapped_column(String(8), default="zh-CN")
    effect_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    done_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class OutboxMessage(Base):
    """A message to deliver (webhook or e-mail), written in the effect's transaction.

    Delivery is at least once with the effect key as idempotency key; ``dead`` is the dead letter.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(f"state IN {OUTBOX_STATES!r}", name="ck_outbox_state"),
        Index("ix_outbox_state_next", "state", "next_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))  # webhook | email
    target: Mapped[str] = mapped_column(String(300))
    effect_key: Mapped[str] = mapped_column(String(200))
    customer_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    subject: Mapped[str] = mapped_column(String(300), default="")
    body: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(8), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ParkedEvent(Base):
    """An event the CRM could not place yet (unknown VIN or device): kept and retried.

    Retries stop after ``crm.jobs.PARK_MAX_AGE`` / ``PARK_MAX_ATTEMPTS``, and a key (VIN, device,
    plate) keeps at most ``PARK_MAX_PER_KEY`` open events: the rest are dead-lettered (``dead_at``
    set, the row kept for inspection, the event sent to the dead-letter topic by the worker).
    """

    __tablename__ = "parked_events"
    __table_args__ = (Index("ix_parked_open", "resolved_at", "next_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64), default="", index=True)  # VIN, device or plate
    reason: Mapped[str] = mapped_column(String(300))
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    next_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    dead_at: Mapped[dt.datetime | None] = mapped_column(default=None)  # migration 0003


class CustomerContact(Base):
    """How to reach a customer: e-mail, language (zh-CN or en), optional webhook."""

    __tablename__ = "customer_contacts"
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254), default=None)
    lang: Mapped[str] = mapped_column(String(8), default="zh-CN")
    webhook: Mapped[str | None] = mapped_column(String(300), default=None)


class LocationFix(Base):
    """A vehicle position kept by the CRM (last known place for the call centre): needs consent."""

    __tablename__ = "location_fixes"
    __table_args__ = (Index("ix_location_vin_at", "vin", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17))
    customer_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    at: Mapped[dt.datetime] = mapped_column()
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(64), default="")


class GateSighting(Base):
    """A plate (and, with face consent only, a face match) seen at the dealer gate."""

    __tablename__ = "gate_sightings"
    __table_args__ = (Index("ix_gate_at", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column()
    camera: Mapped[str] = mapped_column(String(64), default="")
    plate: Mapped[str | None] = mapped_column(String(16), default=None)
    vin: Mapped[str | None] = mapped_column(String(17), default=None)
    customer_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    face_customer_id: Mapped[str | None] = mapped_column(String(32), default=None)


class CustomerRef(Base):
    """A dealer system's own key for a customer (``customer_ref`` of a DMS export), per dealer:
    what makes importing the same export twice change nothing (migration 0006)."""

    __tablename__ = "customer_refs"
    __table_args__ = (UniqueConstraint("dealer_id", "ref", name="uq_customer_ref"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dealer_id: Mapped[str] = mapped_column(String(64))
    ref: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ServiceRecord(Base):
    """A workshop visit from the dealer's history: one per vehicle and day (migration 0006).

    The latest one per vehicle is where the next service interval starts (``carpulse registry
    export`` hands it to the stream's service-due model)."""

    __tablename__ = "service_records"
    __table_args__ = (UniqueConstraint("vin", "service_date", name="uq_service_vin_date"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"), index=True)
    service_date: Mapped[dt.date] = mapped_column(Date)
    odometer_km: Mapped[float] = mapped_column(Float)
    work: Mapped[str] = mapped_column(Text, default="")
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2), default=None)
    source: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class GateDevice(Base):
    """A dealer gate camera enrolled with ``carpulse devices enroll --gate`` (migration 0007):
    ``carpulse registry export`` names it with ``role = "gate"``, so its gate events count."""

    __tablename__ = "gate_devices"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dealer_id: Mapped[str] = mapped_column(String(64), default="default")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MemberSession(Base):
    """A customer's session on the mobile member page (migration 0009), opened by a signed
    sign-in link (``crm.member_links``). Only a SHA-256 of the cookie's token is stored; a row
    with ``ended_at`` set also retires the link that opened it (no sign-in again after logout)."""

    __tablename__ = "member_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    link_nonce: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    ended_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class PointsEntry(Base):
    """The points ledger (migration 0008): append-only like the audit log, one row per change.

    ``source`` names what earned the points (``service:<record id>``, ``redeem:<coupon id>``,
    ``referral:<coupon id>``...); ``(source, seq)`` is unique, so a source's points are granted
    once however often its record is imported or its event replayed, and a corrected amount
    adds a row with the difference (``crm.loyalty.grant``). ``at`` is when the activity happened
    (what the tier window counts), ``created_at`` when it was written."""

    __tablename__ = "points_ledger"
    __table_args__ = (
        UniqueConstraint("source", "seq", name="uq_points_source_seq"),
        Index("ix_points_customer_at", "customer_id", "at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    source: Mapped[str] = mapped_column(String(120))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16))  # service | redemption | referral | adjustment
    delta: Mapped[int] = mapped_column(Integer)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2), default=None)
    at: Mapped[dt.datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
