"""Issue 18 item 3 on the advisor's page: a battery problem joins the vehicle's one maintenance
card (no card for a healthy battery, one card for repeated records, escaped text)."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from core.topics import KAFKA_PREDICTIONS
from crm.store import CrmStore
from crm.tables import InboxItem
from dashboards.inbox import record_filer
from tests.unit.dashboards.conftest import VIN_A, login
from tests.unit.dashboards.test_inbox import _service, cards

DAY_US = 86_400_000_000


def _battery(ts_us: int, problems: list[str], **extra: Any) -> dict[str, Any]:
    return {"vin": VIN_A, "kind": "battery", "ts_us": ts_us, "problems": problems,
            "due": bool(problems), "episode": "battery@1767225600" if problems else "",
            "lv_health_pct": 0.0, "lv_crank_v": 9.3, "lv_cranks": 4, "ev_spread_mv": None,
            "ev_soh_pct": None, **extra}  # fmt: skip


def _maintenance(store: CrmStore) -> list[InboxItem]:
    with store.tx() as s:
        items = list(s.scalars(select(InboxItem).where(InboxItem.kind == "maintenance")))
        s.expunge_all()
    return items


def test_a_healthy_battery_files_no_card(app_store: Any) -> None:
    store = app_store[1]
    file = record_filer(store)
    t0 = int(time.time() * 1e6)
    for i in range(5):
        file(KAFKA_PREDICTIONS, _battery(t0 + i * DAY_US, []))
    assert _maintenance(store) == []


def test_a_weak_battery_joins_the_vehicles_one_maintenance_card(
    client: TestClient, app_store: Any
) -> None:
    store = app_store[1]
    file = record_filer(store)
    t0 = int(time.time() * 1e6) - 5 * DAY_US
    file(KAFKA_PREDICTIONS, _service(t0, 12.0, 19_300.0))
    for i in range(3):  # repeated (a cool-down later each): still one card
        file(KAFKA_PREDICTIONS, _battery(t0 + (1 + i) * DAY_US, ["lv_replace"],
                                         lv_crank_v=9.3 + i / 10))  # fmt: skip
    (card,) = _maintenance(store)
    assert card.data["due"] == ["service_due", "battery"]
    assert card.title.endswith(" · Battery check")
    assert len(card.data["parts"]["battery"]["evidence"]) == 3
    file(KAFKA_PREDICTIONS, _battery(t0 + 4 * DAY_US, [["lv_weak"], {"a": 1}]))  # no crash
    file(KAFKA_PREDICTIONS, _battery(t0 + 4 * DAY_US, ["<img src=x onerror=alert(1)>"]))
    login(client, "advisor")
    (html,) = [c for c in cards(client.get("/inbox").text) if 'data-kind="maintenance"' in c]
    assert 'data-part="battery"' in html and "<img" not in html
    assert "battery fine" in html  # an unknown problem name is not shown, nor taken as due
    (card,) = _maintenance(store)
    assert card.data["due"] == ["service_due"]


def test_a_battery_card_alone_and_the_ev_pack_wording(client: TestClient, app_store: Any) -> None:
    store = app_store[1]
    file = record_filer(store)
    t0 = int(time.time() * 1e6)
    file(KAFKA_PREDICTIONS, _battery(t0, ["ev_imbalance", "ev_soh_low"], lv_crank_v=None,
                                     ev_spread_mv=142.0, ev_soh_pct=76.5))  # fmt: skip
    (card,) = _maintenance(store)
    assert card.title == "Battery check" and card.data["due"] == ["battery"]
    login(client, "advisor")
    (html,) = [c for c in cards(client.get("/inbox").text) if 'data-kind="maintenance"' in c]
    assert "EV pack: cells out of balance (cell spread 142 mV)" in html
    assert "EV pack: state of health low (76.5 %)" in html


def test_a_fading_pack_shows_its_trend_and_70_percent_date(
    client: TestClient, app_store: Any
) -> None:
    store = app_store[1]
    file = record_filer(store)
    t0 = int(time.time() * 1e6)
    file(KAFKA_PREDICTIONS, _battery(t0, ["ev_soh_low", "ev_soh_fading"], lv_crank_v=None,
                                     ev_soh_pct=78.4, ev_soh_pct_per_year=-6.25,
                                     ev_soh_eol_date="2028-05-14"))  # fmt: skip
    (card,) = _maintenance(store)
    assert card.data["due"] == ["battery"]
    login(client, "advisor")
    (html,) = [c for c in cards(client.get("/inbox").text) if 'data-kind="maintenance"' in c]
    # the trend is said once, after the last of the pack's problems
    assert "EV pack: state of health low (78.4 %)" in html
    assert "EV pack: state of health falling fast (78.4 %, -6.2 %/year, 70 % about 2028-05)" in html
