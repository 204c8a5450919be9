"""A simulated dealer for demos and benchmarks: vehicles, owners, members, and service-due
predictions from the real maintenance model (``models.maintenance.service``) over simulated
odometer readings, published as ``carpulse.predictions`` records."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import numpy as np
from sqlalchemy import select

from core.crm_events import CrmEvent
from crm import loyalty
from crm import store as st
from crm.normalize import from_prediction
from crm.schema import CouponTemplate, Customer, PlateAssignment, Vehicle
from crm.tables import CustomerContact
from models.maintenance.service import Schedule, UsageState, predict_service, update_usage

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# (days ago, CNY) per member profile: 80 points; 340; 1,050; 3,250 in the last year (+900 before)
SERVICE_HISTORIES = (
    ((300, 800),),
    ((250, 1800), (120, 1600)),
    ((330, 4200), (200, 3800), (60, 2500)),
    ((500, 9000), (340, 12000), (210, 11000), (90, 9500)),
)


def demo_vins(n: int) -> list[str]:
    return [f"LSIMDEMO{i:09d}" for i in range(n)]


def demo_devices(n: int) -> list[str]:
    """The device ids of ``carpulse demo``'s simulated fleet (``demo-car-1``...)."""
    return [f"demo-car-{i + 1}" for i in range(n)]


def seed_demo(
    store: st.CrmStore,
    n_vehicles: int,
    start: dt.datetime = START,
    devices: list[str] | None = None,
    vins: list[str] | None = None,
    dealer_id: str | None = None,
) -> list[str]:
    """Coupon templates, ``n_vehicles`` cars with plates and owners; every second owner (the
        first, third...) is a member with marketing consent, an e-mail address and a service history
    whose points give their tier (``SERVICE_HISTORIES``). Car ``i`` carries
        device ``devices[i]`` (default ``demo-car-{i+1}``, the live demo's fleet; a device already
        installed in another vehicle is left there). Idempotent on the VINs (default
        ``demo_vins``)."""
    vins = vins or demo_vins(n_vehicles)
    devices = devices or demo_devices(n_vehicles)
    with store.tx() as s:
        for code, zh, en, value, days in (
            ("maintenance", "保养优惠券", "Service coupon", 300, 60),
            ("tier-welcome", "升级礼券", "Welcome coupon", 100, 90),
        ):
            if s.get(CouponTemplate, code) is None:
                s.add(CouponTemplate(code=code, title_zh=zh, title_en=en, value=Decimal(value),
                                     valid_days=days))  # fmt: skip
        for i, vin in enumerate(vins):
            if s.get(Vehicle, vin) is not None:
                continue
            taken = s.scalar(select(Vehicle.vin).where(Vehicle.device_id == devices[i]))
            car = Vehicle(vin=vin, model=("Lavida", "Tiguan", "ID.4")[i % 3],
                          device_id=None if taken else devices[i])  # fmt: skip
            if dealer_id is not None:
                car.dealer_id = dealer_id
            s.add(car)
            s.flush()
            s.add(
                PlateAssignment(
                    vin=vin, plate=f"沪D{i:05d}", valid_from=start - dt.timedelta(days=700)
                )
            )
            cid = st.find_or_create_customer(s, {"phone": f"+86139{i:08d}"}, f"车主{i}")
            if dealer_id is not None:
                customer = s.get(Customer, cid)
                if customer is not None:
                    customer.dealer_id = dealer_id
            st.transfer_ownership(s, vin, cid, start - dt.timedelta(days=700))
            if i % 2 == 0:
                # a workshop history: the points of its services make the member's tier
                # (crm.loyalty: standard, silver, gold, platinum in turn)
                for k, (days_ago, amount) in enumerate(SERVICE_HISTORIES[(i // 2) % 4]):
                    loyalty.close_service(s, vin=vin, amount=amount, advisor="demo",
                                          at=st.utcnow() - dt.timedelta(days=days_ago),
                                          odometer_km=8_000 + 9_000 * k, work="demo service")  # fmt: skip
                st.set_consent(s, cid, "marketing", True, source="demo")
                if s.get(CustomerContact, cid) is None:  # an owner of several demo cars
                    s.add(CustomerContact(customer_id=cid, email=f"owner{i}@example.com",
                                          lang="en" if i % 4 == 0 else "zh-CN"))  # fmt: skip
    return vins


def registry_of(store: st.CrmStore, devices: list[str]) -> dict[str, str]:
    """Device id -> VIN of the vehicles these devices are installed in (the stream's registry)."""
    with store.tx() as s:
        rows = s.execute(
            select(Vehicle.device_id, Vehicle.vin).where(Vehicle.device_id.in_(devices))
        )
        return {str(d): str(v) for d, v in rows}


def simulated_predictions(
    vins: list[str], days: int, start: dt.datetime = START, seed: int = 0
) -> list[CrmEvent]:
    """One ``service_due`` prediction per vehicle per day, from the maintenance model fed with
    simulated daily odometer readings (10,000 km / 365-day schedule)."""
    rng = np.random.default_rng(seed)
    n = len(vins)
    state = UsageState.empty(n)
    slots = np.arange(n, dtype=np.int64)
    day0 = int(start.timestamp() // 86_400)
    daily_km = rng.gamma(4.0, 12.0, size=n)  # 48 km/day on average, some much more
    last_odo = rng.uniform(5_000, 60_000, size=n)
    # how far into the service interval each car is at the start
    odo = last_odo + rng.uniform(0, 9_000, size=n)
    last_day = day0 - rng.integers(30, 330, size=n)
    schedule = Schedule(km=10_000.0, days=365.0)
    out: list[CrmEvent] = []
    for d in range(days):
        odo = odo + daily_km * rng.uniform(0.3, 1.7, size=n)
        update_usage(state, slots, np.full(n, day0 + d), odo, np.full(n, np.nan))
        if d < 3:
            continue  # the model needs a few closed days for a mean
        due = predict_service(state, schedule, day0 + d, last_day.astype(np.float64), last_odo)
        ts_us = int((start + dt.timedelta(days=d, hours=23)).timestamp() * 1e6)
        for i, vin in enumerate(vins):
            rec = {"vin": vin, "kind": "service_due", "ts_us": ts_us, "days": float(due.days[i]),
                   "km": float(due.km[i]), "odo": float(odo[i]), "cycle": f"s{int(last_day[i])}"}  # fmt: skip
            out += from_prediction(json.dumps(rec).encode())
    return out
