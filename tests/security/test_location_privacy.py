"""Location privacy end to end on the real stack: Mosquitto (TLS, device certificates), the ingest
bridge, the Kafka-compatible broker, the Faust worker, InfluxDB 1.x, the CRM (SQLite) and the
dashboards app with its live Kafka feed.

Attacks refused: every car's GNSS position written to InfluxDB (and published on
``vehicle-state``) whatever the consent; positions kept after a withdrawal, an erasure or past
their retention; the console showing, after a legitimate reveal, a fix taken before the current
ownership began. Each test also checks that the legitimate traffic (speed, the consenting
owner's positions) still arrives.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from sqlalchemy import select

from carpulse.stack import free_port
from core.privacy import LATITUDE, LONGITUDE
from core.topics import KAFKA_EVENTS, KAFKA_TELEMETRY, KAFKA_VEHICLE_STATE, device_topic
from core.wire import Samples, TelemetryBatch, encode_telemetry
from crm import location_sync as ls
from crm import store as st
from crm.location_sink import InfluxLocations
from crm.migrate import upgrade
from crm.schema import AuditRecord, Customer, Ownership, utcnow
from crm.tables import LocationFix
from tests.integration.helpers import influx_query, pipeline, wait_for
from tests.integration.stream_util import consume, create_topics

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from dashboards.app import DashboardConfig, create_app
from dashboards.users import create_demo_users, seed_demo_crm
from tests.unit.dashboards.conftest import login

pytestmark = [pytest.mark.security, pytest.mark.integration]

SPEED = "Vehicle.Speed"
# VINs the console accepts (no I, O, Q); one vehicle per story, all of dealer-a
CARS = {
    "C": ("LSVLC000000000001", "locp-c"),  # owner consents, owned for a year
    "N": ("LSVLN000000000002", "locp-n"),  # owner does not consent
    "W": ("LSVLW000000000003", "locp-w"),  # owner consents, then withdraws
    "E": ("LSVLE000000000004", "locp-e"),  # owner consents, then asks for erasure
    "S": ("LSVLS000000000005", "locp-s"),  # sold during the test to a consenting buyer
}


@dataclass
class World:
    stack: Any
    store: st.CrmStore
    sink: InfluxLocations
    sync: ls.PolicySync
    web_port: int
    mqtt: Fleet
    client: TestClient
    app: Any
    seq: dict[str, int] = field(default_factory=dict)

    def owner(self, key: str) -> str:
        with self.store.tx() as s:
            own = s.scalar(
                select(Ownership).where(Ownership.vin == CARS[key][0], Ownership.valid_to.is_(None))
            )
            assert own is not None
            return own.customer_id

    def ownership_id(self, key: str) -> str:
        with self.store.tx() as s:
            own = s.scalar(
                select(Ownership).where(Ownership.vin == CARS[key][0], Ownership.valid_to.is_(None))
            )
            assert own is not None
            return str(own.id)

    def privacy_records(self) -> int:
        url = f"http://127.0.0.1:{self.web_port}/carpulse/counters/"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return int(json.load(r)["privacy"]["records"])
        except OSError:
            return -1

    def sync_policies(self) -> None:
        """What the CRM worker's privacy timer does; then wait until the worker has read it."""
        before = self.privacy_records()
        kafka = self.stack.settings.kafka
        sent = ls.publish_policies(self.store, kafka.client_options("crm"), self.sync, self.sink)
        if sent:
            wait_for(lambda: self.privacy_records() >= before + len(sent), 60,
                     "the worker to read the new location policies")  # fmt: skip

    def drive(self, key: str, ts_us: int, speed: float, lat: float, lon: float) -> None:
        """One telemetry batch over MQTT: speed and a position at ``ts_us``."""
        device = CARS[key][1]
        self.seq[device] = self.seq.get(device, 0) + 1
        s = Samples.from_columns(
            [SPEED, LATITUDE, LONGITUDE], np.arange(3), np.full(3, ts_us), [speed, lat, lon]
        )
        payload = encode_telemetry(TelemetryBatch(device, "boot-1", self.seq[device], s))
        info = self.mqtt.publish(device_topic(device, "telemetry"), payload, qos=1)
        info.wait_for_publish(10)


