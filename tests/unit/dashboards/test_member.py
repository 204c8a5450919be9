"""The member page over HTTP (FastAPI TestClient): sign-in by link, cookies, CSRF, languages,
privacy (IDs swapped, previous owner), share -> claim -> sign-in link -> counter redemption."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from crm import member_links as ml
from crm.schema import AuditRecord, Coupon, utcnow
from crm.store import CrmStore, issue_coupon, owner_at, transfer_ownership
from crm.tables import ServiceRecord
from crm.transports import RecordingTransport
from dashboards.app import DashboardConfig, create_app
from tests.unit.dashboards.conftest import VIN_A, VIN_A2, VIN_B, login


@pytest.fixture
def world(tmp_path: Path, template_db: Path) -> Iterator[dict[str, Any]]:
    shutil.copy(template_db, tmp_path / "crm.sqlite")
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    rec = RecordingTransport()
    app = create_app(DashboardConfig(crm_url=url, member_transport=rec))
    store = CrmStore.from_url(url)
    with TestClient(app, base_url="https://testserver") as c:
        key = app.state.sessions.secret("member-links")
        with store.tx() as s:
            owners = {vin: owner_at(s, vin, utcnow()) for vin in (VIN_A, VIN_A2, VIN_B)}
        yield {"c": c, "app": app, "store": store, "key": key, "rec": rec, "owners": owners}
    store.engine.dispose()


def link(w: dict[str, Any], vin: str, **kw: Any) -> str:
    token = ml.sign_in_token(w["key"], w["owners"][vin], **kw)
    return f"/m/signin?t={token}"


def sign_in(c: TestClient, url: str) -> str:
    r = c.get(url, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/m", r.text
    page = c.get("/m")
    assert page.status_code == 200
    return page.text


def csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m
    return m.group(1)


def coupons(html: str, group: str) -> list[str]:
    part = html.split(f'data-group="{group}"', 1)[1].split("data-group=", 1)[0]
    return re.findall(r'data-coupon="([0-9a-f]{32})"', part)


def test_sign_in_by_link_cookie_flags_and_languages(world: dict[str, Any]) -> None:
    c = world["c"]
    r = c.get(link(world, VIN_A), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/m"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("carpulse_member=")
    for flag in ("HttpOnly", "Secure", "SameSite=lax", "Path=/m"):
        assert flag.lower() in cookie.lower(), cookie
    page = c.get("/m")
    assert page.status_code == 200 and 'lang="zh-CN"' in page.text
    assert "我的优惠券" in page.text and "DEMO001" in page.text and "<svg" in page.text
    assert re.search(r'data-code="[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}"', page.text)
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    en = c.get("/m?lang=en")
    assert 'lang="en"' in en.text and "My coupons" in en.text
    assert 'lang="en"' in c.get("/m").text  # kept in a cookie
    # a member session is no staff session, and the staff pages do not take it
    assert c.get("/console", follow_redirects=False).status_code in (303, 401)
    member_cookie = c.cookies.get("carpulse_member")
    c.cookies.set("carpulse_session", member_cookie)
    assert (
        c.get("/inbox", headers={"accept": "text/html"}, follow_redirects=False).status_code == 303
    )


def test_tampered_expired_and_missing_links_get_a_clear_403(world: dict[str, Any]) -> None:
    c = world["c"]
    good = link(world, VIN_A)
    swapped = good.replace(world["owners"][VIN_A], world["owners"][VIN_A2])
    r = c.get(swapped, follow_redirects=False)
    assert (
        r.status_code == 403
        and "链接无效" in r.text
        and "carpulse_member" not in r.headers.get("set-cookie", "")
    )
    old = link(world, VIN_A, now=utcnow() - dt.timedelta(days=2))
    r = c.get(old + "&lang=en", follow_redirects=False)
    assert r.status_code == 403 and "expired" in r.text
    r = c.get("/m/signin?t=i1.abc", follow_redirects=False)
    assert r.status_code == 403 and "not complete" in c.get("/m/signin?t=x&lang=en").text
    assert c.get("/m").status_code == 401


def test_logout_needs_csrf_and_retires_the_link(world: dict[str, Any]) -> None:
    c = world["c"]
    url = link(world, VIN_A)
    html = sign_in(c, url)
    assert c.post("/m/logout", data={"csrf_token": "nope"}).status_code == 403
    assert c.get("/m").status_code == 200
    r = c.post("/m/logout", data={"csrf_token": csrf(html)})
    assert r.status_code == 200 and "已退出登录" in r.text
    assert c.get("/m").status_code == 401
    r = c.get(url, follow_redirects=False)
    assert r.status_code == 403 and "退出登录" in r.text  # the link cannot sign in again
    sign_in(c, link(world, VIN_A))  # a new link works


def test_a_member_sees_only_their_own_coupons_and_cannot_share_anothers(
    world: dict[str, Any],
) -> None:
    c, store = world["c"], world["store"]
    with store.tx() as s:
        theirs = s.scalar(select(Coupon.id).where(Coupon.holder_id == world["owners"][VIN_A2]))
        other_dealer = s.scalar(select(Coupon.id).where(Coupon.holder_id == world["owners"][VIN_B]))
    html = sign_in(c, link(world, VIN_A))
    mine = coupons(html, "valid")
    assert len(mine) == 1 and theirs not in html and other_dealer not in html
    assert "DEMO002" not in html and VIN_A2 not in html
    for cid in (theirs, other_dealer, "f" * 32):  # IDs swapped: as if they did not exist
        r = c.post(f"/m/coupons/{cid}/share", data={"csrf_token": csrf(html)})
        assert r.status_code == 404
    assert c.post(f"/m/coupons/{mine[0]}/share", data={"csrf_token": "x"}).status_code == 403
    assert c.post("/m/coupons/../../share", data={"csrf_token": csrf(html)}).status_code == 404
    with store.tx() as s:
        held = s.get(Coupon, theirs)
        assert held is not None and held.holder_id == world["owners"][VIN_A2]


def test_the_new_owner_never_sees_the_previous_owners_history(world: dict[str, Any]) -> None:
    c, store = world["c"], world["store"]
    new, old = world["owners"][VIN_A], world["owners"][VIN_A2]
    sold = utcnow() - dt.timedelta(days=5)
    with store.tx() as s:
        s.add(ServiceRecord(vin=VIN_A2, service_date=(sold - dt.timedelta(days=60)).date(),
                            odometer_km=30000, work="OLD-OWNER-SERVICE"))  # fmt: skip
        s.add(ServiceRecord(vin=VIN_A2, service_date=(sold + dt.timedelta(days=1)).date(),
                            odometer_km=31000, work="NEW-OWNER-SERVICE"))  # fmt: skip
        transfer_ownership(s, VIN_A2, new, sold)
    html = sign_in(c, link(world, VIN_A))
    assert "DEMO002" in html and "NEW-OWNER-SERVICE" in html
    assert "OLD-OWNER-SERVICE" not in html
    c.cookies.clear()
    w_old = {**world, "owners": {VIN_A2: old}}
    html_old = sign_in(c, link(w_old, VIN_A2))
    assert "DEMO002" not in html_old and "NEW-OWNER-SERVICE" not in html_old


def test_share_claim_sign_in_redeem_at_the_counter(world: dict[str, Any]) -> None:
    c, store, rec = world["c"], world["store"], world["rec"]
    html = sign_in(c, link(world, VIN_A))
    coupon = coupons(html, "valid")[0]
    r = c.post(f"/m/coupons/{coupon}/share", data={"csrf_token": csrf(html)})
    assert r.status_code == 200
    share = re.search(r'id="share-link"[^>]*value="([^"]+)"', r.text)
    assert share and share.group(1).startswith("https://testserver/m/claim?t=s1.")
    claim_url = share.group(1).removeprefix("https://testserver")
    c.cookies.clear()  # the friend's phone
    form = c.get(claim_url)
    assert form.status_code == 200 and "D**" in form.text and "Demo customer" not in form.text
    token = re.search(r'name="t" value="([^"]+)"', form.text)
    assert token
    data = {"t": token.group(1), "phone": "+86 139 5555 0001", "name": "Friend",
            "csrf_token": csrf(form.text), "marketing": "on"}  # fmt: skip
    assert c.post("/m/claim", data={**data, "csrf_token": "forged"}).status_code == 403
    no_terms = c.post("/m/claim", data=data)
    assert no_terms.status_code == 400 and 'id="claim-error"' in no_terms.text
    done = c.post("/m/claim", data={**data, "terms": "on"})
    assert done.status_code == 200 and "登录链接已发送" in done.text
    again = c.post("/m/claim", data={**data, "terms": "on", "phone": "+8613955550002"})
    assert again.status_code == 409 and "已被领取" in again.text
    assert c.get(claim_url).status_code == 409
    # the friend's sign-in link went through the transport, to the phone they typed
    (msg,) = rec.sent
    assert msg.address == "+8613955550001" and "/m/signin?t=i1." in msg.text
    friend_page = sign_in(c, msg.url.removeprefix("https://testserver"))
    assert coupons(friend_page, "valid") == [coupon] and "好友赠送" in friend_page
    code = re.search(rf'data-coupon="{coupon}" data-code="([^"]+)"', friend_page)
    assert code
    # the sharer sees it passed on, not the friend's data
    c.cookies.clear()
    sharer = sign_in(c, link(world, VIN_A))
    assert coupons(sharer, "shared") == [coupon]
    # (Not a bare "5555": the page's random hex tokens hold one now and then.)
    assert "13955550001" not in sharer and "Friend" not in sharer
    assert not re.search(r"(?<![0-9a-f])5555(?![0-9a-f])", sharer)
    # at the counter: the advisor types it in lower case with spaces
    c.cookies.clear()
    token_staff = login(c, "advisor")
    page = c.get("/inbox/counter")
    assert page.status_code == 200 and 'id="counter-code"' in page.text
    typed = code.group(1).lower().replace("-", " ")
    assert c.post("/inbox/counter", data={"code": typed}).status_code == 403  # no CSRF token
    ok = c.post("/inbox/counter", data={"code": typed, "csrf_token": token_staff})
    assert ok.status_code == 200 and 'id="counter-result"' in ok.text
    twice = c.post("/inbox/counter", data={"code": typed, "csrf_token": token_staff})
    assert twice.status_code == 409 and "already used" in twice.text
    unknown = c.post("/inbox/counter", data={"code": "0000 0000 0000", "csrf_token": token_staff})
    assert unknown.status_code == 404 and "no coupon has the code" in unknown.text
    bad = c.post("/inbox/counter", data={"code": "hello", "csrf_token": token_staff})
    assert bad.status_code == 400 and "not a coupon code" in bad.text
    with store.tx() as s:
        got = s.get(Coupon, coupon)
        assert got is not None and got.state == "redeemed"
        rows = list(
            s.scalars(select(AuditRecord).where(AuditRecord.action == "coupon.redeem.counter"))
        )
        assert [(r.actor, r.subject) for r in rows] == [("advisor", coupon)]
    c.cookies.clear()
    friend_after = sign_in(c, msg.url.removeprefix("https://testserver"))
    assert coupons(friend_after, "used") == [coupon] and coupons(friend_after, "valid") == []
    # crm/loyalty.yaml: the redeemer earns 20, the sharer 200 (the friend's first visit)
    assert 'id="m-points">20<' in friend_after and ">普卡<" in friend_after
    c.cookies.clear()
    sharer_after = sign_in(c, link(world, VIN_A))
    assert 'id="m-points">540<' in sharer_after and "再得 460 积分升级金卡" in sharer_after


def test_the_counter_needs_the_advisors_permission_and_dealer(world: dict[str, Any]) -> None:
    c, store = world["c"], world["store"]
    with store.tx() as s:
        b_coupon = issue_coupon(s, "SERVICE10", world["owners"][VIN_B],
                                utcnow() + dt.timedelta(days=5)).id  # fmt: skip
    token = login(c, "agent")  # call centre: no inbox.act
    assert c.get("/inbox/counter").status_code == 403
    assert c.post("/inbox/counter", data={"code": "x", "csrf_token": token}).status_code == 403
    c.cookies.clear()
    token = login(c, "advisor")  # dealer-a: dealer-b's coupon is not found
    r = c.post("/inbox/counter", data={"code": ml.short_code(b_coupon), "csrf_token": token})
    assert r.status_code == 404 and "not one of this dealer" in r.text
    with store.tx() as s:
        got = s.get(Coupon, b_coupon)
        assert got is not None and got.state == "issued"


def test_the_demo_prints_a_working_member_link(world: dict[str, Any]) -> None:
    """``make demo``'s link (``dashboards.member.demo_link``): the first car's owner, a coupon
    to share, signed with the key the dashboard checks."""
    from core.config import CarpulseSettings
    from crm.demo import seed_demo
    from dashboards.member import demo_link

    c, store = world["c"], world["store"]
    (vin,) = seed_demo(store, 1, vins=["CPDEM000000000077"], devices=["demo-x"],
                       dealer_id="dealer-a")  # fmt: skip
    url = demo_link(store, CarpulseSettings(), vin, "http://127.0.0.1:8000")
    assert url.startswith("http://127.0.0.1:8000/m/signin?t=i1.")
    html = sign_in(c, url.removeprefix("http://127.0.0.1:8000"))
    assert "车主0" in html and ">普卡<" in html and len(coupons(html, "valid")) == 1
    again = demo_link(store, CarpulseSettings(), vin, "http://127.0.0.1:8000")
    c.cookies.clear()
    html = sign_in(c, again.removeprefix("http://127.0.0.1:8000"))
    assert len(coupons(html, "valid")) == 1


def test_the_readme_walk_through_with_the_demo_numbers(world: dict[str, Any]) -> None:
    """README "Member page", steps 1-5 on ``make demo``'s first car: 80 points (普卡) -> share ->
    the friend claims -> redeemed at the counter: friend 20, sharer 280 -> the advisor closes a
    1,280 CNY service: 408 points, 银卡."""
    from core.config import CarpulseSettings
    from crm.demo import seed_demo
    from dashboards.member import demo_link

    c, store, rec = world["c"], world["store"], world["rec"]
    (vin,) = seed_demo(store, 1, vins=["CPDEM000000000078"], devices=["demo-y"],
                       dealer_id="dealer-a")  # fmt: skip
    url = demo_link(store, CarpulseSettings(), vin, "https://testserver")
    html = sign_in(c, url.removeprefix("https://testserver"))
    assert 'id="m-points">80<' in html and ">普卡<" in html and "再得 220 积分升级银卡" in html
    coupon = coupons(html, "valid")[0]
    share = c.post(f"/m/coupons/{coupon}/share", data={"csrf_token": csrf(html)})
    claim_url = re.search(r'id="share-link"[^>]*value="https://testserver([^"]+)"', share.text)
    assert claim_url
    c.cookies.clear()
    form = c.get(claim_url.group(1)).text
    token = re.search(r'name="t" value="([^"]+)"', form)
    assert token
    done = c.post("/m/claim", data={"t": token.group(1), "phone": "+86 139 7777 0001",
                                    "terms": "on", "csrf_token": csrf(form)})  # fmt: skip
    assert done.status_code == 200
    c.cookies.clear()
    staff = login(c, "advisor")
    r = c.post("/inbox/counter", data={"code": ml.short_code(coupon), "csrf_token": staff})
    assert r.status_code == 200
    c.cookies.clear()
    friend = sign_in(c, rec.sent[-1].url.removeprefix("https://testserver"))
    assert 'id="m-points">20<' in friend
    c.cookies.clear()
    sharer = sign_in(c, url.removeprefix("https://testserver"))
    assert 'id="m-points">280<' in sharer and "再得 20 积分升级银卡" in sharer
    c.cookies.clear()
    staff = login(c, "advisor")
    closed = c.post("/inbox/counter/service", data={"vehicle": "沪D00000", "amount": "1,280.00",
                                                    "work": "保养", "csrf_token": staff})  # fmt: skip
    assert closed.status_code == 200 and "128 points (+128 now); balance 408" in closed.text
    c.cookies.clear()
    sharer = sign_in(c, url.removeprefix("https://testserver"))
    assert (
        'id="m-points">408<' in sharer and ">银卡<" in sharer and "再得 592 积分升级金卡" in sharer
    )


def test_member_settings_build_the_key_and_transport(tmp_path: Path) -> None:
    from core.config import CarpulseSettings
    from core.errors import ConfigError
    from crm.transports import SmsGatewayTransport, from_settings

    key = tmp_path / "member.key"
    key.write_text("0123456789abcdef0123\n")
    s = CarpulseSettings.model_validate(
        {"member": {"key_file": str(key), "transport": "sms", "sms_url": "https://sms.example/x"}}
    )
    assert s.member.resolved_key() == b"0123456789abcdef0123"
    assert isinstance(from_settings(s), SmsGatewayTransport)
    key.write_text("short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        s.member.resolved_key()
    with pytest.raises(ConfigError, match="needs \\[smtp\\] host"):
        from_settings(CarpulseSettings.model_validate({"member": {"transport": "email"}}))
    with pytest.raises(ConfigError, match="unknown member transport"):
        from_settings(CarpulseSettings.model_validate({"member": {"transport": "fax"}}))
    assert from_settings(CarpulseSettings()) is None


def test_cli_sends_or_prints_a_link_the_page_accepts(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``carpulse member link``: by phone, through the recording transport; by id, printed; the
    key is the one the running dashboard keeps in the same CRM database."""
    import json

    from typer.testing import CliRunner

    from carpulse.cli import app
    from dashboards.users import demo_phone

    db = str(world["store"].engine.url)
    sent = tmp_path / "sent.jsonl"
    monkeypatch.setenv("CARPULSE_MEMBER__RECORDING_FILE", str(sent))
    run = CliRunner().invoke
    res = run(app, ["member", "link", demo_phone(VIN_A), "--via", "recording", "--db", db])
    assert res.exit_code == 0 and "sent to" in res.output, res.output
    url = json.loads(sent.read_text())["url"]
    sign_in(world["c"], url[url.index("/m/signin") :])
    res = run(app, ["member", "link", world["owners"][VIN_A2], "--print", "--db", db])
    assert res.exit_code == 0 and "/m/signin?t=i1." in res.output
    res = run(app, ["member", "link", "+10000000000", "--print", "--db", db])
    assert res.exit_code != 0 and "no customer" in str(res.exception)
    res = run(app, ["member", "link", demo_phone(VIN_A), "--via", "fax", "--db", db])
    assert res.exit_code != 0 and "unknown member transport 'fax'" in str(res.exception)


