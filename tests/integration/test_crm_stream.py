"""The CRM worker on the real broker: records on the stream's topics become effects once, and a
second worker that re-reads the whole log from the beginning issues nothing again."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select

from carpulse.stack import Stack
from core.config import KafkaSettings
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_ANOMALIES,
    KAFKA_DEADLETTER,
    KAFKA_EVENTS,
    KAFKA_PREDICTIONS,
    KAFKA_TELEMETRY,
)
from core.wire import Event, Samples, TelemetryBatch, encode_event, encode_telemetry
from crm import loyalty
from crm import store as st
from crm.migrate import upgrade
from crm.schema import Coupon, CouponTemplate, Effect, Vehicle
from crm.tables import CustomerContact, InboxItem
from stream.bridge import ensure_topics
from stream.service_due import ODOMETER
from tests.integration.helpers import pipeline_env, uncommitted, wait_for
from tests.integration.stream_util import consume, create_topics, spawn_worker, stop
from tests.integration.stream_util import produce as produce_records

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
]  # two Faust workers join a group: ~35 s each
VIN, VIN2 = "LSVAA4182E2123456", "LSVAA4182E2654321"
T0 = dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)


ECT = "Vehicle.Powertrain.CombustionEngine.ECT"  # watched by the stream's default detector


def us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1e6)


async def produce(kafka: KafkaSettings, records: list[tuple[str, bytes]]) -> None:
    prod = AIOKafkaProducer(**kafka.client_options(), acks="all")
    await prod.start()
    try:
        for topic, value in records:
            await prod.send_and_wait(topic, value, key=VIN.encode())
    finally:
        await prod.stop()


def member_store(
    url: str, vehicles: dict[str, str | None], now: dt.datetime, phone: str
) -> tuple[st.CrmStore, str]:
    """A migrated CRM with the shipped rules' coupon templates and one member with marketing
    consent who has owned ``vehicles`` (VIN -> device id) for 400 days; (store, member id)."""
    store = st.CrmStore.from_url(url)
    upgrade(store.engine)
    with store.tx() as s:
        s.add(
            CouponTemplate(code="maintenance", title_zh="保养券", title_en="Service", valid_days=60)
        )
        s.add(
            CouponTemplate(code="tier-welcome", title_zh="礼券", title_en="Welcome", valid_days=90)
        )
        models = iter(("Lavida", "Tiguan"))
        for vin, device in vehicles.items():
            s.add(Vehicle(vin=vin, model=next(models), device_id=device))
        s.flush()
        member = st.find_or_create_customer(s, {"phone": phone})
        for vin in vehicles:
            st.transfer_ownership(s, vin, member, now - dt.timedelta(days=400))
        loyalty.record_visit(s, member, spend=100)
        st.set_consent(s, member, "marketing", True)
    return store, member


@contextmanager
def worker(
    stack: Stack, url: str, cwd: Path, name: str, app_id: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    # a fresh app id: a new consumer group that reads from the start; a short session timeout,
    # since the coordinator waits that long for members when the group forms
    env = pipeline_env(stack, CARPULSE_STREAM__SESSION_TIMEOUT_S="6")
    if app_id is not None:  # its consumer group
        env["CARPULSE_STREAM__CRM_APP_ID"] = app_id
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
    boot = settings.kafka
    asyncio.run(ensure_topics(boot, settings.kafka.partitions, settings.kafka.replication,
                              [KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_DEADLETTER]))  # fmt: skip
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store, member = member_store(
        url, {VIN: "crm-it-car-1", VIN2: "crm-it-car-2"}, T0, "+8613800000001"
    )
    with store.tx() as s:
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

    app_id = f"carpulse-crm-test-{uuid.uuid4().hex[:8]}"
    with worker(local_stack, url, tmp_path, "first", app_id):
        wait_for(lambda: count(Coupon) == 1 and count(InboxItem) == 1, 90, "coupon and crash card")
        # acks off: the agents commit each record themselves once handled (stream.offsets)
        topics = [KAFKA_PREDICTIONS, KAFKA_ALERTS]
        wait_for(lambda: uncommitted(local_stack, app_id, topics) == 0, 30, "commits")
    assert count(Effect) == 2

    with worker(local_stack, url, tmp_path, "replay"):
        # a marker after the replayed log: once its effect exists, the log before it was read
        dtc = encode_event(Event("crm-it-car-2", "b", 1, "dtc", us(T0), 5, {"codes": ["P0301"]}))
        asyncio.run(produce(boot, [(KAFKA_EVENTS, dtc)]))
        wait_for(lambda: count(InboxItem) == 2, 90, "the marker's expert card")
        time.sleep(3)  # let stragglers of the other topics land
    assert (count(Coupon), count(InboxItem), count(Effect)) == (1, 2, 3)


def test_telemetry_odometer_to_one_maintenance_coupon(local_stack: Stack, tmp_path: Path) -> None:
    """Telemetry with an odometer -> stream worker -> ``service_due`` on carpulse.predictions ->
    CRM worker -> one maintenance coupon valid until the predicted due date + 14 days. A second
    stream worker that re-reads the telemetry log from the start republishes the predictions;
    the CRM issues nothing more."""
    vin, vin2 = f"LSVSVC{uuid.uuid4().hex[:11].upper()}", f"LSVSVD{uuid.uuid4().hex[:11].upper()}"
    device = f"svc-{vin[-8:].lower()}"
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({device: vin}))
    create_topics(local_stack, [KAFKA_TELEMETRY, KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS,
                                KAFKA_DEADLETTER, KAFKA_ANOMALIES])  # fmt: skip
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    phone = f"+86139{uuid.uuid4().int % 10**8:08d}"
    store, member = member_store(url, {vin: device, vin2: None}, dt.datetime.now(dt.UTC), phone)
    # six days of driving, 60 km a day, ending yesterday; a 2,000 km / 365-day schedule
    today = int(time.time() // 86_400)
    batches = []
    for d in range(6):
        ts = ((today - 6 + d) * 86_400 + 8 * 3600 + np.arange(11) * 3600) * 1_000_000
        odo_m = (30_000.0 + 60.0 * d + 6.0 * np.arange(11)) * 1000.0
        # odometer only (an OBD odometer poll): no trips, so no severity shortens the interval
        s_ = Samples.from_columns([ODOMETER], np.zeros(11), ts, odo_m)
        batches.append(encode_telemetry(TelemetryBatch(device, "boot-1", d, s_)))
    # and coolant at 1 Hz for 2 minutes, ending in a spike: the stream's detector flags it once
    ect_ts = ((today - 1) * 86_400 + 12 * 3600 + np.arange(120)) * 1_000_000
    ect = 90.0 + np.sin(np.arange(120) / 7.0)
    ect[-1] = 140.0
    s_ = Samples.from_columns([ECT], np.zeros(120), ect_ts, ect)
    batches.append(encode_telemetry(TelemetryBatch(device, "boot-1", 6, s_)))
    produce_records(local_stack, [(KAFKA_TELEMETRY, device.encode(), b) for b in batches])

    def ours(recs: list[Any]) -> list[dict[str, Any]]:
        docs = []
        for r in recs:  # the topic is shared with the session's other tests (and their bad records)
            with contextlib.suppress(ValueError):
                docs.append(json.loads(r.value))
        return [
            d for d in docs
            if isinstance(d, dict) and d.get("vin") == vin and d.get("kind") == "service_due"
        ]  # fmt: skip

    def final(preds: list[dict[str, Any]]) -> int:  # predictions after the last day's readings
        return sum(p["odo"] == 30_360.0 for p in preds)

    def anomaly_cards() -> list[InboxItem]:
        with store.tx() as s:
            return list(
                s.scalars(
                    select(InboxItem).where(InboxItem.kind == "anomaly", InboxItem.vin == vin)
                )
            )

    def coupons() -> list[Coupon]:
        with store.tx() as s:
            return list(s.scalars(select(Coupon).order_by(Coupon.id)))

    extra = {"CARPULSE_STREAM__REGISTRY": str(reg), "CARPULSE_STREAM__SERVICE_KM": "2000",
             "CARPULSE_STREAM__SESSION_TIMEOUT_S": "6"}  # fmt: skip
    first = spawn_worker(local_stack, tmp_path / "stream1.log", pipeline_env(local_stack, **extra))
    try:
        with worker(local_stack, url, tmp_path, "crm"):
            preds = ours(consume(local_stack, KAFKA_PREDICTIONS, lambda r: final(ours(r)) >= 1, 60))
            # micro-batches may hold one day or several: one record per batch that closed a day
            assert 1 <= len(preds) <= 4 and len({p["cycle"] for p in preds}) == 1, preds
            for p in preds:  # 60 km a day, due at 30,000 + 2,000 km
                assert p["km"] == 32_000.0 and p["limit"] == "km"
                assert p["days"] == pytest.approx((32_000.0 - p["odo"]) / 60.0, rel=0.02)
            wait_for(lambda: len(coupons()) == 1, 60, "the maintenance coupon")
            wait_for(lambda: len(anomaly_cards()) == 1, 60, "the anomaly card")
            stop([first])
            # the first prediction due within 30 days issued the coupon, valid until due + 14 days
            p0 = next(p for p in preds if p["days"] <= 30)
            due = dt.datetime.fromtimestamp(p0["ts_us"] / 1e6, dt.UTC)
            due += dt.timedelta(days=p0["days"])
            (c,) = coupons()
            assert (c.vin, c.template_code, c.holder_id) == (vin, "maintenance", member)
            assert c.valid_until.date() == due.date() + dt.timedelta(days=14)
            # replay: a fresh stream worker reads the telemetry log from the start
            second = spawn_worker(
                local_stack, tmp_path / "stream2.log", pipeline_env(local_stack, **extra)
            )
            try:
                again = ours(
                    consume(local_stack, KAFKA_PREDICTIONS, lambda r: final(ours(r)) >= 2, 60)
                )
                assert {p["cycle"] for p in again} == {p0["cycle"]} and len(again) > len(preds)
            finally:
                stop([second])
            # a marker behind the replayed predictions in the same partition: once its coupon
            # exists, the CRM has handled every replayed prediction before it
            marker = {**p0, "vin": vin2, "cycle": "marker"}
            produce_records(
                local_stack, [(KAFKA_PREDICTIONS, vin.encode(), json.dumps(marker).encode())]
            )
            wait_for(lambda: len(coupons()) == 2, 60, "the marker's coupon")
    finally:
        stop([first])
    assert sorted(c.vin for c in coupons()) == sorted([vin, vin2])
    # the replayed anomaly filed nothing more: one advisor card with the evidence window
    (card,) = anomaly_cards()
    assert card.role == "advisor" and card.title == f"{vin} 的 ECT 读数异常"  # staff: zh-CN
    assert card.data["evidence"][-1] == [int(ect_ts[-1]), 140.0]
    assert len(card.data["evidence"]) == 60


def test_worker_timer_runs_the_loyalty_jobs_once(local_stack: Stack, tmp_path: Path) -> None:
    """The CRM worker's timer, on the real broker: a coupon past its date is expired, a lapsed
    member gets one win-back coupon, a sharer one referral thank-you; running the jobs again from
    the CLI afterwards issues nothing more."""
    from typer.testing import CliRunner

    from carpulse.cli import app

    settings = local_stack.settings  # type: ignore[attr-defined]
    asyncio.run(ensure_topics(settings.kafka, settings.kafka.partitions, settings.kafka.replication,
                              [KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_DEADLETTER]))  # fmt: skip
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    now = dt.datetime.now(dt.UTC)
    phone = f"+86137{uuid.uuid4().int % 10**8:08d}"
    # a VIN of its own: this worker reads the session's shared topics from the start, where the
    # other tests' predictions for VIN would issue this member coupons of their own
    vin = f"LSVLY{uuid.uuid4().int % 10**12:012d}"
    store, member = member_store(url, {vin: None}, now - dt.timedelta(days=500), phone)
    with store.tx() as s:
        s.add(CustomerContact(customer_id=member, email="m@example.com"))
        other = phone[:-1] + ("1" if phone.endswith("0") else "0")  # never the member's own
        friend = st.find_or_create_customer(s, {"phone": other}, "朋友")
        old = st.issue_coupon(s, "maintenance", member, now - dt.timedelta(days=1))
        shared = st.issue_coupon(s, "maintenance", member, now + dt.timedelta(days=30))
        st.share_coupon(s, shared.id, member, friend)
        loyalty.redeem_coupon(
            s, shared.id, friend
        )  # the friend's first visit: the member is rewarded

    def templates() -> dict[str, int]:
        with store.tx() as s:
            rows = s.execute(select(Coupon.template_code, func.count())
                             .where(Coupon.owner_id == member).group_by(Coupon.template_code))  # fmt: skip
            return {str(t): int(n) for t, n in rows}

    def state(coupon_id: str) -> str:
        with store.tx() as s:
            return str(s.get(Coupon, coupon_id).state)  # type: ignore[union-attr]

    with worker(local_stack, url, tmp_path, "loyalty"):
        wait_for(lambda: state(old.id) == "expired" and templates().get("referral-thanks") == 1,
                 90, "expiry and the referral reward from the worker's timer")  # fmt: skip
        time.sleep(3)  # a few more timer runs
    assert templates().get("referral-thanks") == 1 and state(old.id) == "expired"
    # the member's last visit is today (member_store's): a year and a month on, they lapsed
    later = (now + dt.timedelta(days=400)).isoformat()
    run = CliRunner().invoke
    first = run(app, ["crm", "jobs", "run", "--db", url, "--now", later, "--only", "inactive"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["inactive_fired"] == 1
    again = run(app, ["crm", "jobs", "run", "--db", url, "--now", later])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout).get("inactive_fired", 0) == 0
    assert templates() == {"maintenance": 2, "referral-thanks": 1, "win-back": 1}
