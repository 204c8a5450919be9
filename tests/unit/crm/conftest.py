"""CRM fixtures: a migrated store on SQLite and on a real PostgreSQL, and a seeded dealer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine

from crm import loyalty
from crm import store as st
from crm.migrate import upgrade
from crm.schema import CouponTemplate, PlateAssignment, Vehicle
from crm.tables import CustomerContact
from tests.conftest import new_postgres_database

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
VIN = "LSVAA4182E2123456"
VIN2 = "LSVAA4182E2654321"


def fresh_engine(request: pytest.FixtureRequest, tmp_path) -> Engine:  # type: ignore[no-untyped-def]
    """An empty database for a test parametrised "sqlite"/"postgresql" (a new PostgreSQL database)."""
    if request.param == "sqlite":
        return st.make_engine(f"sqlite:///{tmp_path / 'crm.sqlite'}")
    return st.make_engine(new_postgres_database(request.getfixturevalue("postgres_url")))


def migrated_engine(request: pytest.FixtureRequest, tmp_path) -> Engine:  # type: ignore[no-untyped-def]
    """A database at the CRM's head for a test parametrised "sqlite"/"postgresql" (a PostgreSQL
    one is copied from the session's migrated template; ``upgrade`` finds nothing to do there)."""
    if request.param == "sqlite":
        engine = st.make_engine(f"sqlite:///{tmp_path / 'crm.sqlite'}")
    else:
        base = request.getfixturevalue("postgres_url")
        engine = st.make_engine(
            new_postgres_database(base, request.getfixturevalue("postgres_migrated"))
        )
    upgrade(engine)
    return engine


def make_store(request: pytest.FixtureRequest, tmp_path) -> st.CrmStore:  # type: ignore[no-untyped-def]
    return st.CrmStore(migrated_engine(request, tmp_path))


@dataclass
class Dealer:
    store: st.CrmStore
    member: str  # member with marketing consent, e-mail, owns VIN (plate 沪A12345, device car-1)
    other: str  # non-member without consent, owns VIN2 (plate 沪B99999, device car-2)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def dealer(request: pytest.FixtureRequest, tmp_path) -> Iterator[Dealer]:  # type: ignore[no-untyped-def]
    store = make_store(request, tmp_path)
    with store.tx() as s:
        s.add(CouponTemplate(code="maintenance", title_zh="保养券", title_en="Service coupon",
                             value=300, valid_days=60))  # fmt: skip
        s.add(CouponTemplate(code="tier-welcome", title_zh="升级礼券", title_en="Welcome coupon",
                             value=100, valid_days=90))  # fmt: skip
        s.add(Vehicle(vin=VIN, model="Lavida", device_id="car-1"))
        s.add(Vehicle(vin=VIN2, model="Tiguan", device_id="car-2"))
        s.flush()
        s.add(PlateAssignment(vin=VIN, plate="沪A12345", valid_from=T0 - dt.timedelta(days=900)))
        s.add(PlateAssignment(vin=VIN2, plate="沪B99999", valid_from=T0 - dt.timedelta(days=900)))
        member = st.find_or_create_customer(s, {"phone": "+8613800000001"}, "王先生")
        other = st.find_or_create_customer(s, {"phone": "+8613800000002"}, "李女士")
        st.transfer_ownership(s, VIN, member, T0 - dt.timedelta(days=800))
        st.transfer_ownership(s, VIN2, other, T0 - dt.timedelta(days=800))
        loyalty.record_visit(s, member, spend=500)
        st.set_consent(s, member, "marketing", True, source="app")
        s.add(CustomerContact(customer_id=member, email="wang@example.com", lang="zh-CN"))
    yield Dealer(store, member, other)
    store.engine.dispose()
