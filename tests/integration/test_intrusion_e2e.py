"""CAN intrusion end to end on the real stack: ``carpulse ids learn`` on clean gt350 logs -> the edge
agent (``[edge.intrusion]``) replays a held-out log with a DoS injected by ``carpulse ids inject``
-> an ``intrusion`` event over MQTT (TLS, its certificate) -> the ingest bridge -> Kafka
``carpulse.events`` -> the CRM worker's rule -> the security queue on the console's desk."""

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
from typer.testing import CliRunner

from carpulse.local_files import with_device_certs
from carpulse.stack import Stack, stop_processes
from core.topics import KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_PREDICTIONS, KAFKA_TELEMETRY
from crm.migrate import upgrade
from crm.schema import CouponTemplate
from crm.store import CrmStore
from dashboards.app import DashboardConfig, create_app
from dashboards.users import create_demo_users, seed_demo_crm
from edge.agent import EdgeAgent, load_agent_config
from edge.wiring import attach_all
from tests.conftest import require_data
from tests.integration.helpers import pipeline_env, wait_for
from tests.integration.stream_util import create_topics
from tests.unit.dashboards.conftest import login

pytestmark = pytest.mark.integration

VIN, PLATE = "CPIDS000000000001", "IDS001"
TRAIN = ("keyon.log", "aconoff.log", "steeringchanges.log", "normalsportcomfort.log")
ATTACKED = "tracoff.log"  # held out of the profile


def _cli(*args: str) -> dict[str, Any]:
    from carpulse.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_an_injected_dos_reaches_the_security_queue(local_stack: Stack, tmp_path: Path) -> None:
    root = require_data("canlogs/gt350")
    device = f"ids-car-{uuid.uuid4().hex[:6]}"
    prof = tmp_path / "gt350.ids.json"
    _cli("ids", "learn", *(str(root / n) for n in TRAIN), "--model", "gt350", "--out", str(prof))
    attacked = tmp_path / "attacked.log"
    inj = _cli("ids", "inject", str(root / ATTACKED), "--out", str(attacked), "--attack", "dos",
               "--at-s", "3", "--for-s", "1")  # fmt: skip
    assert inj["injected"] == 3334

    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store = CrmStore.from_url(url)
    upgrade(store.engine)
    create_demo_users(store)
    seed_demo_crm(store, [(VIN, device, PLATE)], "dealer-a")
    with store.tx() as tx:  # the shipped rules' templates (the CRM worker refuses to start without)
        for code in ("maintenance", "tier-welcome"):
            if tx.get(CouponTemplate, code) is None:
                tx.add(CouponTemplate(code=code, title_zh=code, title_en=code, valid_days=60))
    create_topics(local_stack, [KAFKA_TELEMETRY, KAFKA_EVENTS, KAFKA_ALERTS, KAFKA_PREDICTIONS])
    env = pipeline_env(local_stack, CARPULSE_STREAM__SESSION_TIMEOUT_S="6")
    procs = []
    started = time.monotonic()
    for name, args in (("bridge", ["stream", "bridge"]),
                       ("crm", ["crm", "worker", "--db", url, "--interval", "1"])):  # fmt: skip
        with open(tmp_path / f"{name}.log", "wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "carpulse", *args], env=env,
                                          stdout=out, stderr=subprocess.STDOUT))  # fmt: skip

    cert, key = local_stack.provision_device(device)
    s = local_stack.settings  # type: ignore[attr-defined]
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
stats_file = "{tmp_path / "stats.json"}"
[[edge.sources]]
type = "can"
name = "can"
log = "{attacked}"
dbc = "{root / "ford_lincoln_base_pt.dbc"}"
mapping = "gt350"
rate = 4
[edge.intrusion]
enabled = true
profile = "{prof}"
cooldown_s = 30
""")
    agent_settings, agent_conf = load_agent_config(cfg)
    agent = EdgeAgent(with_device_certs(agent_settings), agent_conf)
    attach_all(agent, cfg)
    runner = threading.Thread(target=agent.run, kwargs={"seconds": 25}, daemon=True)
    dash = DashboardConfig(crm_url=url, kafka_bootstrap=s.kafka.bootstrap,
                           kafka_options=s.kafka.client_options("dashboards"), secure_cookies=False)  # fmt: skip
    try:
        with TestClient(create_app(dash), base_url="http://testserver") as client:
            login(client, "agent")
            wait_for(lambda: "connected to MQTT and subscribed" in (tmp_path / "bridge.log").read_text(),
                     30, "the bridge subscribed")  # fmt: skip
            runner.start()

            def card() -> dict[str, Any]:
                return next(iter(client.get("/console/desk").json()["security"]), {})

            try:
                wait_for(lambda: card().get("open"), 40, "the intrusion card in the security queue")
            except AssertionError:
                logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
                raise AssertionError(f"agent: {agent.stats} logs: {logs}") from None
            print(f"intrusion card on the desk {time.monotonic() - started:.1f} s after start")
            got = card()
            assert got["kind"] == "intrusion" and got["vin"] == VIN
            assert "dos" in got["title"] and "0x000 (unknown, 3334 frames)" in got["body"]
            page = client.get("/console").text
            assert 'id="security"' in page and 'data-kind="intrusion"' in page
            desk = client.get("/console/desk").json()
            assert desk["counts"]["open_security"] == 1 and desk["queue"] == []
            assert {r["vin"]: r["alert"] for r in desk["fleet"]}[VIN] == "intrusion"
    finally:
        agent.stop()
        runner.join(15)
        stop_processes(procs)
    st = agent.intrusion[0].counters
    # the whole DoS flagged (3,334 frames), the rest of the held-out log at most a few stray frames;
    # the 1 s attack fits the event's 1 s window: one incident, one event
    assert st["events"] == 1 and st["incidents"] == 1 and st["suppressed"] == 0, st
    assert 3334 <= st["flagged"] <= 3334 + 20, st
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["intrusion"]["events"] == 1 and stats["intrusion"]["frames"] == st["frames"]
