"""The rules engine on SQLite and PostgreSQL: shipped rules, exactly-once replay, cool-downs,
rate limits, parking of unknown vehicles, dry run."""

from __future__ import annotations

import datetime as dt
import json
import threading

from sqlalchemy import func, select

from core.crm_events import CrmEvent
from core.wire import Event, encode_event
from crm import loyalty
from crm import store as st
from crm.engine import RuleEngine
from crm.jobs import dry_run, retry_parked, run_events, scan
from crm.normalize import from_alert, from_device_event, from_prediction
from crm.rules import shipped_rules
from crm.schema import Coupon, Effect, PlateAssignment, Vehicle
from crm.tables import InboxItem, OutboxMessage, ParkedEvent
from tests.unit.crm.conftest import T0, VIN, VIN2, Dealer

HOOK = "http://127.0.0.1:9/hook"


def engine() -> RuleEngine:
    return RuleEngine(shipped_rules(), webhook_url=HOOK)


def us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def due(vin: str, t: dt.datetime, days: float, km_left: float, cycle: str = "c1") -> CrmEvent:
    rec = {"vin": vin, "kind": "service_due", "ts_us": us(t), "days": days,
           "km": 45000.0, "odo": 45000.0 - km_left, "cycle": cycle}  # fmt: skip
    (ev,) = from_prediction(json.dumps(rec).encode())
    return ev


def device_event(
    device: str, seq: int, kind: str, t: dt.datetime, **data: object
) -> list[CrmEvent]:
    return from_device_event(encode_event(Event(device, "boot1", seq, kind, us(t), 5, dict(data))))


def crash(vin: str, t: dt.datetime) -> CrmEvent:
    doc = {"kind": "crash", "vin": vin, "device": "car-1", "ts_us": us(t),
           "data": {"trigger": "high_g"}, "location": {"lat": 31.2, "lon": 121.5}}  # fmt: skip
    (ev,) = from_alert(json.dumps(doc).encode())
    return ev


def counts(d: Dealer) -> tuple[int, int, int, int]:
    with d.store.tx() as s:
        return (
            s.scalar(select(func.count(Coupon.id))) or 0,
            s.scalar(select(func.count(OutboxMessage.id))) or 0,
            s.scalar(select(func.count(InboxItem.id))) or 0,
            s.scalar(select(func.count(Effect.id))) or 0,
        )


def event_log() -> list[CrmEvent]:
    """A month of events across both vehicles: predictions every day, a DTC, a gate visit, a crash."""
    log: list[CrmEvent] = []
    for day in range(30):
        t = T0 + dt.timedelta(days=day)
        log += [due(VIN, t, 40 - day, 2000 - 40 * day), due(VIN2, t, 40 - day, 2000 - 40 * day)]
    log += device_event("car-1", 1, "dtc", T0 + dt.timedelta(days=3), codes=["P0301", "P0456"])
    log += device_event("gate-1", 1, "gate.plate", T0 + dt.timedelta(days=5), plate="沪A12345",
                        camera="gate-1")  # fmt: skip
    log.append(crash(VIN, T0 + dt.timedelta(days=9)))
    return log


def test_service_due_coupon_only_for_consenting_members(dealer: Dealer) -> None:
    eng = engine()
    with dealer.store.tx() as s:
        far = eng.handle(s, due(VIN, T0, days=90, km_left=5000))
        assert not far.fired and far.skipped["conditions"] == 1
        out = eng.handle(s, due(VIN, T0, days=20, km_left=5000))
        (f,) = out.fired
        assert f.rule == "service-due-coupon" and f.messages == 2  # e-mail and webhook
        coupon = s.get(Coupon, f.coupon)
        assert coupon is not None and coupon.owner_id == dealer.member and coupon.vin == VIN
        # valid until the predicted due date (day 20, end of day) plus 14 days of grace
        assert coupon.valid_until == dt.datetime(
            2026, 3, 21, 23, 59, 59, tzinfo=dt.UTC
        ) + dt.timedelta(days=14)
        # the other owner is no member and gave no marketing consent: nothing
        assert not eng.handle(s, due(VIN2, T0, days=5, km_left=100)).fired
        mail = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == "email")).one()
        assert mail.target == "wang@example.com" and "保养" in mail.subject
        assert coupon.valid_until.strftime("%Y-%m-%d") in mail.body


def test_replaying_the_whole_log_issues_nothing_twice(dealer: Dealer) -> None:
    log = event_log()
    first = run_events(dealer.store, engine(), log)
    after_first = counts(dealer)
    # one coupon (service due), one arrival card, one expert card (P0301), one crash card
    assert after_first[0] == 1 and after_first[2] == 3, after_first
    assert first["fired"] == 4 and first["parked"] == 0
    again = run_events(dealer.store, engine(), log)  # a restarted worker re-reads the topic
    assert counts(dealer) == after_first
    assert again["fired"] == 0 and again["duplicate"] + again["cooldown"] >= 4


