"""A sold car's new owner gets the rules' effects the previous owner already had (per-owner keys),
while replays still fire once; plain per-vehicle keys of a deployed database keep counting."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.crm_events import CrmEvent
from crm import loyalty
from crm import store as st
from crm.engine import Outcome, RuleEngine
from crm.normalize import from_anomaly
from crm.rules import shipped_rules
from crm.schema import Coupon, Effect, Vehicle
from crm.tables import CustomerContact, InboxItem, RuleFiring
from tests.unit.crm.conftest import T0, VIN, Dealer
from tests.unit.crm.test_anomaly_card import anomaly
from tests.unit.crm.test_engine import device_event, due

H = dt.timedelta(hours=1)
SOLD = T0 + 6 * H  # within the DTC rule's one-day cool-down of the old owner's fault


def dtc(seq: int, t: dt.datetime, code: str = "P0301", device: str = "car-1") -> CrmEvent:
    (ev,) = device_event(device, seq, "dtc", t, codes=[code])
    return ev


def sell(s: Session, at: dt.datetime = SOLD, *, member: bool = False) -> str:
    buyer = st.find_or_create_customer(s, {"phone": "+8613900000077"}, "赵女士")
    if member:
        loyalty.record_visit(s, buyer, spend=500)
        st.set_consent(s, buyer, "marketing", True, source="app")
        s.add(CustomerContact(customer_id=buyer, email="zhao@example.com", lang="zh-CN"))
    st.transfer_ownership(s, VIN, buyer, at)
    return buyer


def fired(out: Outcome, rule: str = "dtc-high-expert") -> bool:
    return any(f.rule == rule for f in out.fired)


def expert_cards(s: Session) -> list[tuple[str | None, str]]:
    rows = s.scalars(select(InboxItem).where(InboxItem.role == "expert").order_by(InboxItem.id))
    return [(c.customer_id, c.data["codes"][0]["code"]) for c in rows]


def test_a_sold_cars_fault_fires_again_for_the_new_owner_and_replays_fire_once(
    dealer: Dealer,
) -> None:
    eng = RuleEngine(shipped_rules())
    old = dtc(1, T0)
    with dealer.store.tx() as s:
        assert fired(eng.handle(s, old))
        buyer = sell(s)
    with dealer.store.tx() as s:
        new = dtc(2, SOLD + 2 * H)  # the same code, the new owner's, within the old cool-down
        first = eng.handle(s, new)
        assert fired(first) and first.customer_id == buyer
        assert eng.handle(s, new).skipped["duplicate"] == 1  # the same event twice: once
        # the worker re-reads the log after the sale: the old owner's event is the old owner's
        replay = eng.handle(s, old)
        assert not replay.fired and replay.customer_id == dealer.member
        assert replay.skipped["duplicate"] == 1
        # an old owner's event first seen after the sale counts against the old owner's history
        late = eng.handle(s, dtc(3, T0 + H, "P0302"))
        assert late.customer_id == dealer.member and late.skipped["cooldown"] == 1
        assert expert_cards(s) == [(dealer.member, "P0301"), (buyer, "P0301")]
        keys = sorted(s.scalars(select(Effect.key).where(Effect.rule == "dtc-high-expert")))
        own = [o.id for o in s.scalars(select(st.Ownership).where(st.Ownership.vin == VIN))]
        assert keys == sorted(f"dtc-high-expert|{VIN}@o{i}|P0301" for i in own)
        # the audit record stays the vehicle's (its dealer, its timeline)
        fires = s.scalars(select(st.AuditRecord).where(st.AuditRecord.action == "rule.fire"))
        assert {r.subject for r in fires} == {VIN}


def test_the_service_coupon_of_a_cycle_is_the_new_owners_too(dealer: Dealer) -> None:
    eng = RuleEngine(shipped_rules())
    with dealer.store.tx() as s:
        assert fired(eng.handle(s, due(VIN, T0, 10, 500, cycle="c7")), "service-due-coupon")
        buyer = sell(s, member=True)
    with dealer.store.tx() as s:
        after = due(VIN, SOLD + H, 9, 480, cycle="c7")
        assert fired(eng.handle(s, after), "service-due-coupon")  # no 30-day cool-down either
        assert not eng.handle(s, after).fired
        holders = s.scalars(select(Coupon.holder_id).where(Coupon.vin == VIN))
        assert sorted(holders) == sorted([dealer.member, buyer])


def test_plain_vehicle_keys_of_a_deployed_database_still_count(dealer: Dealer) -> None:
    """Effects written before per-owner keys (``rule|VIN|period``) block the same owner's
    replays and cool-downs, never the next owner's."""
    before = RuleEngine([dataclasses.replace(r, per_owner=False) for r in shipped_rules()])
    eng = RuleEngine(shipped_rules())
    old = dtc(1, T0)
    with dealer.store.tx() as s:
        assert fired(before.handle(s, old))
        assert s.scalar(select(Effect.key)) == f"dtc-high-expert|{VIN}|P0301"
    with dealer.store.tx() as s:
        assert eng.handle(s, old).skipped["duplicate"] == 1  # upgraded worker re-reads the log
        assert eng.handle(s, dtc(2, T0 + 2 * H)).skipped["duplicate"] == 1  # same code, same owner
        assert eng.handle(s, dtc(3, T0 + 3 * H, "P0302")).skipped["cooldown"] == 1
        buyer = sell(s)
    with dealer.store.tx() as s:
        assert fired(eng.handle(s, dtc(4, SOLD + H)))
        assert expert_cards(s) == [(dealer.member, "P0301"), (buyer, "P0301")]


