"""A signed command replaces a running campaign without a restart; replays and forgeries are refused."""

from __future__ import annotations

import ssl
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from core.commands import decode_ack
from core.signing import generate_keypair, load_private_key, sign_command
from core.topics import command_topic
from tests.reliability.helpers import (
    Collector,
    Mosquitto,
    edge_toml,
    read_stats,
    spawn_agent,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.security]


def _console(broker: Mosquitto) -> mqtt.Client:
    stack = broker.stack
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"console-{uuid.uuid4().hex[:6]}")
    c.username_pw_set("carpulse-console", stack.secret_file("carpulse-console").read_text().strip())
    c.tls_set(ca_certs=str(stack.pki.ca_cert), cert_reqs=ssl.CERT_REQUIRED)
    c.connect(stack.s.host, stack.s.mqtt_service_port)
    c.loop_start()
    return c


def test_replace_campaign_over_a_signed_command(broker: Mosquitto, tmp_path: Path) -> None:
    device, state = "car-cmd", tmp_path / "state"
    priv, pub = generate_keypair(tmp_path / "keys")
    cfg = edge_toml(
        broker.stack, tmp_path / "edge.toml", device, state,
        sources=[{"type": "sim", "seed": 1}],
        campaigns=[{"name": "speed", "version": 1, "kind": "periodic", "signals": ["Vehicle.Speed"]}],
        tables=f'[edge.commands]\npublic_key = "{pub}"\n',
    )  # fmt: skip
    col = Collector(broker.stack, channels=("cmd-ack",))
    agent = spawn_agent(cfg, tmp_path / "agent.log")
    console = _console(broker)
    key = load_private_key(priv)
    topic = command_topic(device, "replace_campaign")
    try:
        wait_until(lambda: read_stats(state).get("connected"), 90, "the agent online")
        time.sleep(0.5)  # the subscription follows the CONNACK
        new = {
            "name": "speed",
            "version": 2,
            "kind": "on_change",
            "signals": ["Vehicle.Speed"],
            "deadband": 2,
        }
        payload = sign_command(key, device, "replace_campaign", {"campaign": new}, ttl_s=60)
        console.publish(topic, payload, qos=1).wait_for_publish(10)
        wait_until(
            lambda: read_stats(state).get("campaigns", {}).get("speed") == 2,
            30,
            "version 2 running",
        )
        console.publish(topic, payload, qos=1).wait_for_publish(10)  # the same bytes again
        other = load_private_key(generate_keypair(tmp_path / "other")[0])  # not the provisioned key
        new3 = dict(new, version=3)
        forged = sign_command(other, device, "replace_campaign", {"campaign": new3}, ttl_s=60)
        console.publish(topic, forged, qos=1).wait_for_publish(10)
        wait_until(lambda: len(col.acks) >= 3, 30, "three acks")
    finally:
        agent.terminate()
        agent.wait(60)
        console.disconnect()
        console.loop_stop()
        col.close()
    acks = [decode_ack(a) for a in col.acks]
    assert (acks[0].status, acks[0].result.get("version")) == ("accepted", 2)
    assert (acks[1].status, acks[1].reason) == ("refused", "replayed")
    assert (acks[2].status, acks[2].reason) == ("refused", "unknown_key")  # not a trusted key
    assert read_stats(state)["campaigns"]["speed"] == 2