def test_cooldown_and_rate_limit(dealer: Dealer) -> None:
    eng = engine()
    with dealer.store.tx() as s:
        # a new service cycle 10 days later is still within the 30-day cool-down
        assert eng.handle(s, due(VIN, T0, 10, 500, cycle="a")).fired
        assert (
            eng.handle(s, due(VIN, T0 + dt.timedelta(days=10), 10, 500, cycle="b")).skipped[
                "cooldown"
            ]
            == 1
        )
        assert eng.handle(s, due(VIN, T0 + dt.timedelta(days=31), 10, 500, cycle="c")).fired
        # DTC: same code the next morning is within the one-day cool-down... on another code fires
        t = T0 + dt.timedelta(days=40)
        assert eng.handle(s, device_event("car-1", 7, "dtc", t, codes=["P0301"])[0]).fired
        again = device_event("car-1", 8, "dtc", t + dt.timedelta(hours=20), codes=["P0301"])[0]
        assert eng.handle(s, again).skipped["duplicate"] == 1  # same (rule, vin, code) key
        other = device_event("car-1", 9, "dtc", t + dt.timedelta(hours=2), codes=["P0302"])[0]
        assert eng.handle(s, other).skipped["cooldown"] == 1
    # marketing group: at most 2 per customer in 7 days (service coupon + coupon reminders)
    with dealer.store.tx() as s:
        for i in range(3):
            st.issue_coupon(s, "maintenance", dealer.member, T0 + dt.timedelta(days=34 + i))
    totals = scan(dealer.store, eng, now=T0 + dt.timedelta(days=32))
    assert totals["fired"] == 1 and totals["rate_limited"] == 2, totals


def test_tier_upgrade_welcome_and_expiry_reminder_once(dealer: Dealer) -> None:
    eng = engine()
    with dealer.store.tx() as s:
        for _ in range(3):
            loyalty.record_visit(s, dealer.member, spend=2000)
    now = st.utcnow()
    first = scan(dealer.store, eng, now=now)
    assert first["fired"] >= 1
    with dealer.store.tx() as s:
        welcome = s.scalars(select(Coupon).where(Coupon.template_code == "tier-welcome")).one()
        assert welcome.owner_id == dealer.member
    # 84 days later the welcome coupon has 6 days left: one reminder, and one only
    later = now + dt.timedelta(days=84)
    assert scan(dealer.store, eng, now=later)["fired"] == 1
    assert scan(dealer.store, eng, now=later + dt.timedelta(days=1))["fired"] == 0
    with dealer.store.tx() as s:
        reminders = s.scalars(
            select(OutboxMessage).where(
                OutboxMessage.payload["template"].as_string() == "coupon_expiring"
            )
        ).all()
        assert len(reminders) == 1 and " 6 " in reminders[0].subject


def test_dtc_routing_and_crash_priority(dealer: Dealer) -> None:
    eng = engine()
    with dealer.store.tx() as s:
        evs = device_event("car-1", 1, "dtc", T0, codes=["P0456", "P0217"])
        outs = [eng.handle(s, e) for e in evs]
        assert [len(o.fired) for o in outs] == [1, 0]  # P0217 overheating is high, P0456 low
        eng.handle(s, crash(VIN, T0))
        cards = s.scalars(select(InboxItem).order_by(InboxItem.priority)).all()
        assert [(c.role, c.priority) for c in cards] == [("call_centre", 0), ("expert", 1)]
        assert "P0217" in cards[1].title and VIN in cards[0].title
        hook = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == "webhook")).one()
        assert hook.target == HOOK and hook.payload["rule"] == "crash-call-centre"


INTRUSION = {
    "kind": "dos", "score": 0.62, "flagged": 6667, "frames": 10752,
    "reasons": {"unknown_id": 6667, "evil": 5, "high_rate": "x"}, "distinct_ids": 1,
    "ids": [{"id": "0x000", "extended": False, "known": False, "frames": 6667},
            {"id": "<img src=x>", "frames": 1}, "junk"],
    "source": "can", "vehicle_model": "gt350", "suppressed": 0, "follow_up": False,
}  # fmt: skip


def intrusion(seq: int, t: dt.datetime, doc: dict[str, object]) -> list[CrmEvent]:
    ev = Event("car-1", "boot1", seq, "intrusion", us(t), 1, dict(doc))
    return from_device_event(encode_event(ev))


