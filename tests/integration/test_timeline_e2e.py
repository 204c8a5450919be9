"""The vehicle timeline end to end on the real stack (issue 18, item 8): a car (paho, its own
certificate) reports a fault code and a crash over MQTT, the dealer's gate camera sees its plate,
and an agent locks it from the console -> bridge -> Kafka -> the stream worker (vehicle-state with
the DTCs, the crash alert) -> the CRM worker (crash card, gate sighting) and the dashboard's feed
(DTC card) -> the console's vehicle page lists them newest first. The car is sold: the new owner's
timeline is empty, and only the new owner's own fault appears after that."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from carpulse.stack import Stack, stop_processes
from core.signing import generate_keypair
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_EVENTS,
    KAFKA_PREDICTIONS,
    KAFKA_STATUS,
    KAFKA_TELEMETRY,
    device_topic,
)
from core.wire import Event, encode_event
from crm.migrate import upgrade
from crm.schema import CouponTemplate, Customer
from crm.store import CrmStore, find_or_create_customer, transfer_ownership
from dashboards.app import DashboardConfig, create_app
from dashboards.users import create_demo_users, seed_demo_crm
from tests.integration.helpers import pipeline, pipeline_env, wait_for
from tests.integration.stream_util import create_topics
from tests.unit.dashboards.conftest import csrf_of, login

paho = pytest.importorskip("paho.mqtt.client")
pytestmark = [pytest.mark.integration]

VIN, CAR, PLATE, GATE = "CPTML000000000001", "tml-car-1", "TML001", "tml-gate-1"


class Device:
    def __init__(self, stack: Stack, device: str) -> None:
        self.device, self.seq = device, 0
        cert, key = stack.provision_device(device)
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=device,
                             protocol=paho.MQTTv311)  # fmt: skip
        self.c.tls_set(ca_certs=str(stack.pki.ca_cert), certfile=str(cert), keyfile=str(key))
        up = threading.Event()
        self.c.on_connect = lambda *a: up.set()
        self.c.connect(stack.s.host, stack.s.mqtt_device_port, keepalive=10)
        self.c.loop_start()
        assert up.wait(15), f"{device} could not connect"

    def event(self, kind: str, data: dict[str, object]) -> None:
        self.seq += 1
        ev = Event(self.device, "boot-1", self.seq, kind, int(time.time() * 1e6), 1, data)
        topic = device_topic(self.device, "events")
        self.c.publish(topic, encode_event(ev), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def kinds(html: str) -> list[str]:
    start = html.index('id="timeline"')
    return re.findall(r'data-kind="(\w+)"', html[start : html.index("</section>", start)])


def test_the_console_timeline_follows_the_car_and_the_ownership(
    local_stack: Stack, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store = CrmStore.from_url(url)
    upgrade(store.engine)
    create_demo_users(store)
    seed_demo_crm(store, [(VIN, CAR, PLATE)], "dealer-a")
    with store.tx() as tx:  # the shipped rules' templates (the CRM worker refuses to start without)
        for code in ("maintenance", "tier-welcome"):
            if tx.get(CouponTemplate, code) is None:
                tx.add(CouponTemplate(code=code, title_zh=code, title_en=code, valid_days=60))
    reg = tmp_path / "registry.json"
    reg.write_text(
        json.dumps([{"device_id": CAR, "vin": VIN}, {"device_id": GATE, "role": "gate"}])
    )
    create_topics(local_stack, [KAFKA_TELEMETRY, KAFKA_EVENTS, KAFKA_STATUS, KAFKA_ALERTS,
                                KAFKA_PREDICTIONS])  # fmt: skip
    s = local_stack.settings  # type: ignore[attr-defined]
    extra = {"CARPULSE_STREAM__REGISTRY": str(reg), "CARPULSE_STREAM__SESSION_TIMEOUT_S": "6"}
    with open(tmp_path / "crm.log", "wb") as out:
        crm = subprocess.Popen(
            [sys.executable, "-m", "carpulse", "crm", "worker", "--db", url, "--interval", "1"],
            env=pipeline_env(local_stack, **extra), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    priv, _ = generate_keypair(tmp_path / "cmdkey")
    cfg = DashboardConfig(
        crm_url=url, kafka_bootstrap=s.kafka.bootstrap,
        kafka_options=s.kafka.client_options("dashboards"), secure_cookies=False,
        mqtt=s.mqtt.model_copy(update={"username": "carpulse-console"}),
        mqtt_password=local_stack.secret_file("carpulse-console").read_text().strip(),
        signing_key=priv,
    )  # fmt: skip
    started = time.monotonic()
    try:
        with (
            pipeline(local_stack, tmp_path, **extra),
            TestClient(create_app(cfg), base_url="http://testserver") as client,
        ):
            car, gate = Device(local_stack, CAR), Device(local_stack, GATE)
            login(client, "agent")
            page = f"/console/vehicles/{VIN}"
            evil = "<img src=x onerror=alert(1)>"

            def dtc_shown() -> bool:  # resent until the pipeline is up (MQTT keeps nothing)
                car.event("dtc", {"codes": ["P0217"], "descriptions": {"P0217": evil}})
                return "dtc" in kinds(client.get(page).text)

            def wait_or_logs(cond: Callable[[], object], timeout: float, what: str) -> None:
                try:
                    wait_for(cond, timeout, what, interval=0.5)
                except AssertionError as err:
                    logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
                    raise AssertionError(f"{err}; logs: {logs}") from None

            wait_or_logs(dtc_shown, 90, "the fault code on the timeline")
            print(f"fault code on the timeline after {time.monotonic() - started:.1f} s")
            car.event("crash", {"trigger": "accel", "peak_g": 7.5})
            wait_or_logs(lambda: "crash" in kinds(client.get(page).text), 60, "the crash")
            # a card's time is when the CRM filed it, a sighting's the camera's: the car is
            # towed to the dealer after its crash card is up
            gate.event("gate.plate", {"plate": PLATE, "camera": "gate-north", "confidence": 0.97})
            wait_or_logs(lambda: "gate" in kinds(client.get(page).text), 60, "the gate arrival")
            token = csrf_of(client.get(page).text)
            r = client.post(f"{page}/doors", data={"csrf_token": token, "action": "lock",
                                                   "confirm": VIN[-6:]})  # fmt: skip
            assert r.status_code == 200, r.text
            html = client.get(page).text
            assert kinds(html) == ["command", "gate", "crash", "dtc"]  # newest first
            assert "lock sent by agent" in html and "pending" in html  # no car answers here
            assert "<img src=x" not in html
            assert crm.poll() is None, (tmp_path / "crm.log").read_text()[-2000:]

            # sold: the new owner's period starts now; nothing of the previous one shows
            with store.tx() as tx:
                buyer = find_or_create_customer(tx, {"phone": "+8613900000777"}, source="test")
                new_owner = tx.get(Customer, buyer)
                assert new_owner is not None
                new_owner.dealer_id = "dealer-a"  # sold through the same dealer
                transfer_ownership(tx, VIN, buyer, dt.datetime.now(dt.UTC))
            assert kinds(client.get(page).text) == []

            def new_fault_shown() -> list[str]:  # the car repeats its report, as cars do
                car.event("dtc", {"codes": ["P0217", "P0420"]})  # the new owner's own report
                return kinds(client.get(page).text)

            wait_or_logs(new_fault_shown, 60, "the new owner's fault")
            html = client.get(page).text
            start = html.index('id="timeline"')
            section = html[start : html.index("</section>", start)]
            # the fault still there is the new owner's card now (one per code and ownership)
            assert set(kinds(html)) == {"dtc"} and "crash" not in section
            assert "gate-north" not in section and "lock sent" not in section
            car.close()
            gate.close()
            print(f"done after {time.monotonic() - started:.1f} s (then the processes stop)")
    finally:
        stop_processes([crm])
