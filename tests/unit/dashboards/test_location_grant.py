"""A location grant is re-checked on every view: a withdrawal ends it (audited), and a fix from
before the current ownership is never shown (the console's ``located_view``)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from crm.schema import AuditRecord, Customer, utcnow
from crm.store import CrmStore, find_or_create_customer, set_consent, transfer_ownership
from dashboards.auth import SessionRow
from dashboards.console import located_view
from tests.unit.dashboards.conftest import VIN_A, login, owner_of


def audits(store: CrmStore, action: str) -> list[AuditRecord]:
    with store.tx() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def now_us() -> int:
    return int(time.time() * 1e6)


def test_located_view_needs_a_grant_and_a_fix_of_the_current_ownership() -> None:
    state = {"vin": VIN_A, "location": {"lat": 1.0, "lon": 2.0, "ts_us": 1000}}
    assert located_view(state, None)["location"] is None  # no grant
    assert located_view(state, 1001)["location"] is None  # taken before the ownership
    assert located_view(state, 1000)["location"] == state["location"]
    bad = {"vin": VIN_A, "location": {"lat": 1.0, "lon": 2.0, "ts_us": "1000"}}
    assert located_view(bad, 0)["location"] is None  # a malformed time is not shown


def test_a_withdrawal_ends_the_grant_at_the_next_view(
    client: TestClient, app_store: tuple[Any, CrmStore]
) -> None:
    app, store = app_store
    app.state.hub.put_state({"vin": VIN_A, "location": {"lat": 31.2, "lon": 121.5,
                                                        "ts_us": now_us()}})  # fmt: skip
    token = login(client, "agent")
    r = client.post(f"/console/vehicles/{VIN_A}/reveal",
                    data={"reason": "customer-request", "ticket": "T-77", "csrf_token": token})  # fmt: skip
    assert r.status_code == 200 and r.json()["location"]["lat"] == 31.2
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"]["lat"] == 31.2
    with store.tx() as s:
        set_consent(s, owner_of(store, VIN_A), "location", False, source="app")
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is None
    ended = audits(store, "location.grant.ended")
    assert [(a.actor, a.subject, a.detail["ticket"]) for a in ended] == [("agent", VIN_A, "T-77")]
    with store.tx() as s:  # the grant is gone from the session, not merely hidden
        grants = [row.grant for row in s.scalars(select(SessionRow))]
        assert grants and all(g is None for g in grants)
        set_consent(s, owner_of(store, VIN_A), "location", True, source="app")
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is None
    assert "31.2" not in client.get(f"/console/vehicles/{VIN_A}").text


def test_after_a_sale_the_sellers_last_fix_is_never_shown(
    client: TestClient, app_store: tuple[Any, CrmStore]
) -> None:
    app, store = app_store
    before = now_us() - 60_000_000
    app.state.hub.put_state({"vin": VIN_A, "location": {"lat": 30.0, "lon": 120.0,
                                                        "ts_us": before}})  # fmt: skip
    with store.tx() as s:
        buyer = find_or_create_customer(s, {"phone": "+8613900000088"}, "Buyer")
        cust = s.get(Customer, buyer)
        assert cust is not None
        cust.dealer_id = "dealer-a"
        transfer_ownership(s, VIN_A, buyer, utcnow() - dt.timedelta(seconds=30))
        set_consent(s, buyer, "location", True, source="app")
    token = login(client, "agent")
    r = client.post(f"/console/vehicles/{VIN_A}/reveal",
                    data={"reason": "customer-request", "ticket": "T-78", "csrf_token": token})  # fmt: skip
    assert r.status_code == 200 and r.json()["location"] is None
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is None
    app.state.hub.put_state({"vin": VIN_A, "location": {"lat": 30.5, "lon": 120.5,
                                                        "ts_us": now_us()}})  # fmt: skip
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"]["lat"] == 30.5
