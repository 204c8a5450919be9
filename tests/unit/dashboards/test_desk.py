"""The agent's desk (the console's start page): the call-centre queue with silent-car cards,
and the dealer's fleet with online / moving / alert status, filterable, no positions."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

from fastapi.testclient import TestClient

from core.topics import KAFKA_ALERTS, KAFKA_STATUS, KAFKA_VEHICLE_STATE
from crm.agents import handle_record
from crm.engine import RuleEngine
from crm.rules import shipped_rules
from dashboards.live import KafkaFeed
from tests.unit.dashboards.conftest import VIN_A, VIN_A2, VIN_B, login

NOW_US = int(dt.datetime.now(dt.UTC).timestamp() * 1e6)


def _state(vin: str, device: str, speed: float) -> bytes:
    return json.dumps({"vin": vin, "device": device, "ignition": True, "moving": speed > 1,
                       "signals": {"Vehicle.Speed": [NOW_US, speed]}, "health": "ok",
                       "last_seen_us": NOW_US,
                       "location": {"lat": 31.2, "lon": 121.5, "ts_us": NOW_US}}).encode()  # fmt: skip


def _silent(kind: str) -> bytes:
    return json.dumps({"kind": kind, "vin": VIN_A, "device": "demo-car-1", "ts_us": NOW_US,
                       "alarm_id": f"{VIN_A}:silent:{NOW_US}", "severity": "critical",
                       "data": {"speed_kmh": 123.0, "silent_s": 125.0, "device_status": "offline"}}).encode()  # fmt: skip


def test_desk_shows_queue_and_fleet_with_status_and_filters(
    client: TestClient, app_store: Any
) -> None:
    app, store = app_store
    feed = KafkaFeed("unused:9092", app.state.hub)
    feed.handle(KAFKA_VEHICLE_STATE, _state(VIN_A, "demo-car-1", 123.0))
    feed.handle(KAFKA_VEHICLE_STATE, _state(VIN_A2, "demo-car-2", 0.0))
    feed.handle(KAFKA_VEHICLE_STATE, _state(VIN_B, "b-car-1", 80.0))  # another dealer's
    feed.handle(KAFKA_STATUS, b'{"state": "offline", "boot_id": "b1", "ts_us": 1}', b"demo-car-1")
    feed.handle(KAFKA_STATUS, b'{"state": "online", "boot_id": "b2", "ts_us": 1}', b"demo-car-2")
    feed.handle(KAFKA_STATUS, b'{"state": "online"}', b"bad/device")  # counted, not kept
    feed.handle(KAFKA_STATUS, b'{"state": 7}', b"demo-car-2")
    assert feed.bad == 2 and app.state.hub.online("demo-car-2") == "online"
    feed.handle(KAFKA_ALERTS, _silent("silent"))
    eng, stats = RuleEngine(shipped_rules(), staff_lang="en"), Counter[str]()
    handle_record(store, eng, KAFKA_ALERTS, _silent("silent"), stats)  # the CRM worker's part
    login(client, "agent")
    page = client.get("/console").text
    assert 'id="queue"' in page and 'data-kind="silent_car"' in page and "SILENT CAR" in page
    desk = client.get("/console/desk").json()
    assert desk["counts"] == {"vehicles": 2, "online": 1, "moving": 1, "alert": 1, "open_cards": 1,
                              "open_security": 0}  # fmt: skip
    rows = {r["vin"]: r for r in desk["fleet"]}
    assert set(rows) == {VIN_A, VIN_A2}  # not dealer-b's
    assert rows[VIN_A]["online"] == "offline" and rows[VIN_A]["moving"] is True
    assert rows[VIN_A]["speed_kmh"] == 123 and rows[VIN_A]["alert"] == "silent_car"
    assert rows[VIN_A]["last_seen"].endswith(" UTC") and rows[VIN_A]["last_seen"][:2] == "20"
    assert rows[VIN_A2]["online"] == "online" and rows[VIN_A2]["alert"] is None
    assert "121.5" not in json.dumps(desk) and "121.5" not in client.get("/console").text
    for show, vins in (("alert", [VIN_A]), ("online", [VIN_A2]), ("offline", [VIN_A]),
                       ("moving", [VIN_A])):  # fmt: skip
        got = client.get("/console/desk", params={"show": show}).json()["fleet"]
        assert [r["vin"] for r in got] == vins, show
    assert [
        r["vin"] for r in client.get("/console/desk", params={"find": "002"}).json()["fleet"]
    ] == [VIN_A2]
    assert client.get("/console/desk", params={"show": "everything"}).status_code == 422
    html = client.get("/console/fleet", params={"show": "alert"}).text
    assert f'data-vin="{VIN_A}"' in html and f'data-vin="{VIN_A2}"' not in html
    # the car reports again: the card closes, the alert leaves the hub and the fleet
    handle_record(store, eng, KAFKA_ALERTS, _silent("silent_end"), stats)
    feed.handle(KAFKA_ALERTS, _silent("silent_end"))
    desk = client.get("/console/desk").json()
    assert desk["counts"]["open_cards"] == 0 and desk["counts"]["alert"] == 0
    assert [c["state"] for c in desk["queue"]] == ["done"]
    assert "SILENT CAR ·" not in client.get("/console").text  # the banner is down


def test_the_desk_needs_a_login_and_shows_only_the_own_dealers_fleet(client: TestClient) -> None:
    assert client.get("/console/desk", follow_redirects=False).status_code in (303, 401)
    login(client, "agent-b")
    assert [r["vin"] for r in client.get("/console/desk").json()["fleet"]] == [VIN_B]


def test_intrusion_cards_fill_the_security_queue_escaped(
    client: TestClient, app_store: Any
) -> None:
    from core.topics import KAFKA_EVENTS
    from core.wire import Event, encode_event

    _app, store = app_store
    data = {"kind": "fuzzing", "score": 0.31, "flagged": 1234, "frames": 4000,
            "reasons": {"unknown_id": 1234}, "distinct_ids": 900, "source": "can",
            "ids": [{"id": "0x1a3", "extended": False, "known": False, "frames": 3}],
            "vehicle_model": "<script>alert(1)</script>", "follow_up": False}  # fmt: skip
    ev = Event("demo-car-1", "boot1", 7, "intrusion", NOW_US, 1, data)
    eng, stats = RuleEngine(shipped_rules(), staff_lang="en"), Counter[str]()
    handle_record(store, eng, KAFKA_EVENTS, encode_event(ev), stats)  # the CRM worker's part
    login(client, "agent")
    desk = client.get("/console/desk").json()
    assert desk["counts"]["open_security"] == 1 and desk["counts"]["open_cards"] == 0
    (card,) = desk["security"]
    assert card["kind"] == "intrusion" and card["vin"] == VIN_A and desk["queue"] == []
    assert "CAN INTRUSION: fuzzing" in card["title"] and "0x1a3 (unknown, 3 frames)" in card["body"]
    rows = {r["vin"]: r for r in desk["fleet"]}
    assert rows[VIN_A]["alert"] == "intrusion"
    page = client.get("/console").text
    assert 'id="security"' in page and 'data-kind="intrusion"' in page
    assert "<script>alert(1)" not in page  # the bad model name never reaches the card
    # the partial the page polls shows the section too
    html = client.get("/console/fleet").text
    assert "Security queue" in html and "1234 of" in html