def rows(w: World, key: str, fld: str) -> list[tuple[int, float, dict[str, str]]]:
    """``(time_us, value, tags)`` of one field of a car in InfluxDB."""
    device = CARS[key][1]
    try:
        series = influx_query(
            w.stack, f"SELECT \"{fld}\" FROM telemetry WHERE device='{device}' GROUP BY *"
        )
    except AssertionError:  # the database does not exist before the worker's first write
        return []
    out = []
    for ser in series:
        for t, v in ser["values"]:
            if v is not None:
                tags = {k: x for k, x in (ser.get("tags") or {}).items() if x}  # "" = no tag
                out.append((int(t), float(v), tags))
    return sorted(out, key=lambda r: r[0])


def arrived(w: World, key: str, ts_us: int) -> bool:
    return any(t == ts_us for t, _, _ in rows(w, key, SPEED))


def now_us() -> int:
    return int(time.time() * 1e6)


class Fleet:
    """One TLS MQTT connection per car, each with the car's own certificate."""

    def __init__(self, stack: Any) -> None:
        self.clients: dict[str, paho.Client] = {}
        for _vin, device in CARS.values():
            cert, key = stack.provision_device(device)
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=device,
                            protocol=paho.MQTTv311)  # fmt: skip
            c.tls_set(ca_certs=str(stack.pki.ca_cert), certfile=str(cert), keyfile=str(key))
            up = threading.Event()
            c.on_connect = lambda *a, up=up: up.set()
            c.connect(stack.s.host, stack.s.mqtt_device_port)
            c.loop_start()
            assert up.wait(15), f"{device} could not connect"
            self.clients[device] = c

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Any:
        device = topic.split("/")[2]
        return self.clients[device].publish(topic, payload, qos=qos)

    def close(self) -> None:
        for c in self.clients.values():
            c.loop_stop()
            c.disconnect()


