"""CRM reads for the screens (search, customer card, coupons) and the advisor inbox table, dealer-scoped.

Every read takes the user's ``dealer_id``: a vehicle or customer of another dealer is "not found"
for the caller, whatever they typed (``DealerScopeError`` when they asked for it by VIN).
The inbox (``advisor_inbox``) holds maintenance predictions, DTC routings and gate arrivals fed by
``dashboards.live``; acting on an item is audited in the CRM audit log.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import JSON, DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from crm.models import (
    Appointment,
    Coupon,
    CouponTemplate,
    Customer,
    CustomerIdentity,
    Member,
    Ownership,
    PlateAssignment,
    Vehicle,
)
from crm.store import CrmError, audit, issue_coupon, resolve
from dashboards.auth import UserBase

INBOX_KINDS: Final = ("maintenance", "dtc", "gate")
INBOX_STATES: Final = ("new", "acknowledged", "booked", "coupon_issued")


class DealerScopeError(CrmError):
    """The vehicle or customer belongs to another dealer."""


class InboxItem(UserBase):
    __tablename__ = "advisor_inbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    vin: Mapped[str] = mapped_column(String(17), index=True)
    dealer_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="new")
    # Natural key so that a repeated prediction or arrival updates one row instead of piling up.
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: dt.datetime.now(dt.UTC)
    )


@dataclass
class VehicleCard:
    vin: str
    model: str
    device_id: str | None
    dealer_id: str
    plate: str | None
    customer_id: str | None
    customer_name: str
    phone: str | None
    tier: str | None
    points: int
    coupons: list[dict[str, Any]] = field(default_factory=list)


def _current_plate(s: Session, vin: str) -> str | None:
    row = s.scalar(
        select(PlateAssignment).where(
            PlateAssignment.vin == vin, PlateAssignment.valid_to.is_(None)
        )
    )
    return row.plate if row else None


def _current_owner(s: Session, vin: str) -> str | None:
    row = s.scalar(select(Ownership).where(Ownership.vin == vin, Ownership.valid_to.is_(None)))
    return resolve(s, row.customer_id) if row else None


def vehicle_card(s: Session, vin: str, dealer_id: str) -> VehicleCard:
    """The console's card of one vehicle; refuses another dealer's vehicle."""
    v = s.get(Vehicle, vin)
    if v is None:
        raise CrmError(f"unknown vehicle {vin!r}")
    if v.dealer_id != dealer_id:
        raise DealerScopeError(f"vehicle {vin} is not one of dealer {dealer_id}'s vehicles")
    cid = _current_owner(s, vin)
    name, phone, tier, points, coupons = "", None, None, 0, []
    if cid is not None:
        cust = s.get(Customer, cid)
        if cust is not None and cust.dealer_id != dealer_id:
            raise DealerScopeError(f"the owner of {vin} is another dealer's customer")
        name = cust.display_name if cust else ""
        phone = s.scalar(
            select(CustomerIdentity.value).where(
                CustomerIdentity.customer_id == cid, CustomerIdentity.kind == "phone"
            )
        )
        m = s.get(Member, cid)
        if m is not None:
            tier, points = m.tier, m.points
        for c in s.scalars(
            select(Coupon).where(Coupon.holder_id == cid).order_by(Coupon.issued_at.desc())
        ):
            t = s.get(CouponTemplate, c.template_code)
            coupons.append(
                {
                    "id": c.id,
                    "title": t.title_en if t else c.template_code,
                    "state": c.state,
                    "valid_until": c.valid_until.date().isoformat(),
                }
            )
    return VehicleCard(
        vin, v.model, v.device_id, v.dealer_id, _current_plate(s, vin), cid, name, phone, tier,
        points, coupons,
    )  # fmt: skip


def search(s: Session, query: str, dealer_id: str, limit: int = 20) -> list[VehicleCard]:
    """Vehicles matching a VIN (prefix), plate, phone or member id / card, of this dealer only."""
    q = query.strip().upper()
    if not q:
        return []
    vins: list[str] = []
    vins += s.scalars(select(Vehicle.vin).where(Vehicle.vin.like(f"{q}%")).limit(limit)).all()
    vins += s.scalars(select(PlateAssignment.vin).where(PlateAssignment.plate == q)).all()
    customers = set(
        s.scalars(
            select(CustomerIdentity.customer_id).where(
                CustomerIdentity.kind.in_(("phone", "member_card")),
                CustomerIdentity.value.in_((query.strip(), q)),
            )
        ).all()
    )
    if s.get(Member, query.strip()) is not None:
        customers.add(query.strip())
    for cid in customers:
        vins += s.scalars(
            select(Ownership.vin).where(
                Ownership.customer_id == resolve(s, cid), Ownership.valid_to.is_(None)
            )
        ).all()
    out: list[VehicleCard] = []
    for vin in dict.fromkeys(vins):
        try:
            out.append(vehicle_card(s, vin, dealer_id))
        except DealerScopeError:
            continue  # another dealer's vehicle is simply not a result
        if len(out) >= limit:
            break
    return out


# ----- inbox -------------------------------------------------------------------------------------
def upsert_inbox(
    s: Session, kind: str, vin: str, dedupe_key: str, payload: dict[str, Any]
) -> InboxItem | None:
    """Add or refresh an item for the vehicle's dealer; None when the VIN is not in the CRM."""
    if kind not in INBOX_KINDS:
        raise ValueError(f"unknown inbox kind {kind!r}")
    v = s.get(Vehicle, vin)
    if v is None:
        return None
    item = s.scalar(select(InboxItem).where(InboxItem.dedupe_key == dedupe_key))
    if item is None:
        item = InboxItem(
            kind=kind, vin=vin, dealer_id=v.dealer_id, dedupe_key=dedupe_key, payload=payload
        )
        s.add(item)
    else:
        item.payload = payload
    s.flush()
    return item


