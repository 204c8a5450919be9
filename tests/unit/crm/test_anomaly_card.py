"""Issue 18 item 2: the stream's anomaly events become advisor cards, one per vehicle and signal
episode, with their evidence window; hostile records are refused."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest
from sqlalchemy import select

from core.errors import DecodeError
from core.topics import KAFKA_ANOMALIES
from crm.agents import CRM_TOPICS, handle_record
from crm.engine import RuleEngine
from crm.normalize import from_anomaly
from crm.rules import shipped_rules
from crm.tables import InboxItem
from tests.unit.crm.conftest import T0, VIN, Dealer

SIGNAL = "Vehicle.Powertrain.CombustionEngine.ECT"


def anomaly(t: dt.datetime, signal: str = SIGNAL, vin: str = VIN, n: int = 5) -> bytes:
    ts = int(t.timestamp() * 1e6)
    window = {"ts_us": [ts - (n - 1 - i) * 1_000_000 for i in range(n)],
              "values": [90.0 + i for i in range(n - 1)] + [131.5]}  # fmt: skip
    return json.dumps({"vin": vin, "signal": signal, "ts_us": ts, "value": 131.5,
                       "score": 9.25, "threshold": 6.0, "detector": "robust_zscore",
                       "window": window}).encode()  # fmt: skip


def test_anomaly_record_is_an_event_with_its_evidence_and_hostile_ones_are_refused() -> None:
    assert KAFKA_ANOMALIES in CRM_TOPICS
    (ev,) = from_anomaly(anomaly(T0))
    assert (ev.kind, ev.vin, ev.data["slot"]) == ("anomaly", VIN, f"{VIN}|{SIGNAL}")
    assert ev.data["signal_name"] == "ECT" and ev.data["score"] == 9.25
    assert [v for _, v in ev.data["evidence"]] == [90.0, 91.0, 92.0, 93.0, 131.5]
    doc = json.loads(anomaly(T0))
    doc["window"]["values"][0] = None  # a hole in the window is dropped, not fatal
    assert len(from_anomaly(json.dumps(doc).encode())[0].data["evidence"]) == 4
    for field, bad in (("score", "x"), ("vin", ""), ("ts_us", -1), ("window", {"ts_us": [1]}),
                       ("signal", "S" * 300), ("value", 1e300)):  # fmt: skip
        doc = json.loads(anomaly(T0))
        doc[field] = bad
        with pytest.raises(DecodeError):
            from_anomaly(json.dumps(doc).encode())
    huge = json.loads(anomaly(T0, n=5000))
    assert len(from_anomaly(json.dumps(huge).encode())[0].data["evidence"]) == 512


def test_one_advisor_card_per_vehicle_and_signal_episode(dealer: Dealer) -> None:
    eng, stats = RuleEngine(shipped_rules(), staff_lang="en"), Counter[str]()
    for minutes, signal in ((0, SIGNAL), (30, SIGNAL), (5, "Vehicle.Speed")):
        handle_record(dealer.store, eng, KAFKA_ANOMALIES,
                      anomaly(T0 + dt.timedelta(minutes=minutes), signal), stats)  # fmt: skip
    # a day later the coolant flags again: a new episode, a new card
    handle_record(dealer.store, eng, KAFKA_ANOMALIES, anomaly(T0 + dt.timedelta(days=2)), stats)
    with dealer.store.tx() as s:
        items = list(s.scalars(select(InboxItem).where(InboxItem.kind == "anomaly")))
        assert len(items) == 3 and {i.role for i in items} == {"advisor"}
        assert sorted(i.title for i in items) == [
            f"Unusual ECT on {VIN}",
            f"Unusual ECT on {VIN}",
            f"Unusual Speed on {VIN}",
        ]
        assert all(i.vin == VIN and len(i.data["evidence"]) == 5 for i in items)
        assert "read 132" in items[0].body and "Lavida" in items[0].body
    assert stats["fired:anomaly-advisor-card"] == 3


def test_the_card_reads_in_chinese_for_chinese_staff(dealer: Dealer) -> None:
    eng = RuleEngine(shipped_rules(), staff_lang="zh-CN")
    handle_record(dealer.store, eng, KAFKA_ANOMALIES, anomaly(T0), Counter())
    with dealer.store.tx() as s:
        item = s.scalars(select(InboxItem).where(InboxItem.kind == "anomaly")).one()
        assert "读数异常" in item.title and "阈值" in item.body


def test_the_crm_agent_on_the_anomalies_topic_files_the_card_once(dealer: Dealer) -> None:
    import asyncio

    import faust
    from faust.types import TP

    from crm.agents import install_crm_agents

    loop = asyncio.new_event_loop()
    app = faust.App("crm-anomaly-test", store="memory://", value_serializer="raw", loop=loop)
    dead: list[tuple[bytes, dict[str, bytes]]] = []

    async def to_dead(value: bytes, headers: dict[str, bytes]) -> None:
        dead.append((value, headers))

    stats = install_crm_agents(app, dealer.store, RuleEngine(shipped_rules()), dead=to_dead)
    commits: list[dict[TP, int]] = []

    async def commit(offsets: dict[TP, int]) -> bool:
        commits.append(dict(offsets))
        return True

    app.consumer._commit = commit  # type: ignore[method-assign]
    app.consumer._committed_offset[TP(KAFKA_ANOMALIES, 0)] = 0
    agent_of = {a.name: a for a in app.agents.values()}[f"crm.{KAFKA_ANOMALIES}"]
    records = [anomaly(T0), anomaly(T0), b'{"vin": "x"}']

    async def run() -> None:
        async with agent_of.test_context() as agent:
            for r in records:
                await agent.put(r)
            for _ in range(200):
                if commits and commits[-1] == {TP(KAFKA_ANOMALIES, 0): len(records)}:
                    break
                await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(run())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
        thread = getattr(app.consumer, "_thread", None)
        if thread is not None and not thread.thread_loop.is_closed():
            thread.thread_loop.close()
    assert stats["records"] == 2 and stats["fired"] == 1 and stats["dead_lettered"] == 1
    assert dead[0][1]["topic"] == KAFKA_ANOMALIES.encode()
    with dealer.store.tx() as s:
        assert (
            s.scalars(select(InboxItem).where(InboxItem.kind == "anomaly")).one().role == "advisor"
        )
