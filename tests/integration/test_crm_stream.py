"""The CRM worker on the real broker: records on the stream's topics become effects once, and a
second worker that re-reads the whole log from the beginning issues nothing again."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select

from carpulse.stack import Stack
from core.topics import KAFKA_ALERTS, KAFKA_DEADLETTER, KAFKA_EVENTS, KAFKA_PREDICTIONS
from core.wire import Event, encode_event
from crm import store as st
from crm.migrate import upgrade
from crm.models import Coupon, CouponTemplate, Effect, Vehicle
from crm.tables import CustomerContact, InboxItem
from stream.bridge import ensure_topics
from tests.integration.helpers import pipeline_env, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
]  # two Faust workers join a group: ~35 s each
VIN, VIN2 = "LSVAA4182E2123456", "LSVAA4182E2654321"
T0 = dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)


def us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1e6)


async def produce(bootstrap: str, records: list[tuple[str, bytes]]) -> None:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await prod.start()
    try:
        for topic, value in records:
            await prod.send_and_wait(topic, value, key=VIN.encode())
    finally:
        await prod.stop()


@contextmanager
def worker(stack: Stack, url: str, cwd: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    # a fresh app id: a new consumer group that reads from the start; a short session timeout,
    # since the coordinator waits that long for members when the group forms
    env = pipeline_env(stack, CARPULSE_STREAM__SESSION_TIMEOUT_S="6")
    with open(cwd / f"{name}.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "carpulse", "crm", "worker", "--db", url, "--interval", "1", "--loglevel", "info"],
            env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_worker_effects_once_across_a_full_replay(local_stack: Stack, tmp_path: Path) -> None:
    settings = local_stack.settings  # type: ignore[attr-defined]
    boot = settings.kafka.bootstrap
    asyncio.run(ensure_topics(boot, settings.kafka.partitions, settings.kafka.replication,
                              [KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_DEADLETTER]))  # fmt: skip
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store = st.CrmStore.from_url(url)
    upgrade(store.engine)
    with store.tx() as s:
        s.add(
            CouponTemplate(code="maintenance", title_zh="保养券", title_en="Service", valid_days=60)
        )
        s.add(
            CouponTemplate(code="tier-welcome", title_zh="礼券", title_en="Welcome", valid_days=90)
        )
        s.add(Vehicle(vin=VIN, model="Lavida", device_id="crm-it-car-1"))
        s.add(Vehicle(vin=VIN2, model="Tiguan", device_id="crm-it-car-2"))
        s.flush()
        member = st.find_or_create_customer(s, {"phone": "+8613800000001"})
        st.transfer_ownership(s, VIN, member, T0 - dt.timedelta(days=400))
        st.transfer_ownership(s, VIN2, member, T0 - dt.timedelta(days=400))
        st.record_visit(s, member, spend=100)
        st.set_consent(s, member, "marketing", True)
        s.add(CustomerContact(customer_id=member, email="m@example.com"))
    # several predictions of the same service interval, a crash twice (the edge resent it),
    # a record that is not JSON
    pred = [json.dumps({"vin": VIN, "kind": "service_due", "ts_us": us(T0) + i, "days": 20.0 - i,
                        "km": 30000.0, "odo": 29500.0, "cycle": "c1"}).encode() for i in range(5)]  # fmt: skip
    crash = json.dumps({"kind": "crash", "vin": VIN, "device": "crm-it-car-1", "ts_us": us(T0),
                        "data": {"trigger": "airbag"}}).encode()  # fmt: skip
    records = [(KAFKA_PREDICTIONS, p) for p in pred]
    records += [(KAFKA_ALERTS, crash), (KAFKA_ALERTS, crash), (KAFKA_PREDICTIONS, b"{oops")]
    asyncio.run(produce(boot, records))

    def count(model: type) -> int:
        with store.tx() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    with worker(local_stack, url, tmp_path, "first"):
        wait_for(lambda: count(Coupon) == 1 and count(InboxItem) == 1, 90, "coupon and crash card")
    assert count(Effect) == 2

    with worker(local_stack, url, tmp_path, "replay"):
        # a marker after the replayed log: once its effect exists, the log before it was read
        dtc = encode_event(Event("crm-it-car-2", "b", 1, "dtc", us(T0), 5, {"codes": ["P0301"]}))
        asyncio.run(produce(boot, [(KAFKA_EVENTS, dtc)]))
        wait_for(lambda: count(InboxItem) == 2, 90, "the marker's expert card")
        time.sleep(3)  # let stragglers of the other topics land
    assert (count(Coupon), count(InboxItem), count(Effect)) == (1, 2, 3)
