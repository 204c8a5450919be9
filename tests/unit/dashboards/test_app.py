"""The dashboard app through HTTP: login, cookies, CSRF, XSS, dealer scope, location reveal, inbox."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from crm.models import AuditRecord, Coupon, Customer
from crm.store import CrmStore
from dashboards.data import InboxItem, upsert_inbox
from dashboards.inbox import evidence_svg
from dashboards.live import public_view
from dashboards.users import demo_card, demo_phone
from tests.unit.dashboards.conftest import VIN_A, VIN_A2, VIN_B, csrf_of, dealer_of, login, owner_of


def audits(store: CrmStore, action: str) -> list[AuditRecord]:
    with store.tx() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def test_login_sets_strict_httponly_secure_cookie_and_rotates_session(client: TestClient) -> None:
    first = client.get("/login")
    pre = client.cookies.get("carpulse_session")
    cookie = first.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie
    r = client.post(
        "/login",
        data={"username": "agent", "password": "carpulse-demo", "csrf_token": csrf_of(first.text)},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert client.cookies.get("carpulse_session") != pre  # no session fixation
    assert client.get("/console").status_code == 200


def test_wrong_password_is_refused_and_audited(client: TestClient, app_store: Any) -> None:
    token = csrf_of(client.get("/login").text)
    r = client.post(
        "/login", data={"username": "agent", "password": "nope-nope", "csrf_token": token}
    )
    assert r.status_code == 401
    assert client.get("/console", headers={"accept": "application/json"}).status_code == 401
    assert [a.actor for a in audits(app_store[1], "login.failed")] == ["agent"]


def test_csrf_token_is_required_on_every_post(client: TestClient) -> None:
    client.get("/login")
    r = client.post("/login", data={"username": "agent", "password": "carpulse-demo"})
    assert r.status_code == 403
    token = login(client, "agent")
    data = {"reason": "emergency", "ticket": "T-1"}
    assert client.post(f"/console/vehicles/{VIN_A}/reveal", data=data).status_code == 403
    bad = {**data, "csrf_token": token[:-2] + "xx"}
    assert client.post(f"/console/vehicles/{VIN_A}/reveal", data=bad).status_code == 403
    ok = client.post(
        f"/console/vehicles/{VIN_A}/reveal", data=data, headers={"x-csrf-token": token}
    )
    assert ok.status_code == 200


def test_search_by_vin_plate_phone_member_card(client: TestClient) -> None:
    login(client, "agent")
    for q in (VIN_A[:8], "DEMO001", demo_phone(VIN_A), demo_card(VIN_A)):
        html = client.get("/console", params={"q": q}).text
        assert f"/console/vehicles/{VIN_A}" in html, q
    # htmx asks for the fragment only
    frag = client.get("/console", params={"q": "DEMO002"}, headers={"hx-request": "true"}).text
    assert "<html" not in frag and VIN_A2 in frag


def test_customer_data_is_escaped_not_executed(client: TestClient, app_store: Any) -> None:
    store = app_store[1]
    with store.tx() as s:
        cust = s.get(Customer, owner_of(store, VIN_A))
        assert cust is not None
        cust.display_name = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    login(client, "agent")
    for html in (client.get("/console", params={"q": "DEMO001"}).text,
                 client.get(f"/console/vehicles/{VIN_A}").text):  # fmt: skip
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "script-src 'self'" in client.get("/console").headers["content-security-policy"]


def test_another_dealers_vehicle_is_refused_and_audited(client: TestClient, app_store: Any) -> None:
    assert dealer_of(app_store[1], VIN_B) == "dealer-b"
    token = login(client, "agent")
    assert client.get(f"/console/vehicles/{VIN_B}").status_code == 403
    assert client.get(f"/console/vehicles/{VIN_B}/state").status_code == 403
    assert client.get("/console/events", params={"vin": VIN_B}).status_code == 403
    r = client.post(f"/console/vehicles/{VIN_B}/reveal",
                    data={"reason": "emergency", "ticket": "T-9", "csrf_token": token})  # fmt: skip
    assert r.status_code == 403
    assert VIN_B not in client.get("/console", params={"q": "BBB001"}).text
    denied = audits(app_store[1], "vehicle.denied")
    assert {a.subject for a in denied} == {VIN_B} and len(denied) >= 3
    assert not audits(app_store[1], "location.reveal")


def test_reveal_is_audited_time_limited_and_one_vehicle(client: TestClient, app_store: Any) -> None:
    app, store = app_store
    app.state.hub.put_state({"vin": VIN_A, "location": {"lat": 31.2, "lon": 121.5, "ts_us": 1}})
    token = login(client, "agent")
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is None
    r = client.post(f"/console/vehicles/{VIN_A}/reveal",
                    data={"reason": "breakdown", "ticket": "T-42", "csrf_token": token})  # fmt: skip
    assert r.status_code == 200 and r.json()["location"]["lat"] == 31.2
    rec = audits(store, "location.reveal")
    assert len(rec) == 1 and rec[0].actor == "agent" and rec[0].subject == VIN_A
    assert rec[0].detail["ticket"] == "T-42" and rec[0].detail["reason"] == "breakdown"
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is not None
    # The grant runs out.
    ws = next(iter(app.state.sessions._sessions.values()))
    if ws.grant is None:
        ws = list(app.state.sessions._sessions.values())[-1]
    ws.grant.expires = time.monotonic() - 1
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is None


def test_reveal_without_consent_needs_emergency(client: TestClient, app_store: Any) -> None:
    token = login(client, "agent")
    data = {"reason": "customer_request", "ticket": "T-7", "csrf_token": token}
    assert client.post(f"/console/vehicles/{VIN_A2}/reveal", data=data).status_code == 403
    assert [a.subject for a in audits(app_store[1], "location.refused")] == [VIN_A2]
    data["reason"] = "emergency"
    assert client.post(f"/console/vehicles/{VIN_A2}/reveal", data=data).status_code == 200
    data["reason"] = "made_up"
    assert client.post(f"/console/vehicles/{VIN_A2}/reveal", data=data).status_code == 422


def test_advisor_cannot_reveal_location(client: TestClient, app_store: Any) -> None:
    token = login(client, "advisor")
    r = client.post(f"/console/vehicles/{VIN_A}/reveal",
                    data={"reason": "emergency", "ticket": "T-1", "csrf_token": token})  # fmt: skip
    assert r.status_code == 403
    assert "Reveal location" not in client.get(f"/console/vehicles/{VIN_A}").text
    assert not audits(app_store[1], "location.reveal")


def test_commands_need_confirmation_and_a_configured_channel(client: TestClient) -> None:
    token = login(client, "agent")
    r = client.post(f"/console/vehicles/{VIN_A}/doors",
                    data={"action": "unlock", "confirm": "000000", "csrf_token": token})  # fmt: skip
    assert r.status_code == 422  # wrong confirmation
    r = client.post(f"/console/vehicles/{VIN_A}/doors",
                    data={"action": "unlock", "confirm": VIN_A[-6:], "csrf_token": token})  # fmt: skip
    assert r.status_code == 503  # no MQTT in this app: refused, not pretended
    r = client.post(f"/console/vehicles/{VIN_A}/destination", data={"csrf_token": token})
    assert r.status_code == 422


def test_inbox_actions_are_audited_and_dealer_scoped(client: TestClient, app_store: Any) -> None:
    store = app_store[1]
    with store.tx() as s:
        a = upsert_inbox(s, "maintenance", VIN_A, "m|a", {"kind": "oil_life",
                         "evidence": [[0, 0.9], [86_400_000_000, 0.8]]})  # fmt: skip
        b = upsert_inbox(s, "dtc", VIN_B, "d|b", {"codes": [{"code": "P0301", "text": "x"}]})
        assert a is not None and b is not None
        ida, idb = a.id, b.id
    token = login(client, "advisor")
    page = client.get("/inbox").text
    assert VIN_A in page and VIN_B not in page and "<polyline" in page
    assert client.post(f"/inbox/{idb}/acknowledge", data={"csrf_token": token}).status_code == 403
    r = client.post(f"/inbox/{ida}/acknowledge", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    r = client.post(f"/inbox/{ida}/coupon", data={"template": "SERVICE10", "csrf_token": token},
                    follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    again = client.post(f"/inbox/{ida}/coupon", data={"template": "SERVICE10", "csrf_token": token})
    assert again.status_code == 409  # once per item and template
    r = client.post(f"/inbox/{ida}/book", data={"at": "2030-01-02T09:30", "csrf_token": token},
                    follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    with store.tx() as s:
        assert s.get(InboxItem, ida).state == "booked"  # type: ignore[union-attr]
        issued = s.scalars(select(Coupon).where(Coupon.effect_key == f"inbox|{ida}|SERVICE10"))
        assert len(list(issued)) == 1
    actions = {a.action for a in audits(store, "inbox.acknowledge") + audits(store, "inbox.coupon")
               + audits(store, "inbox.book")}  # fmt: skip
    assert actions == {"inbox.acknowledge", "inbox.coupon", "inbox.book"}


@pytest.mark.parametrize("user,path,code", [("auditor", "/console", 403), ("agent", "/inbox", 403),
                                            ("agent", "/audit", 403), ("auditor", "/audit", 200)])  # fmt: skip
def test_roles(client: TestClient, user: str, path: str, code: int) -> None:
    login(client, user)
    assert client.get(path).status_code == code


def test_public_view_hides_location_and_describes_dtcs() -> None:
    state = {"vin": VIN_A, "signals": {"Vehicle.Speed": [1, 42.0]}, "active_dtcs": ["P0301"],
             "location": {"lat": 1.0, "lon": 2.0}}  # fmt: skip
    v = public_view(state, False)
    assert v["location"] is None and v["speed_kmh"] == 42.0
    assert v["dtcs"][0]["text"].lower().startswith("cylinder 1 misfire")
    assert public_view(state, True)["location"] == {"lat": 1.0, "lon": 2.0}


def test_evidence_svg_escapes_and_scales() -> None:
    svg = str(evidence_svg([[0, 1.0], [10, 3.0], [20, float("nan")]]))
    assert svg.count(",") >= 2 and "2 points from 1 to 3" in svg
    assert "no evidence" in str(evidence_svg([]))
