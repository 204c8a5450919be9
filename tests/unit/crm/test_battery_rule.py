"""Issue 18 item 3: the stream's battery records as CRM events (hostile ones refused) and the
battery-check rule: one maintenance coupon and message per problem episode, for consenting members."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from core.errors import DecodeError
from core.topics import KAFKA_PREDICTIONS
from crm.agents import dead_letter_of, handle_record
from crm.engine import RuleEngine
from crm.normalize import from_prediction
from crm.rules import shipped_rules
from crm.schema import Coupon
from crm.tables import OutboxMessage
from tests.unit.crm.conftest import T0, VIN, VIN2, Dealer


def us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def battery(vin: str, t: dt.datetime, problems: list[str], episode: str = "battery@1700000000",
            **extra: Any) -> bytes:  # fmt: skip
    doc = {"vin": vin, "kind": "battery", "ts_us": us(t), "problems": problems,
           "due": bool(problems), "episode": episode if problems else "",
           "lv_health_pct": 0.0, "lv_soc_pct": None, "lv_crank_v": 9.3, "lv_cranks": 2,
           "ev_spread_mv": None, "ev_soh_pct": None, **extra}  # fmt: skip
    return json.dumps(doc).encode()


def test_a_battery_record_is_a_crm_event() -> None:
    (ev,) = from_prediction(battery(VIN, T0, ["lv_replace", "ev_imbalance"], ev_spread_mv=140.0))
    assert (ev.kind, ev.vin) == ("battery", VIN)
    assert ev.data["problems"] == "lv_replace,ev_imbalance" and ev.data["due"] is True
    assert ev.data["lv_bad"] and ev.data["ev_bad"] and ev.data["ev_spread_mv"] == 140.0


def test_a_fading_pack_carries_its_trend_into_the_event() -> None:
    rec = battery(VIN, T0, ["ev_soh_fading"], ev_soh_pct=84.0, ev_soh_pct_per_year=-6.0,
                  ev_soh_eol_date="2029-02-27")  # fmt: skip
    (ev,) = from_prediction(rec)
    assert ev.data["problems"] == "ev_soh_fading" and ev.data["ev_bad"]
    assert ev.data["ev_soh_pct_per_year"] == -6.0 and ev.data["ev_soh_eol_date"] == "2029-02-27"
    (old,) = from_prediction(battery(VIN, T0, ["lv_weak"]))  # a record from before the trend
    assert old.data["ev_soh_eol_date"] is None and old.data["ev_soh_pct_per_year"] is None


@pytest.mark.parametrize(
    "change",
    [
        {"problems": "lv_weak"},  # not a list
        {"problems": ["lv_weak"] * 50},  # absurd size
        {"problems": ["<script>"]},  # not a known problem
        {"problems": [["lv_weak"]]},
        {"due": False},  # disagrees with the problems
        {"due": "yes"},
        {"episode": "x" * 10_000},
        {"episode": ["a"]},
        {"lv_crank_v": 1e308},
        {"lv_crank_v": "9.3"},
        {"ev_soh_pct": 250.0},
        {"ev_spread_mv": -1.0},
        {"ev_spread_mv": [3.9] * 100_000},  # a cell array where a number belongs
        {"ts_us": "now"},
        {"vin": None},
        {"ev_soh_pct_per_year": 2**70},  # past int64
        {"ev_soh_pct_per_year": -1e6},
        {"ev_soh_eol_date": "2029-02-30"},  # no such day
        {"ev_soh_eol_date": "next year"},
        {"ev_soh_eol_date": "2029-03-01" * 1000},
        {"ev_soh_eol_date": 20290301},
    ],
)
def test_hostile_battery_records_are_refused(change: dict[str, Any]) -> None:
    doc = json.loads(battery(VIN, T0, ["lv_weak"]))
    doc.update(change)
    with pytest.raises(DecodeError):
        from_prediction(json.dumps(doc).encode())


def test_nan_in_a_battery_record_is_dead_lettered_not_a_crash(dealer: Dealer) -> None:
    raw = battery(VIN, T0, ["lv_weak"]).replace(b'"lv_crank_v": 9.3', b'"lv_crank_v": NaN')
    eng, stats = RuleEngine(shipped_rules()), Counter[str]()
    with pytest.raises(DecodeError) as err:
        handle_record(dealer.store, eng, KAFKA_PREDICTIONS, raw, stats)
    _, headers = dead_letter_of(KAFKA_PREDICTIONS, raw, err.value)
    assert headers["reason"] == b"crm_bad_record"


def test_battery_check_coupon_once_per_episode_for_consenting_members(dealer: Dealer) -> None:
    eng = RuleEngine(shipped_rules(), webhook_url="http://127.0.0.1:9/hook")
    with dealer.store.tx() as s:
        (ok,) = from_prediction(battery(VIN, T0, []))
        assert not eng.handle(s, ok).fired  # a battery found fine again: nothing
        fired = []
        for day in range(3):  # the stream repeats the episode once a day: one coupon
            (ev,) = from_prediction(battery(VIN, T0 + dt.timedelta(days=day), ["lv_replace"]))
            fired += eng.handle(s, ev).fired
        (f,) = fired
        assert f.rule == "battery-check-coupon" and f.messages == 2
        coupon = s.get(Coupon, f.coupon)
        assert coupon is not None and coupon.template_code == "maintenance"
        assert coupon.owner_id == dealer.member and coupon.vin == VIN
        mail = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == "email")).one()
        assert "电池" in mail.subject and "${" not in mail.body
        (other,) = from_prediction(battery(VIN2, T0, ["ev_soh_low"]))  # no member, no consent
        assert not eng.handle(s, other).fired
        later = T0 + dt.timedelta(days=120)  # the battery failed again, months later
        (again,) = from_prediction(battery(VIN, later, ["lv_weak"], episode="battery@1710000000"))
        assert [x.rule for x in eng.handle(s, again).fired] == ["battery-check-coupon"]
