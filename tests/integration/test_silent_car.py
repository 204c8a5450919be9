"""A car silent at speed, end to end on the real stack: a device (paho, its certificate) drives at
123 km/h over MQTT with a last will, then its connection dies -> Mosquitto publishes the will ->
bridge -> Kafka -> the stream worker's silence watch (``[stream] silent_after_s`` = 3 s here)
raises a ``silent`` alert -> the CRM worker files the call-centre card -> the console's desk
(``/console/desk``) shows it with the car offline. The car reports again: the card closes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from carpulse.stack import Stack, stop_processes
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_EVENTS,
    KAFKA_PREDICTIONS,
    KAFKA_STATUS,
    KAFKA_TELEMETRY,
    device_topic,
)
from core.wire import Samples, TelemetryBatch, encode_telemetry
from crm.migrate import upgrade
from crm.schema import CouponTemplate
from crm.store import CrmStore
from dashboards.app import DashboardConfig, create_app
from dashboards.users import create_demo_users, seed_demo_crm
from tests.integration.helpers import influx_query, pipeline, pipeline_env, wait_for
from tests.integration.stream_util import create_topics
from tests.unit.dashboards.conftest import login

paho = pytest.importorskip("paho.mqtt.client")
pytestmark = [pytest.mark.integration]

VIN, DEVICE, PLATE = "CPSIL000000000001", "silent-car-1", "SIL001"


class Car:
    """A device on the broker: telemetry batches with speed and rpm, status with a last will."""

    def __init__(self, stack: Stack, boot: str) -> None:
        self.boot, self.seq = boot, 0
        cert, key = stack.provision_device(DEVICE)
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=DEVICE,
                             protocol=paho.MQTTv311)  # fmt: skip
        self.c.tls_set(ca_certs=str(stack.pki.ca_cert), certfile=str(cert), keyfile=str(key))
        status = device_topic(DEVICE, "status")
        self.c.will_set(status, json.dumps({"state": "offline", "boot_id": boot}), 1, retain=True)
        up = threading.Event()
        self.c.on_connect = lambda *a: up.set()
        self.c.connect(stack.s.host, stack.s.mqtt_device_port, keepalive=5)
        self.c.loop_start()
        assert up.wait(15), "the device could not connect"
        self.c.publish(status, json.dumps({"state": "online", "boot_id": boot}), 1, retain=True)

    def drive(self, speed: float) -> None:
        ts = int(time.time() * 1e6) + np.arange(3) * 1000
        names = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"]
        s = Samples.from_columns(names, np.repeat(np.arange(2), 3), np.tile(ts, 2),
                                 np.r_[np.full(3, speed), np.full(3, 2500.0)])  # fmt: skip
        self.seq += 1
        payload = encode_telemetry(TelemetryBatch(DEVICE, self.boot, self.seq, s))
        self.c.publish(device_topic(DEVICE, "telemetry"), payload, qos=1).wait_for_publish(5)

    def die(self) -> None:
        """The connection breaks without a DISCONNECT (a crash, no coverage): the will goes out."""
        self.c.loop_stop()
        sock: Any = self.c.socket()
        sock.close()


def test_a_car_silent_at_speed_reaches_the_desk_and_reporting_again_closes_it(
    local_stack: Stack, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store = CrmStore.from_url(url)
    upgrade(store.engine)
    create_demo_users(store)
    seed_demo_crm(store, [(VIN, DEVICE, PLATE)], "dealer-a")
    with store.tx() as tx:  # the shipped rules' templates (the CRM worker refuses to start without)
        for code in ("maintenance", "tier-welcome"):
            if tx.get(CouponTemplate, code) is None:
                tx.add(CouponTemplate(code=code, title_zh=code, title_en=code, valid_days=60))
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({DEVICE: VIN}))
    create_topics(local_stack, [KAFKA_TELEMETRY, KAFKA_EVENTS, KAFKA_STATUS, KAFKA_ALERTS,
                                KAFKA_PREDICTIONS])  # fmt: skip
    s = local_stack.settings  # type: ignore[attr-defined]
    extra = {"CARPULSE_STREAM__REGISTRY": str(reg), "CARPULSE_STREAM__SILENT_AFTER_S": "3",
             "CARPULSE_STREAM__SESSION_TIMEOUT_S": "6"}  # fmt: skip
    with open(tmp_path / "crm.log", "wb") as out:
        crm = subprocess.Popen(
            [sys.executable, "-m", "carpulse", "crm", "worker", "--db", url, "--interval", "1"],
            env=pipeline_env(local_stack, **extra), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    cfg = DashboardConfig(crm_url=url, kafka_bootstrap=s.kafka.bootstrap,
                          kafka_options=s.kafka.client_options("dashboards"), secure_cookies=False)  # fmt: skip
    try:
        with (
            pipeline(local_stack, tmp_path, **extra),
            TestClient(create_app(cfg), base_url="http://testserver") as client,
        ):
            login(client, "agent")

            def row() -> dict[str, Any]:
                fleet = client.get("/console/desk").json()["fleet"]
                return next((r for r in fleet if r["vin"] == VIN), {})

            started = time.monotonic()
            car = Car(local_stack, "boot-1")

            def moving() -> bool:
                car.drive(123.0)
                return bool(row().get("moving")) and row().get("online") == "online"

            try:
                wait_for(moving, 90, "the car moving and online on the desk", interval=0.5)
            except AssertionError:
                logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
                raise AssertionError(f"logs: {logs}") from None
            print(f"moving on the desk after {time.monotonic() - started:.1f} s")
            car.die()
            t0 = time.monotonic()

            def card() -> dict[str, Any]:
                queue = client.get("/console/desk").json()["queue"]
                return next((c for c in queue if c["kind"] == "silent_car"), {})

            wait_for(lambda: card().get("open"), 30, "the silent-car card on the desk")
            waited = time.monotonic() - t0
            print(f"silent-car card on the desk {waited:.1f} s after the connection died")
            assert crm.poll() is None, (tmp_path / "crm.log").read_text()[-2000:]
            # silent_after_s (3 s) counts from the last telemetry's arrival, a moment before the
            # death (the desk showed it moving by then): not an alarm at the first missed beat
            assert waited >= 2.0, f"an alarm before silent_after_s ({waited:.1f} s)"
            assert "123 km/h" in card()["title"] and row()["alert"] == "silent_car"
            wait_for(lambda: row().get("online") == "offline", 10, "the last will on the desk")
            assert "offline" in card()["body"]  # the stream had the will when it raised the alert
            q = f"SELECT last(online) FROM device_status WHERE device = '{DEVICE}' AND vin = '{VIN}'"
            assert influx_query(local_stack, q)[0]["values"][0][1] == 0.0  # for Grafana
            desk = client.get("/console/desk").json()
            assert [c["kind"] for c in desk["queue"]].count("silent_car") == 1  # one per episode
            # the car comes back (out of the garage, the coverage gap): the card closes
            back = Car(local_stack, "boot-2")  # the device restarted
            back.drive(40.0)
            wait_for(lambda: card().get("state") == "done", 30, "the card closed")
            assert row()["online"] == "online" and row()["alert"] is None
            back.c.loop_stop()
            back.c.disconnect()
    finally:
        stop_processes([crm])