def test_a_car_nobody_owns_keeps_the_plain_key_and_its_first_owner_starts_afresh(
    dealer: Dealer,
) -> None:
    eng = RuleEngine(shipped_rules())
    vin3 = "LSVAA4182E2999999"
    with dealer.store.tx() as s:
        s.add(Vehicle(vin=vin3, model="Passat", device_id="car-3"))
    with dealer.store.tx() as s:
        out = eng.handle(s, dtc(1, T0, device="car-3"))
        assert fired(out) and out.customer_id is None
        assert eng.handle(s, dtc(2, T0 + 2 * H, device="car-3")).skipped["duplicate"] == 1
        (sub,) = s.scalars(select(RuleFiring.subject).where(RuleFiring.rule == "dtc-high-expert"))
        assert sub == vin3
        buyer = st.find_or_create_customer(s, {"phone": "+8613900000078"}, "钱先生")
        st.transfer_ownership(s, vin3, buyer, T0 + 3 * H)
    with dealer.store.tx() as s:
        out = eng.handle(s, dtc(3, T0 + 4 * H, device="car-3"))
        assert fired(out) and out.customer_id == buyer


def test_an_anomaly_cool_down_starts_afresh_for_the_new_owner(dealer: Dealer) -> None:
    eng = RuleEngine(shipped_rules())
    rule = "anomaly-advisor-card"
    with dealer.store.tx() as s:
        assert fired(eng.handle(s, from_anomaly(anomaly(T0))[0]), rule)
        assert eng.handle(s, from_anomaly(anomaly(T0 + H))[0]).skipped["cooldown"] == 1
        buyer = sell(s)
    with dealer.store.tx() as s:
        out = eng.handle(s, from_anomaly(anomaly(SOLD + H))[0])  # the 1-day cool-down: the old
        assert fired(out, rule) and out.customer_id == buyer  # owner's, not the new one's
        assert eng.handle(s, from_anomaly(anomaly(SOLD + 2 * H))[0]).skipped["cooldown"] == 1


@pytest.mark.parametrize("rule", ["dtc-high-expert", "anomaly-advisor-card", "oil-life-coupon"])
def test_vehicle_rules_are_per_owner(rule: str) -> None:
    assert {r.id: r for r in shipped_rules()}[rule].per_owner
