"""The CRM worker's agents against hostile records: gate events from a car (200 random plates) are
refused without parking anything, a DTC flood and malformed alerts are dead-lettered, and the
agents go on with the legitimate records after them."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import faust
from faust.types import TP
from sqlalchemy import func, select

from core.topics import KAFKA_ALERTS, KAFKA_EVENTS
from core.wire import Event, encode_event
from crm.agents import install_crm_agents
from crm.engine import RuleEngine
from crm.rules import shipped_rules
from crm.tables import GateSighting, ParkedEvent
from tests.security import hostile
from tests.unit.crm.conftest import T0, VIN, Dealer, dealer  # noqa: F401 (the fixture)

import pytest  # isort: skip

pytestmark = pytest.mark.security
US0 = int(T0.timestamp() * 1e6)


def _run(app: faust.App, loop: asyncio.AbstractEventLoop, feed: list[tuple[str, list[bytes]]],
         handled: Any) -> None:  # fmt: skip
    agents = {a.name: a for a in app.agents.values()}

    async def commit(offsets: dict[TP, int]) -> bool:
        return True

    app.consumer._commit = commit  # type: ignore[method-assign]
    for topic, _ in feed:
        app.consumer._committed_offset[TP(topic, 0)] = 0

    async def run() -> None:
        for topic, records in feed:
            before = handled()
            async with agents[f"crm.{topic}"].test_context() as agent:
                for r in records:
                    await agent.put(r)
                for _ in range(500):
                    if handled() - before >= len(records):
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


def test_crm_agents_refuse_a_cars_gate_events_and_survive_hostile_records(
    dealer: Dealer,  # noqa: F811
) -> None:
    loop = asyncio.new_event_loop()
    app = faust.App("crm-sec-test", store="memory://", value_serializer="raw", loop=loop)
    dead: list[tuple[bytes, dict[str, bytes]]] = []

    async def to_dead(value: bytes, headers: dict[str, bytes]) -> None:
        dead.append((value, headers))

    stats = install_crm_agents(
        app, dealer.store, RuleEngine(shipped_rules()), dead=to_dead, gates={"gate-1"}
    )
    rng = random.Random(15)
    plates = [f"沪Z{rng.randrange(10**5):05d}" for _ in range(200)]
    fake = [encode_event(Event("car-2", "b", i, "gate.plate", US0, 3, {"plate": p, "camera": "x"}))
            for i, p in enumerate(plates)]  # fmt: skip
    real = encode_event(Event("gate-1", "g", 1, "gate.plate", US0, 3,
                              {"plate": "沪A12345", "camera": "gate-east"}))  # fmt: skip
    dtc_flood = [hostile.forge_event("dtc", {"codes": [f"P{i:04X}" for i in range(n)]}, q=n)
                 for n in (65, 100_000)]  # over the count cap, over the size cap  # fmt: skip
    refused = [hostile.json_alert(**f) for f in ({"device": ["car-1"]}, {"vin": 5},
                                                  {"ts_us": 2**64 - 1}, {"ts_us": 10**30})]  # fmt: skip
    # a location that is no position is dropped, the alert itself kept
    cleaned = [hostile.json_alert(ts_us=US0 + i, location=loc) for i, loc in enumerate(
        [{"lat": "x", "lon": 1.0}, {"lat": float("nan"), "lon": 1}, {"lat": 10**400, "lon": 1},
         [1, 2]])]  # fmt: skip
    good_alert = hostile.json_alert(ts_us=US0 + 99)
    _run(app, loop,
         [(KAFKA_EVENTS, [*fake, *dtc_flood, real]),
          (KAFKA_ALERTS, [*refused, *cleaned, good_alert])],
         lambda: stats["records"] + stats["dead_lettered"])  # fmt: skip

    reasons = [h["reason"].decode() for _, h in dead]
    assert reasons.count("not_a_gate") == 200  # every plate a car made up
    assert all(not r.startswith("crm_error") for r in reasons), reasons
    assert reasons.count("bad_dtc") == 1 and reasons.count("too_large") == 1
    assert reasons.count("crm_bad_record") == len(refused)
    assert len(dead) == 200 + 2 + len(refused)
    # the legitimate gate and crash alerts went through after all of that
    assert stats["records"] == 2 + len(cleaned)
    with dealer.store.tx() as s:
        assert s.scalar(select(func.count(ParkedEvent.id))) == 0  # nothing parked for the fakes
        sightings = s.scalars(select(GateSighting.plate)).all()
        assert sightings == ["沪A12345"]
