"""The CRM schema (SQLAlchemy 2): customers and their identities, vehicles and time-bounded ownership,
members and tiers, consent, coupons and their share chain, appointments, effects and the audit log.

Time columns are timezone-aware UTC. Every table has a migration in ``crm/migrations``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores aware UTC datetimes; SQLite gives them back naive, this makes them aware again."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass timezone-aware UTC times")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return uuid.uuid4().hex


IDENTITY_KINDS = ("phone", "wechat_openid", "member_card", "plate")
CONSENT_PURPOSES = ("location", "face", "marketing")
COUPON_STATES = ("issued", "shared", "redeemed", "expired", "voided")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime()}


class Customer(Base):
    """One person with one unified id; a merged-away customer points at its survivor."""

    __tablename__ = "customers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    dealer_id: Mapped[str] = mapped_column(String(64), default="default", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    merged_into: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), default=None)
    erased_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class CustomerIdentity(Base):
    """A way to recognise a customer: phone, WeChat openid, member card or plate."""

    __tablename__ = "customer_identities"
    __table_args__ = (
        UniqueConstraint("kind", "value", name="uq_identity_kind_value"),
        CheckConstraint(f"kind IN {IDENTITY_KINDS!r}", name="ck_identity_kind"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(String(128))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CustomerMerge(Base):
    """Merge history: ``merged_id`` was folded into ``survivor_id``."""

    __tablename__ = "customer_merges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    survivor_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    merged_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    reason: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Vehicle(Base):
    __tablename__ = "vehicles"
    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), default="")
    model_year: Mapped[int | None] = mapped_column(Integer, default=None)  # migration 0006
    device_id: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    dealer_id: Mapped[str] = mapped_column(String(64), default="default", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PlateAssignment(Base):
    """Plate history of a vehicle: ``valid_to`` is None for the current plate."""

    __tablename__ = "plate_assignments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"), index=True)
    plate: Mapped[str] = mapped_column(String(16), index=True)
    valid_from: Mapped[dt.datetime] = mapped_column(default=utcnow)
    valid_to: Mapped[dt.datetime | None] = mapped_column(default=None)


class Ownership(Base):
    """Who owned a vehicle when: ``[valid_from, valid_to)``; ``valid_to`` None = current owner."""

    __tablename__ = "ownerships"
    __table_args__ = (Index("ix_ownership_vin_from", "vin", "valid_from"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    valid_from: Mapped[dt.datetime] = mapped_column()
    valid_to: Mapped[dt.datetime | None] = mapped_column(default=None)


class Member(Base):
    __tablename__ = "members"
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    tier: Mapped[str] = mapped_column(String(32))
    points: Mapped[int] = mapped_column(Integer, default=0)
    visits: Mapped[int] = mapped_column(Integer, default=0)
    spend: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal(0))
    tier_since: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TierChange(Base):
    __tablename__ = "tier_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    from_tier: Mapped[str | None] = mapped_column(String(32))
    to_tier: Mapped[str] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(String(200), default="")


class Consent(Base):
    """Consent history per purpose; the latest row for (customer, purpose) is in force."""

    __tablename__ = "consents"
    __table_args__ = (
        CheckConstraint(f"purpose IN {CONSENT_PURPOSES!r}", name="ck_consent_purpose"),
        Index("ix_consent_customer_purpose_at", "customer_id", "purpose", "at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    purpose: Mapped[str] = mapped_column(String(20))
    granted: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(64), default="")


class CouponTemplate(Base):
    __tablename__ = "coupon_templates"
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    title_zh: Mapped[str] = mapped_column(String(200))
    title_en: Mapped[str] = mapped_column(String(200))
    value: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal(0))
    valid_days: Mapped[int] = mapped_column(Integer, default=30)
    shareable: Mapped[bool] = mapped_column(Boolean, default=True)


class Coupon(Base):
    """A coupon instance: issued -> shared -> redeemed / expired / voided."""

    __tablename__ = "coupons"
    __table_args__ = (CheckConstraint(f"state IN {COUPON_STATES!r}", name="ck_coupon_state"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    template_code: Mapped[str] = mapped_column(ForeignKey("coupon_templates.code"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    holder_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    vin: Mapped[str | None] = mapped_column(ForeignKey("vehicles.vin"), default=None)
    state: Mapped[str] = mapped_column(String(16), default="issued")
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    valid_until: Mapped[dt.datetime] = mapped_column()
    redeemed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    redeemed_by: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), default=None)
    effect_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)


class CouponShare(Base):
    """The share chain: who passed a coupon to whom (append-only, like the audit log)."""

    __tablename__ = "coupon_shares"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"), index=True)
    from_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    to_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Appointment(Base):
    __tablename__ = "appointments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    at: Mapped[dt.datetime] = mapped_column()
    kind: Mapped[str] = mapped_column(String(64), default="service")
    state: Mapped[str] = mapped_column(String(16), default="booked")
    created_by: Mapped[str] = mapped_column(String(64), default="")


class Effect(Base):
    """Every action a rule takes, once: the idempotency key (rule, subject, period) is unique."""

    __tablename__ = "effects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    rule: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditRecord(Base):
    """Append-only: updates and deletes are refused (see crm.store); each row carries the hash of
    its predecessor (``crm.audit``) and the dealer it concerns (None: the platform's)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dealer_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    row_hash: Mapped[str] = mapped_column(String(64))
