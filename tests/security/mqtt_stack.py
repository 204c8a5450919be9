"""A Mosquitto-only local stack (the stack's own config, PKI and ACLs) for the MQTT attack tests.

The full ``local_stack`` also starts Kafka and InfluxDB; these tests need only the broker, so they
start it alone through the same ``carpulse.stack.Stack`` code, on free ports in a temp dir.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from carpulse.stack import Stack, free_stack_settings

DENIED = 0x80  # SUBACK failure (MQTT 3.1.1)


@pytest.fixture(scope="module")
def mqtt_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("mqtt-stack")
    stack = Stack(free_stack_settings(root))
    stack.prepare()
    argv, log, _port = stack._commands()["mosquitto"]
    stack._spawn("mosquitto", argv(), log)
    try:
        stack._wait_healthy("mosquitto", log, time.monotonic())
        yield stack
    finally:
        stack.down()


class Peer:
    """A connected MQTT client that records what it receives, its SUBACKs and its disconnects."""

    def __init__(self, client: mqtt.Client, host: str, port: int) -> None:
        self.client = client
        self.got: list[tuple[str, bytes, bool]] = []
        self.disconnects: list[str] = []
        self.connack: str | None = None
        self._up = threading.Event()
        self._subacks: dict[int, list[int]] = {}
        self._sub_done = threading.Condition()
        client.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload), m.retain))
        client.on_connect = self._on_connect
        client.on_disconnect = lambda c, u, f, r, p: self.disconnects.append(str(r))
        client.on_subscribe = self._on_subscribe
        client.connect(host, port, keepalive=30)
        client.loop_start()
        self._up.wait(10)

    def _on_connect(self, c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
        self.connack = str(reason)
        self._up.set()

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: Any, p: Any) -> None:
        with self._sub_done:
            self._subacks[mid] = [int(rc.value) for rc in codes]
            self._sub_done.notify_all()

    def subscribe(self, topic: str) -> int:
        """Subscribe (QoS 1) and return the SUBACK code: 1 granted, 0x80 refused."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self._sub_done:
            assert self._sub_done.wait_for(lambda: mid in self._subacks, 10), topic
            return self._subacks[mid][0]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets(sockpair_only=True)  # else freed only by the GC: a warning


def _device(stack: Stack, device_id: str, *, client_id: str | None = None) -> Peer:
    cert, key = stack.provision_device(device_id)
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or device_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    c.tls_set(ca_certs=str(stack.pki.ca_cert), certfile=str(cert), keyfile=str(key))
    c.reconnect_delay_set(5, 30)  # a kicked attacker must not kick back in a tight loop
    return Peer(c, stack.s.host, stack.s.mqtt_device_port)


def _service(stack: Stack, user: str, client_id: str | None = None) -> Peer:
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{user}-test-{secrets.token_hex(3)}",
        protocol=mqtt.MQTTv311,
    )
    c.tls_set(ca_certs=str(stack.pki.ca_cert))
    c.username_pw_set(user, stack.secret_file(user).read_text().strip())
    return Peer(c, stack.s.host, stack.s.mqtt_service_port)


def _wait(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()
