"""The staff pages in English (the default) and Simplified Chinese: ``?lang=`` switches, the
``carpulse_staff_lang`` cookie remembers it, every fixed text has both languages, tier ids show as
their names, and what a user typed is still escaped in either language."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dashboards import staff_text
from tests.unit.dashboards.conftest import VIN_A, login
from tests.unit.dashboards.test_inbox import cards, gate_plate

TEMPLATES = Path(staff_text.__file__).parent / "templates"
STAFF_PAGES = ("base", "login", "console", "desk", "inbox", "counter", "vehicle",
               "search_results", "audit", "timeline")  # fmt: skip
ZH = {"lang": "zh-CN"}


def _fields(words: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(words) if f}


def test_every_key_has_both_languages_with_the_same_fields() -> None:
    for key, (en, zh) in staff_text.TEXT.items():
        assert zh, key
        assert en or key.startswith("counter_"), key  # English: the CRM's own reason
        if en:
            assert _fields(en) == _fields(zh), key


def test_every_key_a_staff_template_names_is_in_the_table() -> None:
    named: set[str] = set()
    for page in STAFF_PAGES:
        html = (TEMPLATES / f"{page}.html").read_text()
        found = set(re.findall(r"""\bt\(\s*["']([a-z_-]+)["']\s*[,)]""", html))
        assert found, page
        named |= found
    assert named - set(staff_text.TEXT) == set()
    assert len(named) > 100


def _zh_clean(html: str) -> None:
    """No English left of the words the table translates (a key missing would be a 500)."""
    for leftover in ("Log out", ">Console<", ">Inbox<", "Search by VIN", "Fleet", "Acknowledge",
                     "Nothing waiting", "Redeem a coupon", "Audit log", "Member tier"):  # fmt: skip
        assert leftover not in html, leftover
    assert '<html lang="zh-CN">' in html


def test_login_page_in_chinese_and_english(client: TestClient) -> None:
    en = client.get("/login").text
    assert '<html lang="en">' in en and "<h1>Log in</h1>" in en and "User name" in en
    zh = client.get("/login", params=ZH).text
    assert "<h1>登录</h1>" in zh and "用户名" in zh and "密码" in zh and "User name" not in zh
    _zh_clean(zh)
    token = re.search(r'name="csrf-token" content="([^"]+)"', zh)
    assert token is not None
    bad = client.post("/login", data={"username": "agent", "password": "wrong-password",
                                      "csrf_token": token.group(1)})  # fmt: skip
    assert bad.status_code == 401 and "用户名或密码错误。" in bad.text  # the cookie remembers


def test_console_desk_and_search_in_chinese(client: TestClient) -> None:
    login(client, "agent")
    page = client.get("/console", params=ZH).text
    _zh_clean(page)
    for words in ("控制台", "按车架号、车牌、手机号或会员号搜索", "呼叫中心队列", "安全队列", "车队",
                  "<th>车架号</th>", "<th>最后在线</th>", ">全部<", ">离线<", "退出登录"):  # fmt: skip
        assert words in page, words
    found = client.get("/console", params={"q": "DEMO001"}).text  # the cookie, no ?lang=
    assert "<th>会员等级</th>" in found and ">银卡<" in found and ">silver<" not in found
    fleet = client.get("/console/fleet").text
    assert "车队" in fleet and "Fleet" not in fleet
    english = client.get("/console", params={"q": "DEMO001", "lang": "en"}).text
    assert "<th>Tier</th>" in english and ">Silver<" in english and "Fleet" in english


def test_vehicle_page_and_timeline_in_chinese(client: TestClient) -> None:
    login(client, "agent")
    page = client.get(f"/console/vehicles/{VIN_A}", params=ZH).text
    _zh_clean(page)
    for words in ("车速", "点火", "里程", "会员等级", ">银卡</b>", 'data-tier="silver"', "优惠券",
                  "查看位置", "碰撞或医疗急救", "工单号", "向车辆发送目的地", "上锁", "解锁",
                  "车辆时间线", "当前车主期间"):  # fmt: skip
        assert words in page, words
    assert "Reveal location" not in page and "Timeline" not in page
    en = client.get(f"/console/vehicles/{VIN_A}", params={"lang": "en"}).text
    assert ">Silver</b>" in en and "Crash or medical emergency" in en and "Member tier" in en


def test_inbox_in_chinese_with_the_tier_name(client: TestClient, app_store: Any) -> None:
    gate_plate(app_store[1], "DEMO001", 1)
    login(client, "advisor")
    page = client.get("/inbox", params=ZH).text
    _zh_clean(page)
    card = next(c for c in cards(page) if 'data-kind="gate_arrival"' in c)
    for words in ("等级 银卡", "确认", "预约", "发放优惠券", "到店时间", "张优惠券"):
        assert words in card, words
    assert "<h1>服务收件箱</h1>" in page


def test_counter_in_chinese_with_chinese_refusals(client: TestClient) -> None:
    token = login(client, "advisor")
    page = client.get("/inbox/counter", params=ZH).text
    _zh_clean(page)
    assert "<h1>核销优惠券</h1>" in page and "结单" in page and "Scan the member" not in page
    r = client.post("/inbox/counter", data={"csrf_token": token, "code": "1A2B-3C4D-5E6F"})
    assert r.status_code == 404 and "已拒绝：没有这个券码的优惠券" in r.text
    r = client.post("/inbox/counter/service",
                    data={"csrf_token": token, "vehicle": VIN_A, "amount": "500"})  # fmt: skip
    assert r.status_code == 200 and "已结单" in r.text and "等级 " in r.text
    assert "tier Silver" not in r.text and "Closed" not in r.text
    en = client.post("/inbox/counter?lang=en", data={"csrf_token": token, "code": "ZZZZ-ZZZZ"})
    assert "Refused: " in en.text and "Redeem a coupon · 核销优惠券" in en.text


def test_audit_page_in_chinese(client: TestClient) -> None:
    login(client, "auditor")
    page = client.get("/audit", params=ZH).text
    _zh_clean(page)
    assert "<h1>审计日志</h1>" in page and "<th>操作人</th>" in page and "<th>目的</th>" in page


def test_the_switch_link_keeps_the_query_and_is_remembered(client: TestClient) -> None:
    login(client, "agent")
    first = client.get("/console", params={"q": "DEMO001"})
    assert 'href="/console?q=DEMO001&amp;lang=zh-CN"' in first.text and ">中文</a>" in first.text
    assert staff_text.COOKIE not in first.headers.get("set-cookie", "")
    zh = client.get("/console?q=DEMO001&lang=zh-CN")
    cookie = zh.headers["set-cookie"]
    assert f"{staff_text.COOKIE}=zh-CN" in cookie and "Path=/;" in cookie and "HttpOnly" in cookie
    assert 'href="/console?q=DEMO001&amp;lang=en"' in zh.text and ">English</a>" in zh.text
    assert '<html lang="zh-CN">' in client.get("/console").text
    assert '<html lang="zh-CN">' in client.get(f"/console/vehicles/{VIN_A}").text
    back = client.get("/console?lang=en")
    assert (
        '<html lang="en">' in back.text and f"{staff_text.COOKIE}=en" in back.headers["set-cookie"]
    )
    assert '<html lang="en">' in client.get("/console").text
    # the member page keeps its own choice (Chinese by default): the staff cookie is another one
    assert '<html lang="zh-CN">' in client.get("/m/login").text


@pytest.mark.parametrize("lang", ["<script>alert(1)</script>", "fr", "zh-cn", ""])
def test_an_unknown_language_is_english_and_not_remembered(client: TestClient, lang: str) -> None:
    r = client.get("/login", params={"lang": lang})
    assert '<html lang="en">' in r.text and "<script>alert(1)" not in r.text
    assert staff_text.COOKIE not in r.headers.get("set-cookie", "")


def test_typed_text_is_escaped_in_chinese_too(client: TestClient) -> None:
    login(client, "agent")
    hostile = '"><script>alert(1)</script>'
    page = client.get("/console", params={"q": hostile, "lang": "zh-CN"}).text
    assert "<script>alert(1)" not in page
    assert "本经销商没有与“&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;”匹配的车辆。" in page
    assert 'href="/console?q=%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E&amp;lang=en"' in page
