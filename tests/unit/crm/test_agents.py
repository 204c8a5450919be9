"""The CRM Faust agents with ``agent.test_context()``: records in, effects in the database once,
bad records dead-lettered, crash locations kept only with consent, each record's offset committed
by the agent after its transactions."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import faust
from faust.types import TP
from sqlalchemy import func, select

from core.topics import KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_PREDICTIONS
from core.wire import Event, encode_event
from crm import store as st
from crm.agents import install_crm_agents
from crm.engine import RuleEngine
from crm.rules import shipped_rules
from crm.schema import Coupon
from crm.tables import InboxItem, LocationFix
from tests.unit.crm.conftest import T0, VIN, Dealer


def us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1e6)


def test_agents_apply_rules_once_and_dead_letter_bad_records(dealer: Dealer) -> None:
    loop = asyncio.new_event_loop()  # ours, so that it is closed (Faust would leave one open)
    app = faust.App("crm-test", store="memory://", value_serializer="raw", loop=loop)
    dead: list[tuple[bytes, dict[str, bytes]]] = []

    async def to_dead(value: bytes, headers: dict[str, bytes]) -> None:
        dead.append((value, headers))

    stats = install_crm_agents(app, dealer.store, RuleEngine(shipped_rules()), dead=to_dead)
    # The agents commit their offsets themselves (acks off, stream.offsets): the consumer's
    # committed positions (test_context's offsets start at 0) and its commit are stood in for
    commits: list[tuple[dict[TP, int], int]] = []

    async def commit(offsets: dict[TP, int]) -> bool:  # with how many records were handled then
        commits.append((dict(offsets), stats["records"] + stats["dead_lettered"]))
        return True

    app.consumer._commit = commit  # type: ignore[method-assign]
    agents = {a.name: a for a in app.agents.values()}
    for topic in (KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS):
        app.consumer._committed_offset[TP(topic, 0)] = 0
        assert agents[f"crm.{topic}"].channel.acks is False  # Faust neither acks nor commits
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", True)
    pred = json.dumps({"vin": VIN, "kind": "service_due", "ts_us": us(T0), "days": 12.0,
                       "km": 30000.0, "odo": 29500.0, "cycle": "2025"}).encode()  # fmt: skip
    crash = json.dumps({"kind": "crash", "vin": VIN, "device": "car-1", "ts_us": us(T0),
                        "data": {"trigger": "airbag"},
                        "location": {"lat": 31.2, "lon": 121.5}}).encode()  # fmt: skip
    dtc = encode_event(Event("car-1", "b", 1, "dtc", us(T0), 5, {"codes": ["P0301"]}))

    async def run() -> None:
        for topic, records in [
            (KAFKA_PREDICTIONS, [pred, pred, b"{not json"]),
            (KAFKA_ALERTS, [crash, crash]),
            (KAFKA_EVENTS, [dtc, b"CPE\x01garbage"]),
        ]:
            async with agents[f"crm.{topic}"].test_context() as agent:
                for r in records:
                    await agent.put(r)
                for _ in range(200):  # commits are batched (stream.offsets.COMMIT_S)
                    if commits and commits[-1][0] == {TP(topic, 0): len(records)}:
                        break
                    await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(run())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
        # the Kafka consumer thread Faust prepared (never started here) owns a loop of its own
        thread = getattr(app.consumer, "_thread", None)
        if thread is not None and not thread.thread_loop.is_closed():
            thread.thread_loop.close()
    assert stats["records"] == 5 and stats["fired"] == 3 and stats["dead_lettered"] == 2
    assert [h["topic"] for _, h in dead] == [KAFKA_PREDICTIONS.encode(), KAFKA_EVENTS.encode()]
    assert b"not JSON" in dead[0][1]["detail"]
    # per topic, commits of the offset after handled records only, never backwards, the last
    # one after all of them (batched: fewer commits than records is fine)
    for topic, before, n in [(KAFKA_PREDICTIONS, 0, 3), (KAFKA_ALERTS, 3, 2), (KAFKA_EVENTS, 5, 2)]:
        mine = [(o[TP(topic, 0)], handled) for o, handled in commits if TP(topic, 0) in o]
        assert mine and mine[-1][0] == n, (topic, commits)
        assert [o for o, _ in mine] == sorted(o for o, _ in mine)
        assert all(handled >= before + o for o, handled in mine), (topic, mine)
    assert all(len(o) == 1 for o, _ in commits)
    with dealer.store.tx() as s:
        assert s.scalar(select(func.count(Coupon.id))) == 1
        roles: Any = sorted(s.scalars(select(InboxItem.role)))
        assert roles == ["call_centre", "expert"]
        assert s.scalar(select(func.count(LocationFix.id))) == 1  # consented, kept once


def test_db_runner_waits_out_a_locked_database(dealer: Dealer) -> None:
    """A second connection holds SQLite's write lock for a while: the agent's work waits and
    then goes through instead of crashing the agent."""
    import threading
    import time

    from sqlalchemy import text

    from crm.agents import DbRunner

    if dealer.store.engine.dialect.name != "sqlite":
        return  # PostgreSQL row locks simply wait; the retry path is SQLite's
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with dealer.store.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            conn.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait(5)
    engine = st.make_engine(str(dealer.store.engine.url), connect_args={"timeout": 0.05})

    def write() -> int:
        with engine.begin() as conn:
            conn.execute(text("PRAGMA busy_timeout=50"))
            conn.execute(text("INSERT INTO coupon_templates (code, title_zh, title_en, value, "
                              "valid_days, shareable) VALUES ('x', 'x', 'x', 1, 1, 1)"))  # fmt: skip
        return 1

    runner = DbRunner(max_delay_s=0.2)
    threading.Timer(0.5, release.set).start()
    t0 = time.monotonic()
    assert asyncio.run(runner(write)) == 1
    assert time.monotonic() - t0 >= 0.4 and not runner.broken
    holder.join()
    engine.dispose()


def test_gate_sightings_keep_faces_only_with_consent(dealer: Dealer) -> None:
    from collections import Counter

    from crm.agents import handle_record
    from crm.tables import GateSighting

    eng, stats = RuleEngine(shipped_rules()), Counter[str]()
    plate = encode_event(Event("gate-1", "b", 1, "gate.plate", us(T0), 5,
                               {"plate": "沪A12345", "camera": "gate-1"}))  # fmt: skip
    face = encode_event(Event("gate-1", "b", 2, "gate.face", us(T0), 5,
                              {"member_id": dealer.other, "similarity": 0.8, "camera": "gate-1"}))  # fmt: skip
    handle_record(dealer.store, eng, KAFKA_EVENTS, plate, stats, gates={"gate-1"})
    handle_record(dealer.store, eng, KAFKA_EVENTS, face, stats, gates={"gate-1"})
    with dealer.store.tx() as s:
        rows = s.scalars(select(GateSighting).order_by(GateSighting.id)).all()
        assert [(r.plate, r.vin, r.customer_id, r.face_customer_id) for r in rows] == [
            ("沪A12345", VIN, dealer.member, None),  # the face match of the other customer,
        ]  # who gave no face consent, left no trace
    assert stats["fired"] == 1  # the member's arrival card; nothing for the face match
