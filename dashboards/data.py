"""CRM reads for the screens (search, vehicle and customer cards, coupons), dealer-scoped.

Every read takes the user's ``dealer_id``: a vehicle or customer of another dealer is "not found"
for the caller, whatever they typed (``DealerScopeError`` when they asked for it by VIN).
The inbox is the CRM's (``crm.delivery``: ``inbox_items``); this module only draws its cards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import CrmError, DealerScopeError
from crm.schema import (
    Coupon,
    CouponTemplate,
    Customer,
    CustomerIdentity,
    Member,
    Ownership,
    PlateAssignment,
    Vehicle,
)
from crm.store import resolve


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
    card = VehicleCard(vin, v.model, v.device_id, v.dealer_id, _current_plate(s, vin), None, "",
                       None, None, 0)  # fmt: skip
    cid = _current_owner(s, vin)
    if cid is not None:
        _fill_customer(s, card, cid, dealer_id)
    return card


def customer_card(s: Session, customer_id: str, dealer_id: str) -> VehicleCard:
    """A card for a customer without a known vehicle (an arrival by face or by a plate on file)."""
    card = VehicleCard("", "", None, dealer_id, None, None, "", None, None, 0)
    _fill_customer(s, card, resolve(s, customer_id), dealer_id)
    return card


def _fill_customer(s: Session, card: VehicleCard, cid: str, dealer_id: str) -> None:
    cust = s.get(Customer, cid)
    if cust is None:
        raise CrmError(f"unknown customer {cid!r}")
    if cust.dealer_id != dealer_id:
        raise DealerScopeError(f"customer {cid} is another dealer's customer")
    card.customer_id, card.customer_name = cid, cust.display_name
    card.phone = s.scalar(
        select(CustomerIdentity.value).where(
            CustomerIdentity.customer_id == cid, CustomerIdentity.kind == "phone"
        )
    )
    m = s.get(Member, cid)
    if m is not None:
        card.tier, card.points = m.tier, m.points
    for c in s.scalars(
        select(Coupon).where(Coupon.holder_id == cid).order_by(Coupon.issued_at.desc())
    ):
        t = s.get(CouponTemplate, c.template_code)
        card.coupons.append(
            {
                "id": c.id,
                "title": t.title_en if t else c.template_code,
                "state": c.state,
                "valid_until": c.valid_until.date().isoformat(),
            }
        )


def search(s: Session, query: str, dealer_id: str, limit: int = 20) -> list[VehicleCard]:
    """Vehicles matching a VIN (prefix), plate, phone or member id / card, of this dealer only.

    The VIN prefix is a literal: ``%`` and ``_`` are escaped, never LIKE wildcards."""
    q = query.strip().upper()
    if not q:
        return []
    vins: list[str] = []
    vins += s.scalars(
        select(Vehicle.vin).where(Vehicle.vin.startswith(q, autoescape=True)).limit(limit)
    ).all()
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
