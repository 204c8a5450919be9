"""Fault codes end to end from the car (issue 18, item 1): the real edge agent's OBD source polls
the ELM327 emulator with codes set -> a ``dtc`` event over MQTT (TLS, the car's certificate) ->
the ingest bridge -> Kafka -> the stream worker (``vehicle-state``'s active DTCs) and the CRM
worker (the shipped ``dtc-high-expert`` rule) -> the dashboard's feed -> one card per code in the
advisor's inbox (the overheating in the expert queue), and the console's vehicle page (live state
and timeline). Then a workshop tool clears the codes: the agent's next poll reports it and the
vehicle state reaches no codes and health back from ``fault``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from carpulse.local_files import with_device_certs
from carpulse.stack import Stack, stop_processes
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_EVENTS,
    KAFKA_PREDICTIONS,
    KAFKA_STATUS,
    KAFKA_TELEMETRY,
)
from crm.migrate import upgrade
from crm.schema import CouponTemplate
from crm.store import CrmStore
from crm.tables import InboxItem
from dashboards.app import DashboardConfig, create_app
from dashboards.users import create_demo_users, seed_demo_crm
from edge.agent import EdgeAgent, load_agent_config
from edge.wiring import attach_all
from firmware_bridge.obd.emulator import ElmEmulator
from tests.integration.helpers import pipeline, pipeline_env, wait_for
from tests.integration.stream_util import create_topics
from tests.unit.dashboards.conftest import login

pytestmark = pytest.mark.integration

VIN, PLATE = "CPDTC000000000001", "DTC001"


def test_fault_codes_from_the_car_reach_the_inbox_and_clear(
    local_stack: Stack, tmp_path: Path
) -> None:
    device = f"dtc-car-{uuid.uuid4().hex[:6]}"
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store = CrmStore.from_url(url)
    upgrade(store.engine)
    create_demo_users(store)
    seed_demo_crm(store, [(VIN, device, PLATE)], "dealer-a")
    with store.tx() as tx:  # the shipped rules' templates (the CRM worker refuses to start without)
        for code in ("maintenance", "tier-welcome"):
            if tx.get(CouponTemplate, code) is None:
                tx.add(CouponTemplate(code=code, title_zh=code, title_en=code, valid_days=60))
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps([{"device_id": device, "vin": VIN}]))
    create_topics(local_stack, [KAFKA_TELEMETRY, KAFKA_EVENTS, KAFKA_STATUS, KAFKA_ALERTS,
                                KAFKA_PREDICTIONS])  # fmt: skip
    s = local_stack.settings  # type: ignore[attr-defined]
    extra = {"CARPULSE_STREAM__REGISTRY": str(reg), "CARPULSE_STREAM__SESSION_TIMEOUT_S": "6"}
    started = time.monotonic()
    with open(tmp_path / "crm.log", "wb") as out:
        crm = subprocess.Popen(
            [sys.executable, "-m", "carpulse", "crm", "worker", "--db", url, "--interval", "1"],
            env=pipeline_env(local_stack, **extra), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    cert, key = local_stack.provision_device(device)
    dash = DashboardConfig(crm_url=url, kafka_bootstrap=s.kafka.bootstrap,
                           kafka_options=s.kafka.client_options("dashboards"), secure_cookies=False)  # fmt: skip
    agent: EdgeAgent | None = None
    runner: threading.Thread | None = None
    try:
        with (
            ElmEmulator() as elm,
            pipeline(local_stack, tmp_path, **extra),
            TestClient(create_app(dash), base_url="http://testserver") as client,
        ):
            elm.set_dtcs(["0217", "0420"], ["0171"])  # overheating (high), catalyst (medium)
            cfg = tmp_path / "edge.toml"
            cfg.write_text(f"""
[edge]
device_id = "{device}"
broker_host = "{local_stack.s.host}"
broker_port = {local_stack.s.mqtt_device_port}
ca_file = "{local_stack.pki.ca_cert}"
cert_file = "{cert}"
key_file = "{key}"
state_dir = "{tmp_path / "state"}"
[[edge.sources]]
type = "obd"
port = "{elm.port}"
pids = [0x0C, 0x0D]
interval_s = 0.2
dtc_interval_s = 1
[edge.crash]
enabled = false
""")
            agent_settings, agent_conf = load_agent_config(cfg)
            agent = EdgeAgent(with_device_certs(agent_settings), agent_conf)
            attach_all(agent, cfg)
            # stopped in the finally below; long enough for a worker that first reads the
            # session's earlier records on the shared topics (a fresh consumer group)
            runner = threading.Thread(target=agent.run, kwargs={"seconds": 400}, daemon=True)
            login(client, "advisor")
            bridge_log = tmp_path / "bridge.log"
            # MQTT keeps nothing for a subscriber that is not there yet: the car starts after
            wait_for(lambda: "connected to MQTT and subscribed" in bridge_log.read_text(), 30,
                     "the bridge subscribed")  # fmt: skip
            runner.start()
            page = f"/console/vehicles/{VIN}"

            def state() -> dict[str, Any]:
                r = client.get(f"{page}/state")
                return r.json() if r.status_code == 200 else {}  # type: ignore[no-any-return]

            def cards() -> list[tuple[str, str, str, str | None]]:
                with store.tx() as tx:  # the CRM worker's rule and the dashboard's feed file them
                    return sorted(
                        (c.kind, c.role, c.effect_key.split("|")[2], c.vin)
                        for c in tx.scalars(select(InboxItem))
                    )

            def codes() -> list[str]:
                return [d["code"] for d in state().get("dtcs", [])]

            try:
                # as the other e2e tests: up to 90 s+ in a full run, where the fresh worker first
                # reads every earlier test's records; ~7 s on a fresh stack
                wait_for(lambda: codes() == ["P0217", "P0420"], 150, "the codes in the state")
                wait_for(lambda: len(cards()) >= 2, 60, "two inbox cards")
            except AssertionError:
                logs = {p.name: p.read_text()[-2500:] for p in tmp_path.glob("*.log")}
                raise AssertionError(f"agent: {agent.stats} logs: {logs}") from None
            print(f"codes in the vehicle state {time.monotonic() - started:.1f} s after start")
            assert state()["health"] == "fault"
            # one card per code, whoever filed it; the overheating in the expert queue
            assert cards() == [("dtc", "advisor", "P0420", VIN), ("dtc", "expert", "P0217", VIN)]
            inbox = client.get("/inbox").text  # the advisor sees the dealer's expert cards too
            assert "P0420" in inbox and "P0217" in inbox and PLATE in inbox
            html = client.get(page).text
            timeline = html[html.index('id="timeline"') :]
            assert 'data-kind="dtc"' in timeline and "P0217" in timeline

            elm.set_dtcs([], [])  # cleared by a workshop tool (carpulse never sends mode 04)
            wait_for(lambda: state().get("dtcs") == [], 60, "the cleared codes in the state")
            assert state()["health"] == "ok"
            print(f"cleared in the vehicle state {time.monotonic() - started:.1f} s after start")
            assert crm.poll() is None, (tmp_path / "crm.log").read_text()[-2000:]
    finally:
        if agent is not None:
            agent.stop()
        if runner is not None and runner.is_alive():
            runner.join(15)
        stop_processes([crm])
    assert agent.sources[0].dtc_counters["errors"] == 0
    assert agent.stats["samples_out"] > 0  # the PIDs went out too, not only the events
