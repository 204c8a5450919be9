"""End to end on the real Mosquitto: the console's command channel -> MQTT -> the edge agent ->
a CAN frame on a virtual bus, the head-unit simulator -> ack back; and the agent's own DTC poll of
the ELM327 emulator -> a ``dtc`` event on MQTT -> the stream's and the CRM's functions -> the
advisor's and the expert's inbox cards. (The same car through the bridge, Kafka and the stream and
CRM workers: tests/integration/test_dtc_e2e.py.) And the demo's car that takes commands
(``carpulse.demo_ids``) over the same channel."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import can
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select

from carpulse import demo_ids
from carpulse.local_files import with_device_certs
from carpulse.stack import Stack
from core.signing import generate_keypair, load_private_key
from core.topics import KAFKA_VEHICLE_STATE, device_topic
from core.wire import decode_event
from crm import store as st
from crm.engine import RuleEngine
from crm.migrate import upgrade
from crm.normalize import from_device_event
from crm.rules import shipped_rules
from crm.schema import Vehicle
from crm.tables import InboxItem
from dashboards.commands import CommandChannel
from dashboards.inbox import record_filer
from edge.agent import EdgeAgent, load_agent_config
from edge.headunit import HeadUnitSimulator
from edge.metrics import start_obs
from edge.wiring import attach_all
from firmware_bridge.obd.emulator import ElmEmulator
from stream.alerts import handle_event
from stream.registry import DeviceRegistry
from tests.conftest import require_data
from tests.contract.test_actuators import write_dbc

pytestmark = pytest.mark.integration

VIN = "LSVAA4182E2777777"


def _events_listener(stack: Stack, device: str) -> tuple[mqtt.Client, list[bytes]]:
    got: list[bytes] = []
    up = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ev-{device}")
    client.tls_set(ca_certs=str(stack.pki.ca_cert))
    client.username_pw_set("carpulse-bridge", stack.secret_file("carpulse-bridge").read_text())
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.on_subscribe = lambda *a: up.set()
    client.on_connect = lambda c, *a: c.subscribe(device_topic(device, "events"), qos=1)
    client.connect(stack.s.host, stack.s.mqtt_service_port)
    client.loop_start()
    assert up.wait(10), "no SUBACK for the events topic"
    return client, got


def test_console_to_actuators_and_dtcs_to_the_inbox(local_stack: Stack, tmp_path: Path) -> None:
    s = local_stack.settings  # type: ignore[attr-defined]
    device = f"act-{uuid.uuid4().hex[:8]}"
    cert, key = local_stack.provision_device(device)
    priv, pub = generate_keypair(tmp_path / "cmdkey")
    channel_name = f"body-{device}"
    bus = can.Bus(interface="virtual", channel=channel_name)
    listener, events = _events_listener(local_stack, device)
    console = CommandChannel(
        s.mqtt.model_copy(update={"username": "carpulse-console"}),
        load_private_key(priv),
        local_stack.secret_file("carpulse-console").read_text().strip(),
    )
    console.start()
    with ElmEmulator() as elm, HeadUnitSimulator(tmp_path / "hu.sock") as head_unit:
        elm.set_dtcs(["0217", "0420"], ["0171"])
        elm.set_freeze_frame("0217", {0x05: "96"})  # 110 degC when it overheated
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
dtc_interval_s = 60
[edge.crash]
enabled = false
[edge.commands]
public_key = "{pub}"
[edge.actuators.doors]
kind = "can"
dbc = "{write_dbc(tmp_path)}"
message = "BCM_DoorCmd"
lock = {{DoorLockReq = "Lock"}}
unlock = {{DoorLockReq = "Unlock"}}
interface = "virtual"
channel = "{channel_name}"
[edge.head_unit]
socket = "{tmp_path / "hu.sock"}"
""")
        agent_settings, agent_conf = load_agent_config(cfg)
        agent = EdgeAgent(with_device_certs(agent_settings), agent_conf)
        attach_all(agent, cfg)
        runner = threading.Thread(target=agent.run, kwargs={"seconds": 25}, daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 10
            while not agent.pub.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert agent.pub.connected, "the agent did not connect"
            time.sleep(0.5)  # its SUBSCRIBE to cmd/+ goes out right after the CONNACK

            lock = console.send(device, "lock", {})
            ack = console.wait_ack(lock, 10)
            assert ack is not None, "no ack for lock"
            assert (ack.status, ack.reason) == ("accepted", "ok")
            assert ack.detail == "done: lock by doors (can)"
            frame = bus.recv(2)
            assert frame is not None and frame.arbitration_id == 1312
            assert bytes(frame.data) == bytes.fromhex("0150000000000000")  # DoorLockReq = Lock
            assert ack.result["done"][0]["frame"] == "520#0150000000000000"

            nav = console.send(device, "navigate", {"address": "Dealer, 88 Huaihai Rd"})
            ack = console.wait_ack(nav, 10)
            assert ack is not None and ack.detail == "done: head unit route_started"
            assert [d["address"] for d in head_unit.received] == ["Dealer, 88 Huaihai Rd"]

            deadline = time.monotonic() + 10
            while not events and time.monotonic() < deadline:
                time.sleep(0.05)
            obs = start_obs(agent, "127.0.0.1", 0)  # what Prometheus scrapes on the car
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{obs.port}/metrics", timeout=5) as r:
                    metrics = r.read().decode()
            finally:
                obs.close()
            # (labels come out sorted by name)
            doors = f'actuator="doors",device="{device}"'
            assert f'carpulse_edge_actions_total{{action="lock",{doors}}} 1.0' in metrics
            assert f'carpulse_edge_actions_total{{action="failed",{doors}}} 0.0' in metrics
            obd = f'device="{device}",outcome="ok",source="obd0"'
            assert f"carpulse_edge_dtc_polls_total{{{obd}}} 1.0" in metrics
        finally:
            agent.stop()
            runner.join(15)
            console.stop()
            listener.loop_stop()
            listener.disconnect()
            bus.shutdown()
    assert not runner.is_alive()
    dtc_events = [e for e in map(decode_event, events) if e.kind == "dtc"]
    assert len(dtc_events) == 1, events
    ev = dtc_events[0]
    assert ev.data["codes"] == ["P0217", "P0420"] and ev.data["mil"] is True
    assert ev.data["freeze_frame"] == {
        "dtc": "P0217",
        "values": {"Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature": 110.0},
    }

    # What the stream's events agent and the CRM worker do with that payload, then the inbox.
    (payload,) = [p for p in events if decode_event(p).kind == "dtc"]
    state: dict[str, bytes] = {}
    res = handle_event(payload, DeviceRegistry({device: VIN}), lambda t, k: state.get(k), 0)
    assert res.dead is None and res.state_update is not None
    vstate = json.loads(res.state_update[1])
    assert vstate["active_dtcs"] == ["P0217", "P0420"]
    store = st.CrmStore(st.make_engine(f"sqlite:///{tmp_path / 'crm.sqlite'}"))
    upgrade(store.engine)
    with store.tx() as sx:
        sx.add(Vehicle(vin=VIN, model="Lavida", device_id=device))
    engine = RuleEngine(shipped_rules())
    with store.tx() as sx:
        for crm_event in from_device_event(payload):
            engine.handle(sx, crm_event)
    record_filer(store)(KAFKA_VEHICLE_STATE, vstate)
    with store.tx() as sx:
        cards = [
            (c.kind, c.role, c.effect_key.split("|")[2]) for c in sx.scalars(select(InboxItem))
        ]
    # overheating (high) in the expert queue, the catalyst (medium) with the advisor; one card
    # per code, whoever filed it (the rules engine and the dashboard's state feed both did)
    assert sorted(cards) == [("dtc", "advisor", "P0420"), ("dtc", "expert", "P0217")]


def test_the_demo_car_acts_on_the_console(local_stack: Stack, tmp_path: Path) -> None:
    """``carpulse demo``'s ``demo-ids`` (``carpulse.demo_ids``, with the stack's TLS identity and
    its command key) over the real Mosquitto: unlock and navigate from the console's channel ->
    acks that say what the car did."""
    require_data("canlogs/gt350")
    if not demo_ids.available():
        pytest.skip("the demo's gt350 logs are not all here")
    s = local_stack.settings  # type: ignore[attr-defined]
    s = s.model_copy(update={"edge": s.edge.model_copy(update={"state_dir": tmp_path / "state"})})
    agent, head_unit = demo_ids.build(s, tmp_path)
    console = CommandChannel(
        s.mqtt.model_copy(update={"username": "carpulse-console"}),
        load_private_key(
            local_stack.root / "pki" / "cmd-sign.key"
        ),  # what the demo's dashboard signs with
        local_stack.secret_file("carpulse-console").read_text().strip(),
    )
    console.start()
    runner = threading.Thread(target=agent.run, kwargs={"seconds": 30}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while not agent.pub.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.pub.connected, "demo-ids did not connect"
        time.sleep(0.5)  # its SUBSCRIBE to cmd/+ goes out right after the CONNACK
        unlock = console.wait_ack(console.send(demo_ids.DEVICE, "unlock", {}), 10)
        assert unlock is not None, "no ack for unlock"
        assert (unlock.status, unlock.detail) == ("accepted", "done: unlock by doors (virtual)")
        assert agent.actuators[0].state == "unlocked"
        nav = console.send(demo_ids.DEVICE, "navigate", {"address": "Dealer, 88 Huaihai Rd"})
        ack = console.wait_ack(nav, 10)
        assert ack is not None and ack.detail == "done: head unit route_started"
        assert [d["address"] for d in head_unit.received] == ["Dealer, 88 Huaihai Rd"]
    finally:
        agent.stop()
        runner.join(15)
        console.stop()
    assert not runner.is_alive() and not head_unit.path.exists()  # closed with the agent