def test_a_new_link_by_phone_same_answer_and_throttled(world: dict[str, Any]) -> None:
    from dashboards.users import demo_phone

    c, rec = world["c"], world["rec"]
    form = c.get("/m/login")
    assert form.status_code == 200
    token = csrf(form.text)
    assert (
        c.post("/m/login", data={"phone": demo_phone(VIN_A), "csrf_token": "x"}).status_code == 403
    )
    member = c.post("/m/login", data={"phone": demo_phone(VIN_A), "csrf_token": token})
    stranger = c.post("/m/login", data={"phone": "+8613700000000", "csrf_token": token})
    assert member.status_code == stranger.status_code == 200
    strip = lambda html: re.sub(r'value="[0-9a-f]{64}"', "", html)  # noqa: E731
    assert strip(member.text) == strip(stranger.text)  # no way to tell a member's number
    assert [m.address for m in rec.sent] == [demo_phone(VIN_A)]
    sign_in(c, rec.sent[0].url.removeprefix("https://testserver"))
    assert c.post("/m/login", data={"phone": "12", "csrf_token": token}).status_code == 400
    c.post("/m/login", data={"phone": demo_phone(VIN_A), "csrf_token": token})
    c.post("/m/login", data={"phone": demo_phone(VIN_A), "csrf_token": token})
    busy = c.post("/m/login", data={"phone": demo_phone(VIN_A), "csrf_token": token})
    assert busy.status_code == 429 and busy.headers["retry-after"] == "3600"
    assert len(rec.sent) == 3  # the fourth request of the hour sent nothing
    for i in range(6):  # other numbers from the same address, up to its limit
        c.post("/m/login", data={"phone": f"+861370000001{i}", "csrf_token": token})
    assert (
        c.post("/m/login", data={"phone": "+8613700000099", "csrf_token": token}).status_code == 429
    )


