"""Signed commands from the console to a car over MQTT, and their acknowledgements from ``cmd-ack``.

The console signs with the cloud's Ed25519 key (``cmd-sign.key``, see ``carpulse pki command-key``)
through ``core.signing`` (the dashboards never import ``edge``), publishes on
``carpulse/v1/<device>/cmd/<name>`` as the ``carpulse-console`` service user (QoS 1), and listens on
``carpulse/v1/+/cmd-ack`` so the page can show the car's answer. Acks are kept by command id, and
only from the device the command went to: an ack for an unknown command, or published on another
device's ``cmd-ack``, is counted and dropped. No exception leaves ``on_ack`` (paho's network thread
would die with it and every later command would fail until a restart).
"""

from __future__ import annotations

import logging
import secrets
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.commands import Ack, check_args, decode_ack
from core.config import MqttSettings
from core.errors import ConfigError, PublishError, WireError
from core.signing import generate_keypair, sign_command
from core.topics import command_topic, parse_topic, subscription

log = logging.getLogger(__name__)

CONSOLE_USER: Final = "carpulse-console"
COMMAND_TTL_S: Final = 120.0  # a destination or an unlock older than this is not what was meant
MAX_ACKS: Final = 10_000


def generate_signing_key(folder: Path) -> Path:
    """The demo's key pair under ``folder`` (kept when it exists), as ``carpulse pki command-key``."""
    priv, _pub = generate_keypair(folder)
    return priv


def sign(
    key: Ed25519PrivateKey, device_id: str, name: str, args: dict[str, Any]
) -> tuple[str, bytes]:
    """``(command id, payload)`` for ``command_topic(device_id, name)``; bad args raise WireError."""
    check_args(name, args)
    cid = uuid.uuid4().hex
    return cid, sign_command(key, device_id, name, args, COMMAND_TTL_S, command_id=cid)


class CommandChannel:
    """One MQTT connection for sending commands and collecting their acks."""

    def __init__(self, mqtt: MqttSettings, key: Ed25519PrivateKey, password: str | None) -> None:
        import paho.mqtt.client as paho

        self.key = key
        self.acks: dict[str, Ack] = {}
        self.sent: dict[str, str] = {}  # command id -> the device it went to (the last MAX_ACKS)
        self.dropped: dict[str, int] = {}  # reason -> acks dropped
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"carpulse-console-{secrets.token_hex(4)}",
            protocol=paho.MQTTv311,
        )
        self.client.username_pw_set(mqtt.username or CONSOLE_USER, password)
        if mqtt.ca_file is not None:
            try:
                self.client.tls_set(ca_certs=str(mqtt.ca_file))
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(f"mqtt.ca_file {mqtt.ca_file}: {err}") from err
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self._connected.clear()
        self.client.on_message = self._on_message
        self.host, self.port = mqtt.host, mqtt.port

    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        if reason.is_failure:
            log.error("console MQTT refused: %s", reason)
            return
        client.subscribe(subscription("cmd-ack"), qos=1)
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        try:  # msg.topic raises on a topic that is not UTF-8
            topic, payload = msg._topic.decode("utf-8", "replace"), msg.payload
        except Exception:  # the network thread must survive any input
            topic, payload = "", b""
        self.on_ack(topic, payload)

    def on_ack(self, topic: Any, payload: Any) -> str:
        """Handle one message of ``cmd-ack``: ``"kept"`` or the reason it was dropped.

        Runs in paho's network thread: nothing may escape it.
        """
        try:
            reason = self._on_ack(topic, payload)
        except Exception as err:  # the network thread must survive any input
            log.exception("ack handler failed on %r", str(topic)[:200])
            reason = f"handler_error:{type(err).__name__}"
        if reason != "kept":
            with self._lock:
                self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return reason

    def _on_ack(self, topic: Any, payload: Any) -> str:
        try:
            device, channel = parse_topic(topic) if isinstance(topic, str) else ("", "")
            if channel != "cmd-ack":
                return "bad_topic"
            ack = decode_ack(bytes(payload) if isinstance(payload, bytes | bytearray) else payload)
        except WireError as err:
            log.warning("bad ack on %r: %s", str(topic)[:200], err)
            return f"malformed:{err.reason}"
        if not ack.id:
            return "no_id"
        with self._lock:
            expected = self.sent.get(ack.id)
            if expected is None:
                return "unknown_command"
            if expected != device:
                log.warning(
                    "ack for command %s to %s came from %s: dropped", ack.id, expected, device
                )
                return "wrong_device"
            if ack.id not in self.acks and len(self.acks) >= MAX_ACKS:
                self.acks.pop(next(iter(self.acks)))
            self.acks[ack.id] = ack
        return "kept"

    def start(self, timeout: float = 10.0) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as err:
            raise PublishError(f"console cannot reach MQTT {self.host}:{self.port}: {err}") from err
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise PublishError(f"console MQTT {self.host}:{self.port}: no CONNACK in {timeout} s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send(self, device_id: str, name: str, args: dict[str, Any]) -> str:
        """Sign and publish; returns the command id (raises PublishError when not delivered)."""
        cid, payload = sign(self.key, device_id, name, args)
        with self._lock:  # before the publish: the ack may come back before publish() returns
            if len(self.sent) >= MAX_ACKS:
                self.sent.pop(next(iter(self.sent)))
            self.sent[cid] = device_id
        info = self.client.publish(command_topic(device_id, name), payload, qos=1)
        try:
            info.wait_for_publish(timeout=5.0)
        except (RuntimeError, ValueError) as err:
            raise PublishError(f"command {name} to {device_id} not published: {err}") from err
        if not info.is_published():
            raise PublishError(f"command {name} to {device_id}: no PUBACK in 5 s")
        return cid

    def ack(self, command_id: str) -> Ack | None:
        with self._lock:
            return self.acks.get(command_id)

    def wait_ack(self, command_id: str, timeout: float) -> Ack | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if (a := self.ack(command_id)) is not None:
                return a
            time.sleep(0.02)
        return None