@pytest.fixture(scope="module")
def world(local_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("locpriv")
    url = f"sqlite:///{tmp / 'crm.sqlite'}"
    store = st.CrmStore.from_url(url)
    upgrade(store.engine)
    create_demo_users(store)
    seed_demo_crm(store, [(vin, dev, f"LP{k}001") for k, (vin, dev) in CARS.items()], "dealer-a")
    with store.tx() as s:  # owned for a year (seed_demo_crm); consent as each story needs
        for k, (vin, _dev) in CARS.items():
            cid = s.scalar(select(Ownership.customer_id).where(Ownership.vin == vin))
            assert cid is not None
            st.set_consent(s, cid, "location", k != "N", source="test")
    reg = tmp / "registry.json"
    reg.write_text(json.dumps({dev: vin for vin, dev in CARS.values()}))
    settings = local_stack.settings
    sink = InfluxLocations(settings.influx, settings.stream.measurement)
    web_port = free_port()
    create_topics(local_stack, [KAFKA_TELEMETRY, KAFKA_EVENTS])
    app = create_app(
        DashboardConfig(
            crm_url=url,
            kafka_bootstrap=settings.kafka.bootstrap,
            kafka_options=settings.kafka.client_options("dashboards"),
            reveal_seconds=600,
        )
    )
    fleet = Fleet(local_stack)
    with (
        pipeline(local_stack, tmp, CARPULSE_STREAM__REGISTRY=str(reg),
                 CARPULSE_STREAM__WEB_PORT=str(web_port)),
        TestClient(app, base_url="https://testserver") as client,
    ):  # fmt: skip
        w = World(local_stack, store, sink, ls.PolicySync(), web_port, fleet, client, app)
        try:
            wait_for(lambda: w.privacy_records() >= 0, 120, "the worker's web page")
            before = w.privacy_records()
            # the operator's one-off publication (the CRM worker's timer does the same)
            proc = subprocess.run(
                [sys.executable, "-m", "carpulse", "crm", "privacy-sync", "--db", url],
                capture_output=True, text=True, timeout=120,
                env={**os.environ, "CARPULSE_CONFIG": str(local_stack.config_file)},
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout) == {"vehicles": 5, "location_allowed": 4}
            wait_for(lambda: w.privacy_records() >= before + 5, 60, "the policies in the worker")
            t = now_us()  # warm-up: the worker may take a while to join its group

            def seen() -> bool:
                w.drive("N", t, 1.0, 0.0, 0.0)
                return arrived(w, "N", t)

            wait_for(seen, 180, "the first batch in InfluxDB", interval=2.0)
            yield w
        except AssertionError as err:
            logs = {p.name: p.read_text()[-3000:] for p in tmp.glob("*.log")}
            raise AssertionError(f"{err}; pipeline logs: {logs}") from None
        finally:
            fleet.close()
    store.engine.dispose()


def test_positions_are_stored_only_with_the_current_owners_consent(world: World) -> None:
    t = now_us()
    world.drive("C", t, 42.0, 31.2304, 121.4737)
    world.drive("N", t, 43.0, 30.5928, 114.3055)
    wait_for(lambda: arrived(world, "N", t) and arrived(world, "C", t), 60, "both batches")
    assert rows(world, "N", LATITUDE) == [] and rows(world, "N", LONGITUDE) == []
    assert [v for ts, v, _ in rows(world, "N", SPEED) if ts == t] == [43.0]  # the rest flows
    (lat,) = [r for r in rows(world, "C", LATITUDE) if r[0] == t]
    assert lat[1] == 31.2304
    assert lat[2] == {"device": "locp-c", "ownership": world.ownership_id("C"),
                      "vin": CARS["C"][0]}  # fmt: skip
    # speed stays in the device's untagged series: deletes of positions never touch it
    assert [r[2] for r in rows(world, "C", SPEED) if r[0] == t] == [{"device": "locp-c"}]
    # vehicle-state, read by the dashboards: a location only for the consenting owner's car
    vins = {CARS["C"][0], CARS["N"][0]}

    def latest(recs: list[Any]) -> dict[str, Any]:
        docs = [json.loads(r.value) for r in recs if r.value]
        return {d["vin"]: d for d in docs if d.get("vin") in vins}

    def both(recs: list[Any]) -> bool:
        got = latest(recs)
        return all(got.get(v, {}).get("last_seen_us") == t for v in vins)

    states = latest(consume(world.stack, KAFKA_VEHICLE_STATE, both, 60))
    n, c = states[CARS["N"][0]], states[CARS["C"][0]]
    assert n["location"] is None and not any("CurrentLocation" in k for k in n["signals"])
    assert n["signals"][SPEED][1] == 43.0
    assert c["location"] == {"lat": 31.2304, "lon": 121.4737, "ts_us": t}


def test_withdrawal_stops_storage(world: World) -> None:
    t1 = now_us()
    world.drive("W", t1, 50.0, 22.5431, 114.0579)
    wait_for(lambda: any(r[0] == t1 for r in rows(world, "W", LATITUDE)), 60, "W's position")
    with world.store.tx() as s:
        st.set_consent(s, world.owner("W"), "location", False, source="app")
    world.sync_policies()
    # the compacted vehicle-state that the dashboards read drops W's last position at once
    vin = CARS["W"][0]

    def last_w(recs: list[Any]) -> dict[str, Any]:
        docs = [json.loads(r.value) for r in recs if r.value]
        return ([d for d in docs if d.get("vin") == vin] or [{}])[-1]

    latest = last_w(consume(world.stack, KAFKA_VEHICLE_STATE,
                            lambda recs: last_w(recs).get("location", 0) is None, 30))  # fmt: skip
    assert latest["location"] is None and latest["last_seen_us"] == t1
    assert not any("CurrentLocation" in k for k in latest["signals"])
    t2 = now_us()
    world.drive("W", t2, 51.0, 22.5440, 114.0590)
    wait_for(lambda: arrived(world, "W", t2), 60, "W's speed after the withdrawal")
    assert [r[0] for r in rows(world, "W", LATITUDE)] == [t1]  # nothing after the withdrawal
    assert [v for ts, v, _ in rows(world, "W", SPEED)] == [50.0, 51.0]


def test_erasure_removes_the_customers_positions_from_influxdb(world: World) -> None:
    t = now_us()
    world.drive("E", t, 60.0, 39.9042, 116.4074)
    wait_for(lambda: any(r[0] == t for r in rows(world, "E", LATITUDE)), 60, "E's position")
    owner = world.owner("E")
    # the operator's command (crm.location_sync.erase_customer), against the stack's InfluxDB
    proc = subprocess.run(
        [sys.executable, "-m", "carpulse", "crm", "erase", owner, "--ticket", "GDPR-0042",
         "--db", str(world.store.engine.url)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CARPULSE_CONFIG": str(world.stack.config_file)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["influx_periods"] == 1
    assert rows(world, "E", LATITUDE) == [] and rows(world, "E", LONGITUDE) == []
    assert [v for _, v, _ in rows(world, "E", SPEED)] == [60.0]  # not personal: kept
    # consent went with the erasure: the next position is not stored either
    world.sync_policies()
    t2 = now_us()
    world.drive("E", t2, 61.0, 39.9050, 116.4080)
    wait_for(lambda: arrived(world, "E", t2), 60, "E's speed after the erasure")
    assert rows(world, "E", LATITUDE) == []
    with world.store.tx() as s:
        assert s.scalar(select(LocationFix.id).where(LocationFix.vin == CARS["E"][0])) is None
        rec = s.scalars(select(AuditRecord).where(AuditRecord.action == "customer.erase.influx"))
        assert [r.detail["ticket"] for r in rec] == ["GDPR-0042"]


def test_retention_purge_reaches_influxdb(world: World) -> None:
    old = now_us() - 100 * 86_400_000_000  # older than the 90 days of location retention
    new = now_us()
    world.drive("C", old, 70.0, 31.1, 121.1)
    world.drive("C", new, 71.0, 31.2, 121.2)
    wait_for(lambda: {old, new} <= {r[0] for r in rows(world, "C", LATITUDE)}, 60, "both fixes")
    counts = ls.purge(world.store, world.sink)
    assert counts["influx_location"] == 1
    got = {r[0] for r in rows(world, "C", LATITUDE)}
    assert old not in got and new in got
    assert old in {r[0] for r in rows(world, "C", SPEED)}  # the speed is not location data


def test_console_never_shows_a_fix_from_before_the_current_ownership(world: World) -> None:
    vin = CARS["S"][0]
    hub = world.app.state.hub

    def hub_fix() -> Any:
        return (hub.states.get(vin) or {}).get("location")

    t1 = now_us() - 60_000_000  # a fix of the previous owner (who consented)
    world.drive("S", t1, 30.0, 23.1291, 113.2644)
    wait_for(lambda: (hub_fix() or {}).get("ts_us") == t1, 60, "the first fix in the console")
    seller_period = world.ownership_id("S")
    with world.store.tx() as s:  # sold 30 s ago to a buyer who consents
        buyer = st.find_or_create_customer(s, {"phone": "+8613900000055"}, "Buyer")
        cust = s.get(Customer, buyer)
        assert cust is not None
        cust.dealer_id = "dealer-a"  # a customer of the same dealer
        st.transfer_ownership(s, vin, buyer, utcnow() - dt.timedelta(seconds=30))
        st.set_consent(s, buyer, "location", True, source="app")
    # before the stream has heard of the sale (or from a stale record) ...
    token = login(world.client, "agent")
    r = world.client.post(f"/console/vehicles/{vin}/reveal", data={
        "reason": "customer-request", "ticket": "CC-7001", "csrf_token": token})  # fmt: skip
    assert r.status_code == 200, r.text  # a legitimate reveal ...
    assert r.json()["location"] is None  # ... of a car with no fix of the buyer's yet
    assert hub_fix()["ts_us"] == t1  # the feed still carries the seller's fix ...
    assert world.client.get(f"/console/vehicles/{vin}/state").json()["location"] is None
    assert "23.129" not in world.client.get(f"/console/vehicles/{vin}").text  # ... never shown
    # once the stream hears of the sale, vehicle-state drops the seller's fix too
    world.sync_policies()
    wait_for(lambda: hub.states[vin].get("location") is None, 30, "the seller's fix to go")
    # the buyer's own fix is shown, and stored under the buyer's ownership period
    t2 = now_us()
    world.drive("S", t2, 31.0, 23.1300, 113.2650)
    wait_for(lambda: (hub_fix() or {}).get("ts_us") == t2, 60, "the buyer's fix in the console")
    shown = world.client.get(f"/console/vehicles/{vin}/state").json()["location"]
    assert shown == {"lat": 23.13, "lon": 113.265, "ts_us": t2}
    periods = {r[0]: r[2]["ownership"] for r in rows(world, "S", LATITUDE)}
    assert periods == {t1: seller_period, t2: world.ownership_id("S")}
    assert seller_period != world.ownership_id("S")
    # the buyer withdraws: the grant ends at the next look, on the record
    with world.store.tx() as s:
        st.set_consent(s, buyer, "location", False, source="app")
    assert world.client.get(f"/console/vehicles/{vin}/state").json()["location"] is None
    with world.store.tx() as s:
        ended = s.scalars(select(AuditRecord).where(AuditRecord.action == "location.grant.ended"))
        assert [(a.subject, a.detail["ticket"]) for a in ended] == [(vin, "CC-7001")]
    r = world.client.post(f"/console/vehicles/{vin}/reveal", data={
        "reason": "customer-request", "ticket": "CC-7002", "csrf_token": token})  # fmt: skip
    assert r.status_code == 403


def test_only_the_crm_can_grant_location_storage(world: World) -> None:
    """A forged "consented" record for the non-consenting car, from any other principal, is
    refused by the broker's ACLs; the CRM's own publication goes through."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import TopicAuthorizationFailedError

    from core.privacy import LocationPolicy
    from core.topics import KAFKA_PRIVACY

    vin = CARS["N"][0]
    forged = LocationPolicy(vin, True, world.ownership_id("N"), 0, now_us()).encode()
    kafka = world.stack.settings.kafka

    async def produce(options: dict[str, Any]) -> None:
        producer = AIOKafkaProducer(**options, acks="all", request_timeout_ms=10_000)
        try:
            await producer.start()
            await producer.send_and_wait(KAFKA_PRIVACY, forged, key=vin.encode())
        finally:
            await producer.stop()

    for component in ("bridge", "stream", "dashboards"):
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(produce(kafka.client_options(component)))
    t = now_us()
    world.drive("N", t, 44.0, 30.6, 114.3)
    wait_for(lambda: arrived(world, "N", t), 60, "N's speed")
    assert rows(world, "N", LATITUDE) == []
    with world.store.tx() as s:  # the CRM's legitimate change still reaches the stream
        st.set_consent(s, world.owner("N"), "location", True, source="app")
    world.sync_policies()
    t2 = now_us()
    world.drive("N", t2, 45.0, 30.7, 114.4)
    wait_for(lambda: any(r[0] == t2 for r in rows(world, "N", LATITUDE)), 60, "N's position")
