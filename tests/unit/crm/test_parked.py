"""Parked events are not kept forever: expiry by age and attempts, a cap per key, dead letters."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import select

from crm import store as st
from crm.jobs import DeadLetter, expire_parked, retry_parked, run_events
from crm.schema import Vehicle
from crm.tables import ParkedEvent
from tests.unit.crm.conftest import T0, Dealer
from tests.unit.crm.test_engine import due, engine

UNKNOWN, OTHER = "LNEW0000000000001", "LNEW0000000000002"


def open_rows(dealer: Dealer) -> list[ParkedEvent]:
    with dealer.store.tx() as s:
        rows = s.scalars(select(ParkedEvent).where(ParkedEvent.resolved_at.is_(None)))
        return list(rows)


def test_old_and_over_retried_events_are_dead_lettered(dealer: Dealer) -> None:
    eng = engine()
    run_events(dealer.store, eng, [due(UNKNOWN, T0, 3, 50), due(OTHER, T0, 3, 50, cycle="c2")])
    now = st.utcnow()
    with dealer.store.tx() as s:
        _first, second = s.scalars(select(ParkedEvent).order_by(ParkedEvent.id))
        second.attempts = 39
    # one more failed retry takes the second to the attempt limit; the first is young
    assert retry_parked(dealer.store, eng, now=now)["still_parked"] == 2
    dead: list[DeadLetter] = []
    later = now + dt.timedelta(days=1)
    totals = retry_parked(dealer.store, eng, now=later, dead=dead)
    assert totals["dead_lettered"] == 1 and totals["still_parked"] == 1
    value, headers = dead[0]
    assert json.loads(value)["vin"] == OTHER and headers["reason"] == b"crm_parked_expired"
    assert headers["attempts"] == b"40" and b"unknown VIN" in headers["detail"]
    # two weeks on, the first has expired by age even though it is not due for a retry
    dead.clear()
    totals = retry_parked(dealer.store, eng, now=now + dt.timedelta(days=15), dead=dead)
    assert totals["dead_lettered"] == 1 and json.loads(dead[0][0])["vin"] == UNKNOWN
    assert open_rows(dealer) == []
    with dealer.store.tx() as s:
        rows = list(s.scalars(select(ParkedEvent)))
        assert all(r.dead_at is not None and r.resolved_at == r.dead_at for r in rows)
        # registering the VIN now changes nothing: dead letters are not retried
        s.add(Vehicle(vin=UNKNOWN, model="ID.4"))
    assert retry_parked(dealer.store, eng, now=now + dt.timedelta(days=16))["resolved"] == 0


def test_a_key_keeps_at_most_the_cap_newest_first(dealer: Dealer) -> None:
    eng = engine()
    events = [due(UNKNOWN, T0 + dt.timedelta(hours=i), 3, 50, cycle=f"c{i}") for i in range(7)]
    run_events(dealer.store, eng, [*events, due(OTHER, T0, 3, 50)])
    dead: list[DeadLetter] = []
    with dealer.store.tx() as s:
        totals = expire_parked(s, st.utcnow(), dead, max_per_key=3)
    assert totals["over_cap"] == 4 and totals["dead_lettered"] == 4
    assert {h["reason"] for _, h in dead} == {b"crm_parked_over_cap"}
    assert sorted(json.loads(v)["data"]["cycle"] for v, _ in dead) == ["c0", "c1", "c2", "c3"]
    kept = open_rows(dealer)
    assert sorted(r.event["data"]["cycle"] for r in kept if r.key == UNKNOWN) == ["c4", "c5", "c6"]
    assert [r.key for r in kept if r.key == OTHER] == [OTHER]


def test_the_worker_job_returns_given_up_events_for_the_dead_letter_topic(dealer: Dealer) -> None:
    from collections import Counter

    from crm.agents import periodic

    eng = engine()
    run_events(dealer.store, eng, [due(UNKNOWN, T0, 3, 50)])
    with dealer.store.tx() as s:
        row = s.scalars(select(ParkedEvent)).one()
        row.created_at = st.utcnow() - dt.timedelta(days=15)
    stats: Counter[str] = Counter()
    dead = periodic(dealer.store, eng, None, stats)
    assert [h["reason"] for _, h in dead] == [b"crm_parked_expired"]
    assert stats["parked_dead_lettered"] == 1 and open_rows(dealer) == []
    assert periodic(dealer.store, eng, None, stats) == []  # given up once only