def test_intrusion_events_become_one_security_card_per_cooldown(dealer: Dealer) -> None:
    eng = engine()
    with dealer.store.tx() as s:
        (ev,) = intrusion(1, T0, INTRUSION)
        assert ev.data["reasons"] == "unknown_id 6667"  # unknown reasons and non-counts dropped
        assert ev.data["ids"] == "0x000 (unknown, 6667 frames)"  # a row that is no CAN id dropped
        assert eng.handle(s, ev).fired
        later = intrusion(2, T0 + dt.timedelta(minutes=5), INTRUSION)
        assert not eng.handle(s, later[0]).fired  # within the rule's 30 min cool-down
        cards = s.scalars(select(InboxItem)).all()
        assert [(c.role, c.kind, c.priority, c.vin) for c in cards] == [
            ("call_centre", "intrusion", 1, VIN)
        ]
        assert "CAN" in cards[0].title and "dos" in cards[0].title and "6667" in cards[0].body


def test_malformed_intrusion_events_are_refused() -> None:
    import pytest

    from core.errors import DecodeError

    for bad in ({"kind": "party"}, {"kind": ["dos"]}, {**INTRUSION, "score": 2.0},
                {**INTRUSION, "flagged": "many"}, {**INTRUSION, "frames": float("nan")}):  # fmt: skip
        with pytest.raises(DecodeError):
            intrusion(1, T0, bad)


def test_unknown_vehicles_are_parked_and_retried(dealer: Dealer) -> None:
    eng = engine()
    gate = device_event("gate-1", 3, "gate.plate", T0, plate="沪C00001", camera="gate-1")
    unknown = device_event("car-9", 1, "dtc", T0, codes=["P0301"])
    totals = run_events(dealer.store, eng, gate + unknown + [due("LNEW0000000000001", T0, 3, 50)])
    assert totals["parked"] == 3 and totals["fired"] == 0
    with dealer.store.tx() as s:
        reasons = sorted(p.reason for p in s.scalars(select(ParkedEvent)))
        assert reasons == ["unknown VIN 'LNEW0000000000001'", "unknown device 'car-9'",
                           "unknown plate '沪C00001'"]  # fmt: skip
    now = st.utcnow()  # parked events are retried on the wall clock, whatever their own time
    assert retry_parked(dealer.store, eng, now=now)["still_parked"] == 3
    # the plate is registered to the member's car; the device is installed in VIN2
    with dealer.store.tx() as s:
        s.add(PlateAssignment(vin=VIN, plate="沪C00001", valid_from=T0 - dt.timedelta(days=1)))
        v2 = s.get(Vehicle, VIN2)
        assert v2 is not None
        v2.device_id = "car-9"
    backing_off = retry_parked(dealer.store, eng, now=now + dt.timedelta(seconds=30))
    assert backing_off["resolved"] == 0
    res = retry_parked(dealer.store, eng, now=now + dt.timedelta(minutes=3))
    assert res["resolved"] == 2 and res["fired"] == 2 and res["still_parked"] == 1


def test_dry_run_reports_without_issuing(dealer: Dealer) -> None:
    report = dry_run(dealer.store, engine(), event_log())
    assert report["fired"] == 4
    assert report["per_rule"] == {"service-due-coupon": 1, "dtc-high-expert": 1,
                                  "gate-arrival-card": 1, "crash-call-centre": 1}  # fmt: skip
    coupon = next(e for e in report["effects"] if e["rule"] == "service-due-coupon")
    assert coupon["valid_until"] and "customer.consent.marketing == true" in coupon["because"]
    assert counts(dealer) == (0, 0, 0, 0)


def test_concurrent_workers_issue_one_coupon(dealer: Dealer) -> None:
    ev = due(VIN, T0, 5, 100)
    barrier = threading.Barrier(4)
    fired: list[int] = []

    def work() -> None:
        eng = engine()
        barrier.wait()
        try:
            with dealer.store.tx() as s:
                fired.append(len(eng.handle(s, ev).fired))
        except Exception:  # SQLite: a writer that lost the lock race; its tx rolled back
            fired.append(-1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts(dealer)[0] == 1 and counts(dealer)[3] == 1
    assert fired.count(1) == 1


def test_face_arrival_only_with_face_consent(dealer: Dealer) -> None:
    eng = engine()
    (face,) = device_event("gate-1", 4, "gate.face", T0, member_id=dealer.member, similarity=0.71,
                           camera="gate-1")  # fmt: skip
    with dealer.store.tx() as s:
        out = eng.handle(s, face)
        assert not out.fired and out.skipped["no_face_consent"] == 1
        st.set_consent(s, dealer.member, "face", True)
    with dealer.store.tx() as s:
        (f,) = eng.handle(s, face).fired
        card = s.scalars(select(InboxItem)).one()
        assert (
            f.rule == "gate-arrival-card"
            and card.role == "advisor"
            and card.customer_id == dealer.member
        )