def test_old_member_sessions_are_pruned_at_sign_in(world: dict[str, Any]) -> None:
    from crm.tables import MemberSession

    now, cid = utcnow(), world["owners"][VIN_A]
    with world["store"].tx() as s:
        for name, age, left in (("old", 40, -9), ("open", 40, 5), ("recent", 3, -1)):
            s.add(MemberSession(token_hash=name.ljust(64, "0"), customer_id=cid, link_nonce=name,
                                created_at=now - dt.timedelta(days=age),
                                expires_at=now + dt.timedelta(days=left)))  # fmt: skip
    sign_in(world["c"], link(world, VIN_A))
    with world["store"].tx() as s:
        left = {r.link_nonce for r in s.scalars(select(MemberSession))}
    assert "old" not in left and {"open", "recent"} <= left and len(left) == 3


def test_parallel_scans_at_the_counter_one_wins(world: dict[str, Any]) -> None:
    """Eight counters scan the same code at once, through the app: one 200, seven 409."""
    import threading

    c, store = world["c"], world["store"]
    with store.tx() as s:
        code = ml.short_code(
            issue_coupon(s, "SERVICE10", world["owners"][VIN_A], utcnow() + dt.timedelta(days=5)).id
        )
    token = login(c, "advisor")
    barrier, status = threading.Barrier(8), []

    def scan() -> None:
        barrier.wait()
        status.append(
            c.post("/inbox/counter", data={"code": code, "csrf_token": token}).status_code
        )

    threads = [threading.Thread(target=scan) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(status) == [200] + [409] * 7
    with store.tx() as s:
        won = s.scalars(select(AuditRecord).where(AuditRecord.action == "coupon.redeem.counter"))
        assert len(list(won)) == 1


def test_an_erased_customer_is_signed_out_and_cannot_sign_in(world: dict[str, Any]) -> None:
    from crm.privacy import erase_customer

    c = world["c"]
    url = link(world, VIN_A)
    sign_in(c, url)
    with world["store"].tx() as s:
        erase_customer(s, world["owners"][VIN_A], "dpo", "REQ-7")
    assert c.get("/m").status_code == 401
    c.cookies.clear()
    assert c.get(url, follow_redirects=False).status_code == 403
