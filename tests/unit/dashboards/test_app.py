"""The dashboard app through HTTP: login, cookies, CSRF, XSS, dealer scope, location reveal, inbox."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from crm import delivery
from crm.schema import AuditRecord, Coupon, Customer, utcnow
from crm.store import CrmStore, find_or_create_customer, set_consent, transfer_ownership
from crm.tables import InboxItem, LocationFix
from dashboards.auth import SessionRow
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
    data = {"reason": "crash-response", "ticket": "T-1"}
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
    """Refused as "not found", like an unknown VIN (issue #15: 403 told it existed elsewhere)."""
    assert dealer_of(app_store[1], VIN_B) == "dealer-b"
    token = login(client, "agent")
    assert client.get(f"/console/vehicles/{VIN_B}").status_code == 404
    assert client.get(f"/console/vehicles/{VIN_B}/state").status_code == 404
    assert client.get("/console/events", params={"vin": VIN_B}).status_code == 404
    r = client.post(f"/console/vehicles/{VIN_B}/reveal",
                    data={"reason": "crash-response", "ticket": "T-9", "csrf_token": token})  # fmt: skip
    assert r.status_code == 404
    assert VIN_B not in client.get("/console", params={"q": "BBB001"}).text
    denied = audits(app_store[1], "vehicle.denied")
    assert {a.subject for a in denied} == {VIN_B} and len(denied) >= 3
    assert not audits(app_store[1], "location.read")


def now_us() -> int:
    return int(time.time() * 1e6)


def test_reveal_goes_through_the_crm_audited_time_limited_one_vehicle(
    client: TestClient, app_store: Any
) -> None:
    app, store = app_store
    app.state.hub.put_state(
        {"vin": VIN_A, "location": {"lat": 31.2, "lon": 121.5, "ts_us": now_us()}}
    )
    token = login(client, "agent")
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is None
    r = client.post(f"/console/vehicles/{VIN_A}/reveal",
                    data={"reason": "roadside-assistance", "ticket": "T-42", "csrf_token": token})  # fmt: skip
    assert r.status_code == 200 and r.json()["location"]["lat"] == 31.2
    rec = audits(store, "location.read")  # the CRM's one audited door (crm.privacy.read_location)
    assert len(rec) == 1 and rec[0].actor == "agent" and rec[0].subject == VIN_A
    assert rec[0].purpose == "roadside-assistance" and rec[0].detail["ticket"] == "T-42"
    assert rec[0].detail["source"] == "vehicle-state" and rec[0].detail["found"] is True
    with store.tx() as s:  # kept as the last known place: the owner consents
        assert s.query(LocationFix).filter_by(vin=VIN_A).count() == 1
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is not None
    # One vehicle at a time: revealing the second one ends the first grant.
    with store.tx() as s:
        set_consent(s, owner_of(store, VIN_A2), "location", True)
    r = client.post(f"/console/vehicles/{VIN_A2}/reveal",
                    data={"reason": "customer-request", "ticket": "T-43", "csrf_token": token})  # fmt: skip
    assert r.status_code == 200 and r.json()["location"] is None  # no position known
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is None
    # The grant runs out (it lives in the session row in the CRM database).
    with store.tx() as s:
        row = s.scalars(select(SessionRow).where(SessionRow.grant.is_not(None))).one()
        row.grant = {**row.grant, "vin": VIN_A, "expires": time.time() - 1}  # type: ignore[dict-item]
    assert client.get(f"/console/vehicles/{VIN_A}/state").json()["location"] is None


def test_reveal_without_consent_only_for_a_crash_on_record(
    client: TestClient, app_store: Any
) -> None:
    app, store = app_store
    app.state.hub.put_state(
        {"vin": VIN_A2, "location": {"lat": 30.1, "lon": 120.1, "ts_us": now_us()}}
    )
    token = login(client, "agent")
    data = {"reason": "customer-request", "ticket": "T-7", "csrf_token": token}
    assert client.post(f"/console/vehicles/{VIN_A2}/reveal", data=data).status_code == 403
    data["reason"] = "crash-response"
    r = client.post(f"/console/vehicles/{VIN_A2}/reveal", data=data)
    assert r.status_code == 403 and "no crash" in r.text
    denied = audits(store, "location.read.denied")
    assert [(a.subject, a.purpose) for a in denied] == [
        (VIN_A2, "customer-request"), (VIN_A2, "crash-response")
    ]  # fmt: skip
    with store.tx() as s:  # the crash rule's call-centre card is the CRM's record of the crash
        delivery.file_card(s, role="call_centre", kind="crash", key="crash|t", vin=VIN_A2,
                           title="CRASH", priority=0)  # fmt: skip
    r = client.post(f"/console/vehicles/{VIN_A2}/reveal", data=data)
    assert r.status_code == 200 and r.json()["location"]["lat"] == 30.1
    assert audits(store, "location.read")[-1].detail["emergency"] is True
    with store.tx() as s:
        assert s.query(LocationFix).filter_by(vin=VIN_A2).count() == 0  # not kept
    data["reason"] = "made_up"
    assert client.post(f"/console/vehicles/{VIN_A2}/reveal", data=data).status_code == 422


def test_reveal_shows_nothing_from_before_the_current_ownership(
    client: TestClient, app_store: Any
) -> None:
    app, store = app_store
    old_fix = now_us() - 7_200_000_000  # two hours ago, under the previous owner
    app.state.hub.put_state(
        {"vin": VIN_A, "location": {"lat": 31.9, "lon": 121.9, "ts_us": old_fix}}
    )
    with store.tx() as s:
        buyer = find_or_create_customer(s, {"phone": "+8613911112222"}, display_name="Buyer")
        s.get(Customer, buyer).dealer_id = "dealer-a"  # type: ignore[union-attr]
        set_consent(s, buyer, "location", True)
        transfer_ownership(s, VIN_A, buyer, utcnow() - dt.timedelta(hours=1))
    token = login(client, "agent")
    r = client.post(f"/console/vehicles/{VIN_A}/reveal",
                    data={"reason": "customer-request", "ticket": "T-8", "csrf_token": token})  # fmt: skip
    assert r.status_code == 200 and r.json()["location"] is None
    assert audits(store, "location.read")[-1].detail["found"] is False


def test_advisor_cannot_reveal_location(client: TestClient, app_store: Any) -> None:
    token = login(client, "advisor")
    r = client.post(f"/console/vehicles/{VIN_A}/reveal",
                    data={"reason": "crash-response", "ticket": "T-1", "csrf_token": token})  # fmt: skip
    assert r.status_code == 403
    assert "Reveal location" not in client.get(f"/console/vehicles/{VIN_A}").text
    assert not audits(app_store[1], "location.read")


def test_sessions_live_in_the_crm_database_hashed(app_store: Any, tmp_path: Any) -> None:
    from dashboards.app import DashboardConfig, create_app

    app, store = app_store
    with TestClient(app, base_url="https://testserver") as c:
        login(c, "agent")
        sid = c.cookies.get("carpulse_session")
    assert sid
    with store.tx() as s:
        rows = list(s.scalars(select(SessionRow).where(SessionRow.username == "agent")))
        assert len(rows) == 1 and sid not in rows[0].token_hash
    # Another process on the same database (or this one after a restart) knows the session.
    other = create_app(DashboardConfig(crm_url=str(store.engine.url), reveal_seconds=60))
    with TestClient(other, base_url="https://testserver", cookies={"carpulse_session": sid}) as c2:
        assert c2.get("/console").status_code == 200
        token = csrf_of(c2.get("/console").text)
        r = c2.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303
    with TestClient(app, base_url="https://testserver", cookies={"carpulse_session": sid}) as c3:
        assert c3.get("/console", headers={"accept": "application/json"}).status_code == 401


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
        a = delivery.file_card(s, role="advisor", kind="maintenance", key="m|a", vin=VIN_A,
                               title="oil_life due", data={"kind": "oil_life",
                               "evidence": [[0, 0.9], [86_400_000_000, 0.8]]})  # fmt: skip
        b = delivery.file_card(s, role="advisor", kind="dtc", key="d|b", vin=VIN_B, title="P0301",
                               data={"codes": [{"code": "P0301", "text": "x"}]})  # fmt: skip
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
        item = s.get(InboxItem, ida)
        assert item is not None and delivery.card_state(item) == "booked"
        issued = s.scalars(select(Coupon).where(Coupon.effect_key == f"inbox|{ida}|SERVICE10"))
        assert len(list(issued)) == 1
    actions = {a.action for a in audits(store, "inbox.acknowledge") + audits(store, "inbox.coupon")
               + audits(store, "inbox.book")}  # fmt: skip
    assert actions == {"inbox.acknowledge", "inbox.coupon", "inbox.book"}
    assert "state-booked" in client.get("/inbox").text  # closed today: still on the page


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


def test_the_login_page_stores_nothing_until_a_login_succeeds(
    client: TestClient, app_store: Any
) -> None:
    """Issue #10: repeated GET /login wrote a session row each; the form's token is now a signed
    pre-login cookie's, and the only row is the logged-in session's."""
    store = app_store[1]

    def rows() -> list[tuple[str | None, str]]:
        with store.tx() as s:
            return [(r.username, r.token_hash) for r in s.scalars(select(SessionRow))]

    for _ in range(5):
        first = client.get("/login")
    assert first.status_code == 200 and rows() == []
    pre = client.cookies.get("carpulse_prelogin")
    assert pre and client.cookies.get("carpulse_session") is None
    token = csrf_of(first.text)
    assert csrf_of(client.get("/login").text) == token  # the same form token while the cookie lives
    bad = {"username": "agent", "password": "wrong-password", "csrf_token": token}
    assert client.post("/login", data=bad).status_code == 401 and rows() == []
    # a token without its cookie, a forged cookie or a stale one is refused
    with TestClient(app_store[0], base_url="https://testserver") as other:
        ok = {"username": "agent", "password": "carpulse-demo", "csrf_token": token}
        assert other.post("/login", data=ok).status_code == 403  # no cookie
        nonce, issued, sig = pre.split(".")
        forged = f"{nonce}.{int(issued) + 1}.{sig}"
        stale_ws = app_store[0].state.sessions.new_prelogin(now=time.time() - 7200)
        cases = ((pre, token, 401), (forged, token, 403), (stale_ws.id, stale_ws.csrf, 403))
        for cookie, form_token, status in cases:  # the first: the cookie does reach the app
            other.cookies.set("carpulse_prelogin", cookie, domain="testserver.local", path="/login")
            r = other.post("/login", data={**bad, "csrf_token": form_token})
            assert r.status_code == status, cookie
            other.cookies.clear()
    assert rows() == []
    r = client.post("/login", data={**bad, "password": "carpulse-demo"}, follow_redirects=False)
    assert r.status_code == 303
    assert [u for u, _ in rows()] == ["agent"]
    assert client.cookies.get("carpulse_prelogin") is None  # spent
    assert client.get("/console").status_code == 200
