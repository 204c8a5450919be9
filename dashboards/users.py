"""Demo users (one per role, two dealers) and a small demo CRM the dashboards can show."""

from __future__ import annotations

import datetime as dt
import zlib
from decimal import Decimal
from typing import Final

from crm import loyalty
from crm.schema import CouponTemplate, PlateAssignment, Vehicle
from crm.store import (
    CrmStore,
    find_or_create_customer,
    issue_coupon,
    set_consent,
    transfer_ownership,
)
from dashboards import auth

DEMO_PASSWORD: Final = "carpulse-demo"  # printed by `make demo`; never use outside the demo
DEMO_USERS: Final = (
    ("agent", "call_centre_agent", "dealer-a"),
    ("advisor", "service_advisor", "dealer-a"),
    ("admin", "dealer_admin", "dealer-a"),
    ("auditor", "auditor", "dealer-a"),
    ("agent-b", "call_centre_agent", "dealer-b"),
    ("platform", "platform_admin", "platform"),
)


def demo_phone(vin: str) -> str:
    return f"+86138{zlib.crc32(vin.encode()) % 10**8:08d}"


def demo_card(vin: str) -> str:
    return f"M{zlib.crc32(b'card' + vin.encode()) % 10**6:06d}"


def create_demo_users(store: CrmStore, password: str = DEMO_PASSWORD) -> list[str]:
    with store.tx() as s:
        for name, role, dealer in DEMO_USERS:
            auth.add_user(s, name, password, role, dealer)
    return [u[0] for u in DEMO_USERS]


# (days ago, CNY) of each demo owner's services, in turn: with crm/loyalty.yaml's rules (1 point
# per 10 CNY, tiers by the points of the last 365 days) 340 points: 银卡 silver; 1,050: 金卡 gold;
# 3,250: 白金卡 platinum. All within the year the demo owners have had their cars.
DEMO_SERVICES: Final = (
    ((250, 1800), (120, 1600)),
    ((330, 4200), (200, 3800), (60, 2500)),
    ((340, 12000), (210, 11000), (90, 9500)),
)


def seed_demo_crm(
    store: CrmStore, vehicles: list[tuple[str, str, str]], dealer_id: str = "dealer-a"
) -> None:
    """``vehicles``: ``(vin, device_id, plate)``; each gets an owner with a phone, a coupon and
    a service history closed through ``crm.loyalty.close_service`` (``DEMO_SERVICES``), whose
    points in the ledger give the owner's tier, so the hourly tier review agrees with it.

    Idempotent: vehicles already in the CRM are left as they are.
    """
    now = dt.datetime.now(dt.UTC)
    with store.tx() as s:
        if s.get(CouponTemplate, "SERVICE10") is None:
            s.add(CouponTemplate(code="SERVICE10", title_zh="保养九折", title_en="10% off service",
                                 value=Decimal(10), valid_days=60))  # fmt: skip
        for i, (vin, device, plate) in enumerate(vehicles):
            if s.get(Vehicle, vin) is not None:
                continue
            s.add(Vehicle(vin=vin, model="Prius (demo)", device_id=device, dealer_id=dealer_id))
            s.flush()
            s.add(PlateAssignment(vin=vin, plate=plate, valid_from=now - dt.timedelta(days=400)))
            cid = find_or_create_customer(
                s, {"phone": demo_phone(vin), "member_card": demo_card(vin)},
                display_name=f"Demo customer {i + 1}", source="demo",
            )  # fmt: skip
            from crm.schema import Customer

            cust = s.get(Customer, cid)
            assert cust is not None
            cust.dealer_id = dealer_id
            transfer_ownership(s, vin, cid, now - dt.timedelta(days=365))
            for k, (days_ago, amount) in enumerate(DEMO_SERVICES[i % 3]):
                loyalty.close_service(s, vin=vin, amount=amount, advisor="demo",
                                      at=now - dt.timedelta(days=days_ago), work="demo service",
                                      odometer_km=6_000 + 9_000 * k)  # fmt: skip
            set_consent(s, cid, "location", i % 2 == 0, source="demo")
            issue_coupon(s, "SERVICE10", cid, now + dt.timedelta(days=30), vin=vin)
