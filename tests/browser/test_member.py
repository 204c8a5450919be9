"""The mobile member page in Debian's chromium (Playwright) on a phone viewport: open by link,
see coupons (zh-CN and en), share, claim as a friend, redeem at the counter, see points move; the
privacy rules hold (only the member's own data, only the current ownership).

No broker here: the app runs under uvicorn on a fresh CRM, the way ``carpulse dashboard`` serves
it; the friend's sign-in link goes through the recording transport. Screenshots land in the
test's folder, and in docs/screenshots/ with ``CARPULSE_UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright")

from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from sqlalchemy import select

from carpulse.stack import free_port
from core.topics import KAFKA_PREDICTIONS
from crm import member_links as ml
from crm.migrate import upgrade
from crm.schema import AuditRecord, Coupon, utcnow
from crm.store import CrmStore, owner_at, transfer_ownership
from crm.tables import ServiceRecord
from crm.transports import RecordingTransport
from dashboards.app import DashboardConfig, create_app
from dashboards.auth import SessionStore
from dashboards.inbox import record_filer
from dashboards.users import DEMO_PASSWORD, create_demo_users, seed_demo_crm

pytestmark = [pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
                         "is_mobile": True, "has_touch": True}  # fmt: skip
VIN, VIN_SOLD, VIN_OTHER = "CPMEM000000000001", "CPMEM000000000002", "CPMEM000000000003"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@dataclass
class World:
    url: str
    store: CrmStore
    key: bytes
    sent: RecordingTransport
    member: str  # owner of VIN, and of VIN_SOLD since a week ago
    other: str  # owner of VIN_OTHER, and VIN_SOLD's previous owner
    shots: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    import uvicorn

    tmp = tmp_path_factory.mktemp("member")
    url_db = f"sqlite:///{tmp / 'crm.sqlite'}"
    store = CrmStore.from_url(url_db)
    upgrade(store.engine)
    create_demo_users(store)
    seed_demo_crm(store, [(VIN, "mem-car-1", "沪A1001"), (VIN_SOLD, "mem-car-2", "沪A2002"),
                          (VIN_OTHER, "mem-car-3", "沪A3003")], "dealer-a")  # fmt: skip
    now = utcnow()
    with store.tx() as s:
        member, other = owner_at(s, VIN, now), owner_at(s, VIN_OTHER, now)
        assert member and other
        sold_by = owner_at(s, VIN_SOLD, now)
        assert sold_by
        sold = now - dt.timedelta(days=7)
        s.add(ServiceRecord(vin=VIN_SOLD, service_date=(sold - dt.timedelta(days=90)).date(),
                            odometer_km=41000, work="PREVIOUS-OWNER brake job"))  # fmt: skip
        s.add(ServiceRecord(vin=VIN_SOLD, service_date=(sold + dt.timedelta(days=2)).date(),
                            odometer_km=42000, work="保养 oil and filter"))  # fmt: skip
        transfer_ownership(s, VIN_SOLD, member, sold)
    # service-due predictions as the dashboard's feed files them: the member page's next service
    file = record_filer(store)
    ts = int(time.time() * 1e6)
    for i in range(12):
        file(KAFKA_PREDICTIONS, {"vin": VIN, "kind": "service_due", "ts_us": ts - (11 - i) * 86_400_000_000,
                                 "days": 30.0 - i * 0.9, "km": 15_000.0, "odo": 13_800.0 + i * 45,
                                 "cycle": "2026-05-01@5000km"})  # fmt: skip
    sent = RecordingTransport()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = DashboardConfig(crm_url=url_db, secure_cookies=False, public_url=url,
                          member_transport=sent)  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    key = SessionStore(store.engine).secret("member-links")
    shots = tmp / "screens"
    shots.mkdir()
    try:
        yield World(url, store, key, sent, member, other, shots)
    finally:
        server.should_exit = True
        th.join(10)
        store.engine.dispose()


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make setup does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def phone(browser: Browser) -> BrowserContext:
    return browser.new_context(**PHONE, locale="zh-CN")


def link(w: World, customer: str) -> str:
    with w.store.tx() as s:
        return ml.issue_sign_in(s, w.key, customer, w.url)


def shot(page: Page, w: World, name: str) -> None:
    path = w.shots / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("CARPULSE_UPDATE_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / name)


def test_chinese_renders_with_a_cjk_font(browser: Browser, world: World) -> None:
    page = phone(browser).new_page()
    page.goto(link(world, world.member))
    expect(page.locator("#m-tier")).to_be_visible()
    has_font = page.evaluate("() => document.fonts.check('16px \"Noto Sans CJK SC\"', '会员')")
    width = page.evaluate(
        """() => { const c = document.createElement('canvas').getContext('2d');
                   c.font = '32px "Noto Sans CJK SC"'; const a = c.measureText('会员积分').width;
                   c.font = '32px monospace'; return [a, c.measureText('会员积分').width]; }"""
    )
    assert has_font, "no CJK font: apt-get install fonts-noto-cjk (make setup does)"
    assert width[0] > 100, f"Chinese text has no width: {width}"


def test_member_opens_the_link_and_sees_tier_vehicles_and_coupons(
    browser: Browser, world: World
) -> None:
    page = phone(browser).new_page()
    page.goto(link(world, world.member))
    expect(page).to_have_url(re.compile(r"/m$"))  # the token left the address bar
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("#m-tier")).to_have_text("银卡")
    expect(page.locator(f"article[data-vin='{VIN}'] .m-next")).to_contain_text("公里")
    sold = page.locator(f"article[data-vin='{VIN_SOLD}']")
    expect(sold).to_contain_text("沪A2002")
    valid = page.locator("[data-group=valid] article.m-coupon")
    expect(valid).to_have_count(1)
    expect(valid.locator(".m-qr svg")).to_have_count(1)
    expect(valid.locator(".code")).to_have_text(
        re.compile(r"^[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}$")
    )
    shot(page, world, "member-zh.png")
    page.click("a.m-lang")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#m-coupons h2")).to_have_text("My coupons")
    expect(page.locator("#m-tier")).to_have_text("Silver")
    shot(page, world, "member-en.png")


def test_privacy_only_own_data_and_current_ownership(browser: Browser, world: World) -> None:
    ctx = phone(browser)
    page = ctx.new_page()
    page.goto(link(world, world.member))
    expect(page.locator("#m-vehicles")).to_contain_text("保养 oil and filter", use_inner_text=False)
    html = page.content()
    assert "PREVIOUS-OWNER" not in html and VIN_OTHER not in html and "沪A3003" not in html
    with world.store.tx() as s:
        theirs = s.scalar(select(Coupon.id).where(Coupon.holder_id == world.other))
    assert theirs and theirs not in html
    # the other member's coupon id put into the member's own share form: not found, unchanged
    status = page.evaluate(
        """async (id) => {
            const csrf = document.querySelector('input[name=csrf_token]').value;
            const body = new URLSearchParams({csrf_token: csrf});
            return (await fetch(`/m/coupons/${id}/share`, {method: "POST", body})).status;
        }""",
        theirs,
    )
    assert status == 404
    # the previous owner no longer sees the car they sold
    prev = phone(browser).new_page()
    prev.goto(link(world, world.other))
    expect(prev.locator("#m-vehicles")).to_contain_text("沪A3003")
    expect(prev.locator("#m-vehicles")).not_to_contain_text("沪A2002")
    # a link signed for one member with another member's id in it: refused, clearly
    forged = link(world, world.member).replace(world.member, world.other)
    bad = phone(browser).new_page()
    resp = bad.goto(forged)
    assert resp is not None and resp.status == 403
    expect(bad.locator("#m-reason")).to_contain_text("链接无效")
    shot(bad, world, "member-refused.png")


def test_share_claim_redeem_and_points_move(browser: Browser, world: World) -> None:
    page = phone(browser).new_page()
    page.goto(link(world, world.member))
    coupon = page.locator("[data-group=valid] article.m-coupon").first
    code = coupon.get_attribute("data-code")
    coupon_id = coupon.get_attribute("data-coupon")
    assert code and coupon_id
    # the demo seed's two services (crm.loyalty.close_service): 340 points, 银卡; 金卡 at 1,000
    expect(page.locator("#m-points")).to_have_text("340")
    expect(page.locator("#m-next-tier")).to_have_text("再得 660 积分升级金卡")
    coupon.locator("form.m-share button").click()
    share = page.locator("#share-link")
    expect(share).to_have_value(re.compile(r"/m/claim\?t=s1\."))
    shot(page, world, "member-share.png")
    claim_url = share.input_value()

    friend = phone(browser).new_page()  # the friend's own phone: no session of anyone
    friend.goto(claim_url)
    expect(friend.locator("#m-claim")).to_contain_text("送您一张优惠券")
    friend.fill("input[name=phone]", "+86 139 8888 0001")
    friend.fill("input[name=name]", "小张")
    friend.click("#m-claim button[type=submit]")
    expect(friend.locator("#claim-error")).to_contain_text("同意")  # the terms first
    expect(friend.locator("input[name=phone]")).to_have_value("+86 139 8888 0001")  # kept
    shot(friend, world, "member-claim.png")
    friend.check("input[name=terms]")
    friend.check("input[name=marketing]")
    friend.click("#m-claim button[type=submit]")
    expect(friend.locator("#m-message")).to_contain_text("领取成功")
    again = phone(browser).new_page()  # the same link, claimed again: refused
    resp = again.goto(claim_url)
    assert resp is not None and resp.status == 409
    expect(again.locator("#m-reason")).to_contain_text("已被领取")

    msg = world.sent.sent[-1]  # the friend's sign-in link, through the transport
    assert msg.address == "+8613988880001"
    friend.goto(msg.url)
    mine = friend.locator(f"[data-group=valid] article[data-coupon='{coupon_id}']")
    expect(mine).to_contain_text("好友赠送")
    shot(friend, world, "member-friend.png")

    advisor = browser.new_context(viewport={"width": 1024, "height": 700}).new_page()
    advisor.goto(world.url + "/login")
    advisor.fill("input[name=username]", "advisor")
    advisor.fill("input[name=password]", DEMO_PASSWORD)
    advisor.click("button[type=submit]")
    expect(advisor).not_to_have_url(re.compile(r"/login$"))
    advisor.click("a[href='/inbox/counter']")
    advisor.fill("#counter-code", code.lower().replace("-", " "))
    advisor.click("#counter-form button")
    expect(advisor.locator("#counter-result")).to_contain_text(code)
    shot(advisor, world, "counter.png")
    advisor.fill("#counter-code", code)
    advisor.click("#counter-form button")
    expect(advisor.locator("#counter-error")).to_contain_text("already used")

    friend.reload()
    expect(friend.locator(f"[data-group=used] article[data-coupon='{coupon_id}']")).to_have_count(1)
    # points by crm/loyalty.yaml: the friend earns 20 for redeeming, the sharer 200 (referral:
    # the friend's first visit redeemed a coupon they shared)
    expect(friend.locator("#m-points")).to_have_text("20")
    expect(friend.locator("#m-tier")).to_have_text("普卡")
    expect(friend.locator("#m-next-tier")).to_have_text("再得 280 积分升级银卡")
    page.goto(world.url + "/m")
    expect(page.locator("#m-points")).to_have_text("540")
    expect(page.locator("#m-next-tier")).to_have_text("再得 460 积分升级金卡")
    expect(page.locator(f"[data-group=shared] article[data-coupon='{coupon_id}']")).to_contain_text(
        "好友已使用"
    )
    with world.store.tx() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.subject == coupon_id))
        actions = [r.action for r in rows]
    assert actions[-3:] == ["coupon.claim", "coupon.redeem", "coupon.redeem.counter"]

    # the member's car comes in: the advisor closes the visit with its amount at the counter;
    # 4,600 CNY earn 460 points (1 per 10 CNY): 1,000 in the year, 金卡
    advisor.fill("#service-vehicle", "沪A1001")
    advisor.fill("#service-amount", "4,600.00")
    advisor.fill("#service-odometer", "21000")
    advisor.fill("#service-work", "保养 oil and filter")
    advisor.click("#service-form button")
    expect(advisor.locator("#service-result")).to_contain_text(
        "460 points (+460 now); balance 1000"
    )
    expect(advisor.locator("#service-result")).to_contain_text("Gold · 金卡 (was Silver · 银卡)")
    shot(advisor, world, "counter-service.png")
    advisor.fill("#service-vehicle", VIN)
    advisor.fill("#service-amount", "-100")
    advisor.click("#service-form button")
    expect(advisor.locator("#service-error")).to_contain_text("must be")
    page.reload()
    expect(page.locator("#m-points")).to_have_text("1000")
    expect(page.locator("#m-tier")).to_have_text("金卡")
    expect(page.locator("#m-next-tier")).to_have_text("再得 2000 积分升级白金卡")
    shot(page, world, "member-points.png")
    page.goto(world.url + "/m?lang=en")
    expect(page.locator("#m-next-tier")).to_have_text("2000 points to Platinum")
    page.goto(world.url + "/m?lang=zh-CN")


def test_screenshots_were_saved(world: World) -> None:
    names = {p.name for p in world.shots.glob("*.png")}
    assert {"member-zh.png", "member-en.png", "member-claim.png", "counter.png",
            "counter-service.png", "member-points.png"} <= names  # fmt: skip
