"""Issue 18: the oil-life rule (maintenance coupon once per oil interval) and the silent-car
call-centre card, opened by a ``silent`` alert and closed by the episode's ``silent_end``."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest
from sqlalchemy import select

from core.errors import DecodeError
from core.topics import KAFKA_ALERTS
from crm.agents import handle_record
from crm.engine import RuleEngine
from crm.normalize import from_alert, from_prediction
from crm.rules import shipped_rules
from crm.schema import Coupon
from crm.tables import InboxItem, OutboxMessage
from tests.unit.crm.conftest import T0, VIN, VIN2, Dealer


def us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def oil(vin: str, life: float, t: dt.datetime, interval: str = "oil@1700000000") -> bytes:
    return json.dumps({"vin": vin, "kind": "oil_life", "ts_us": us(t), "value": life,
                       "revs": 1.2e7, "interval": interval}).encode()  # fmt: skip


def silent(vin: str, kind: str, seen: dt.datetime, speed: float = 123.0) -> bytes:
    alarm = f"{vin}:silent:{us(seen)}"
    return json.dumps({"kind": kind, "vin": vin, "device": "car-1", "ts_us": us(seen),
                       "received_us": us(seen) + 130_000_000, "alarm_id": alarm,
                       "data": {"speed_kmh": speed, "silent_s": 130.0, "device_status": "offline"},
                       "location": None, "severity": "critical"}).encode()  # fmt: skip


def test_oil_life_prediction_is_a_crm_event_and_bad_ones_are_refused() -> None:
    (ev,) = from_prediction(oil(VIN, 0.184, T0))
    assert (ev.kind, ev.vin, ev.data) == ("oil_life", VIN, {"life_pct": 18.4,
                                                            "interval": "oil@1700000000"})  # fmt: skip
    for bad in (1.5, -0.1, float("nan"), "0.5"):
        doc = json.loads(oil(VIN, 0.5, T0))
        doc["value"] = bad
        with pytest.raises(DecodeError):
            from_prediction(json.dumps(doc).encode())


def test_oil_life_coupon_once_per_oil_interval_for_consenting_members(dealer: Dealer) -> None:
    eng = RuleEngine(shipped_rules(), webhook_url="http://127.0.0.1:9/hook")
    with dealer.store.tx() as s:
        (far,) = from_prediction(oil(VIN, 0.6, T0))
        assert not eng.handle(s, far).fired  # 60 % left: nothing
        fired = []
        for day, life in enumerate((0.2, 0.19, 0.15)):  # at 20 % and below: once
            (ev,) = from_prediction(oil(VIN, life, T0 + dt.timedelta(days=day)))
            fired += eng.handle(s, ev).fired
        (f,) = fired
        assert f.rule == "oil-life-coupon" and f.messages == 2
        coupon = s.get(Coupon, f.coupon)
        assert coupon is not None and coupon.template_code == "maintenance"
        assert coupon.owner_id == dealer.member
        mail = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == "email")).one()
        assert "机油" in mail.subject and "约 20%" in mail.body
        (other,) = from_prediction(oil(VIN2, 0.05, T0))  # no member, no consent
        assert not eng.handle(s, other).fired
        # the next oil interval (after an oil change), past the cool-down: a new coupon
        later = T0 + dt.timedelta(days=200)
        (again,) = from_prediction(oil(VIN, 0.1, later, interval="oil@1720000000"))
        assert [x.rule for x in eng.handle(s, again).fired] == ["oil-life-coupon"]


def test_silent_car_opens_one_call_centre_card_per_episode_and_reporting_closes_it(
    dealer: Dealer,
) -> None:
    eng, stats = RuleEngine(shipped_rules(), staff_lang="en"), Counter[str]()
    seen = T0 + dt.timedelta(hours=1)
    for _ in range(2):  # a restarted worker raises the same episode again: one card
        handle_record(dealer.store, eng, KAFKA_ALERTS, silent(VIN, "silent", seen), stats)
    with dealer.store.tx() as s:
        (card,) = s.scalars(select(InboxItem))
        assert (card.role, card.kind, card.priority, card.vin) == (
            "call_centre",
            "silent_car",
            0,
            VIN,
        )
        assert "123 km/h" in card.title and "offline" in card.body and card.done_at is None
    other = silent(VIN, "silent_end", seen - dt.timedelta(hours=5))  # another episode's end
    handle_record(dealer.store, eng, KAFKA_ALERTS, other, stats)
    with dealer.store.tx() as s:
        assert s.scalars(select(InboxItem)).one().done_at is None
    handle_record(dealer.store, eng, KAFKA_ALERTS, silent(VIN, "silent_end", seen), stats)
    with dealer.store.tx() as s:
        assert s.scalars(select(InboxItem)).one().done_at is not None
    assert stats["silent_closed"] == 1
    # the next episode is a new card
    handle_record(
        dealer.store, eng, KAFKA_ALERTS, silent(VIN, "silent", seen + dt.timedelta(hours=2)), stats
    )
    with dealer.store.tx() as s:
        assert len(s.scalars(select(InboxItem).where(InboxItem.done_at.is_(None))).all()) == 1


def test_a_silent_alert_without_an_episode_id_is_refused() -> None:
    doc = json.loads(silent(VIN, "silent", T0))
    del doc["alarm_id"]
    with pytest.raises(DecodeError):
        from_alert(json.dumps(doc).encode())
    assert from_alert(json.dumps({**doc, "kind": "something_else"}).encode()) == []