def inbox(s: Session, dealer_id: str, limit: int = 100) -> list[InboxItem]:
    return list(
        s.scalars(
            select(InboxItem)
            .where(InboxItem.dealer_id == dealer_id)
            .order_by(InboxItem.state != "new", InboxItem.created_at.desc())
            .limit(limit)
        )
    )


def _item(s: Session, item_id: int, dealer_id: str) -> InboxItem:
    item = s.get(InboxItem, item_id)
    if item is None or item.dealer_id != dealer_id:
        raise DealerScopeError(f"inbox item {item_id} is not one of dealer {dealer_id}'s")
    return item


def acknowledge(s: Session, item_id: int, user: str, dealer_id: str) -> None:
    item = _item(s, item_id, dealer_id)
    item.state = "acknowledged"
    audit(s, user, "inbox.acknowledge", item.vin, "service", item=item_id, kind=item.kind)


def book_appointment(
    s: Session, item_id: int, at: dt.datetime, user: str, dealer_id: str
) -> Appointment:
    item = _item(s, item_id, dealer_id)
    cid = _current_owner(s, item.vin)
    if cid is None:
        raise CrmError(f"vehicle {item.vin} has no current owner to book for")
    appt = Appointment(vin=item.vin, customer_id=cid, at=at, kind=item.kind, created_by=user)
    s.add(appt)
    s.flush()
    item.state = "booked"
    audit(s, user, "inbox.book", item.vin, "service", item=item_id, appointment=appt.id,
          at=at.isoformat())  # fmt: skip
    return appt


def issue_item_coupon(s: Session, item_id: int, template: str, user: str, dealer_id: str) -> Coupon:
    """Issue a coupon to the vehicle's owner through the CRM (once per item and template)."""
    item = _item(s, item_id, dealer_id)
    cid = _current_owner(s, item.vin)
    if cid is None:
        raise CrmError(f"vehicle {item.vin} has no current owner")
    t = s.get(CouponTemplate, template)
    if t is None:
        raise CrmError(f"unknown coupon template {template!r}")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=t.valid_days)
    coupon = issue_coupon(
        s, template, cid, until, vin=item.vin, effect=f"inbox|{item_id}|{template}"
    )
    item.state = "coupon_issued"
    audit(s, user, "inbox.coupon", item.vin, "service", item=item_id, coupon=coupon.id)
    return coupon
