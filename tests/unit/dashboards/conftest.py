"""A dashboard app on a fresh SQLite CRM with demo users and two dealers' vehicles."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from crm.migrate import upgrade
from crm.schema import Customer, Ownership, Vehicle
from crm.store import CrmStore
from dashboards.app import DashboardConfig, create_app
from dashboards.users import DEMO_PASSWORD, create_demo_users, seed_demo_crm

VIN_A = "CPDEM000000000001"  # dealer-a, location consent granted (even index)
VIN_A2 = "CPDEM000000000002"  # dealer-a, no location consent
VIN_B = "BBBB0000000000001"  # dealer-b


def make_store(path: Path) -> CrmStore:
    store = CrmStore.from_url(f"sqlite:///{path}")
    upgrade(store.engine)
    create_demo_users(store)
    seed_demo_crm(
        store, [(VIN_A, "demo-car-1", "DEMO001"), (VIN_A2, "demo-car-2", "DEMO002")], "dealer-a"
    )
    seed_demo_crm(store, [(VIN_B, "b-car-1", "BBB001")], "dealer-b")
    return store


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: argon2 hashing of the demo users is deliberately slow."""
    path = tmp_path_factory.mktemp("crm") / "crm.sqlite"
    store = make_store(path)
    store.engine.dispose()
    return path


@pytest.fixture
def app_store(tmp_path: Path, template_db: Path) -> tuple[Any, CrmStore]:
    shutil.copy(template_db, tmp_path / "crm.sqlite")
    store = CrmStore.from_url(f"sqlite:///{tmp_path / 'crm.sqlite'}")
    app = create_app(
        DashboardConfig(
            crm_url=f"sqlite:///{tmp_path / 'crm.sqlite'}",
            reveal_seconds=60,
            coupon_templates=["SERVICE10"],
        )
    )
    return app, store


@pytest.fixture
def client(app_store: tuple[Any, CrmStore]) -> Iterator[TestClient]:
    with TestClient(app_store[0], base_url="https://testserver") as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def login(c: TestClient, user: str, password: str = DEMO_PASSWORD) -> str:
    """Log in and return the session's CSRF token."""
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"username": user, "password": password, "csrf_token": token})
    assert r.status_code in (200, 303), r.text
    return csrf_of(c.get("/console" if user.startswith("agent") else "/").text)


def owner_of(store: CrmStore, vin: str) -> str:
    with store.tx() as s:
        row = s.query(Ownership).filter_by(vin=vin).one()
        return row.customer_id


def dealer_of(store: CrmStore, vin: str) -> str:
    with store.tx() as s:
        v = s.get(Vehicle, vin)
        assert v is not None
        cust = s.get(Customer, owner_of(store, vin))
        assert cust is not None and cust.dealer_id == v.dealer_id
        return v.dealer_id
