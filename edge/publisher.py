"""MQTT publishing for the edge agent: TLS with the device certificate, QoS 1, status and last will.

Two ways to run a :class:`MqttPublisher`:

- ``connect()`` then ``publish()``/``flush()``: blocking, for tools and replays;
- ``start()``: a network thread of our own that connects and reconnects with exponential backoff
  and jitter (paho's built-in retry has no jitter, so a fleet that lost the same cell tower would
  reconnect in lock-step), announces ``online`` (retained) after every CONNACK, and reports each
  PUBACK through ``on_ack(mid)``; the agent's durable queue deletes a row only then. The session is
  persistent (``clean_session=False``): paho resends in-flight QoS 1 messages after a reconnect.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from core.backoff import Backoff
from core.config import CarpulseSettings
from core.errors import ConfigError, PublishError
from core.topics import check_device_id, device_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceMqtt:
    """Where and how one device connects."""

    device_id: str
    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    keepalive_s: int = 30


def device_mqtt_settings(s: CarpulseSettings, device_id: str) -> DeviceMqtt:
    """The device's connection from ``[edge]``: broker, CA, certificate and key files.

    The agent never looks for a development PKI: the ``carpulse`` commands fill the three files
    from the local stack (``carpulse.local_files``) before they start edge code.
    """
    e = s.edge
    check_device_id(device_id)
    if not (e.cert_file and e.key_file and e.ca_file):
        raise ConfigError(
            f"no certificates for {device_id}: set [edge] ca_file, cert_file and key_file, "
            "or run `carpulse stack up` to create a local PKI that the carpulse commands use"
        )
    return DeviceMqtt(device_id, e.broker_host, e.broker_port, e.ca_file, e.cert_file, e.key_file)


def _status(state: str, boot_id: str) -> bytes:
    return json.dumps(
        {"state": state, "boot_id": boot_id, "ts_us": int(time.time() * 1e6)}
    ).encode()


class MqttPublisher:
    """A connected device: ``publish`` keeps at most ``window`` unacknowledged QoS 1 messages."""

    def __init__(self, conf: DeviceMqtt, boot_id: str, window: int = 64) -> None:
        self.conf = conf
        self.boot_id = boot_id
        self.window = window
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()
        self._connected = threading.Event()
        self._refused: str | None = None
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=conf.device_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(window)
        self.client.max_queued_messages_set(0)
        try:
            self.client.tls_set(
                ca_certs=str(conf.ca_file), certfile=str(conf.cert_file), keyfile=str(conf.key_file)
            )
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"device {conf.device_id}: cannot load TLS files: {err}") from err
        self.client.will_set(
            device_topic(conf.device_id, "status"), _status("offline", boot_id), qos=1, retain=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.on_ack: Callable[[int], None] | None = None
        # Topics (QoS 1) subscribed after every CONNACK, and where their messages go.
        self.subscriptions: list[str] = []
        self.on_message: Callable[[str, bytes], None] | None = None
        self.client.on_message = self._on_message
        self.backoff = Backoff(0.5, 60.0, jitter="equal")
        self.connects = 0  # successful CONNACKs
        self.retained_dropped = 0  # retained messages on our subscriptions, never acted upon
        self._announce = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_publish(self, client, userdata, mid, reason, props) -> None:  # type: ignore[no-untyped-def]
        if self.on_ack is not None:
            self.on_ack(mid)

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.retain:
            # A device subscribes to its commands only, and the cloud never retains one: a
            # retained command is stored on the broker and would be handed to the car again on
            # every (re)subscription, so it is dropped here whatever its signature says.
            self.retained_dropped += 1
            if self.retained_dropped <= 10:
                log.warning("dropped a retained message on %s", msg.topic)
            return
        if self.on_message is not None:
            self.on_message(msg.topic, bytes(msg.payload))

    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        if reason.is_failure:
            self._refused = str(reason)
            log.error(
                "broker %s:%s refused %s: %s",
                self.conf.host,
                self.conf.port,
                self.conf.device_id,
                reason,
            )
            return
        self.backoff.reset()
        self.connects += 1
        self._refused = None
        if self.subscriptions:
            client.subscribe([(t, 1) for t in self.subscriptions])
        if self._announce:
            client.publish(
                device_topic(self.conf.device_id, "status"),
                _status("online", self.boot_id),
                qos=1,
                retain=True,
            )
        if self._connected.is_set():
            return
        log.info("connected to %s:%s as %s", self.conf.host, self.conf.port, self.conf.device_id)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        if self._connected.is_set():
            log.warning("disconnected from %s:%s: %s", self.conf.host, self.conf.port, reason)
        self._connected.clear()

    def connect(self, timeout: float = 15.0, *, announce: bool = True) -> None:
        where = f"{self.conf.host}:{self.conf.port}"
        try:
            self.client.connect(self.conf.host, self.conf.port, keepalive=self.conf.keepalive_s)
        except ssl.SSLError as err:
            raise PublishError(
                f"TLS handshake with {where} failed for {self.conf.device_id}: {err}"
            ) from err
        except OSError as err:
            raise PublishError(f"cannot reach the MQTT broker at {where}: {err}") from err
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.1):
            if self._refused or time.monotonic() > deadline:
                self.client.loop_stop()
                why = self._refused or f"no CONNACK within {timeout:.0f}s"
                raise PublishError(f"broker at {where} refused device {self.conf.device_id}: {why}")
        if announce:
            self.publish(
                device_topic(self.conf.device_id, "status"),
                _status("online", self.boot_id),
                retain=True,
            )

    def start(self) -> None:
        """Connect in the background and stay connected (backoff with jitter); returns at once."""
        if self._thread is not None:
            return
        self._announce = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mqtt-net", daemon=True)
        # paho writes to the socket from publish() itself unless it believes a network thread
        # runs (loop_start sets this); two threads writing one TLS socket corrupt the stream,
        # the connection drops and in-flight messages are resent as duplicates.
        self.client._thread = self._thread
        self._thread.start()

    def _run(self) -> None:
        where = f"{self.conf.host}:{self.conf.port}"
        first, sock_ok, complained = True, False, False
        while not self._stop.is_set():
            if not sock_ok:
                try:
                    if first:
                        self.client.connect(self.conf.host, self.conf.port, self.conf.keepalive_s)
                    else:
                        self.client.reconnect()
                    first, sock_ok = False, True
                except OSError as err:  # ssl.SSLError is an OSError
                    if not complained:
                        log.warning("cannot reach the MQTT broker at %s: %s (retrying)", where, err)
                        complained = True
                    self._stop.wait(self.backoff.next())
                    continue
                if complained:
                    log.info("MQTT broker at %s reachable again", where)
                    complained = False
            rc = self.client.loop(timeout=0.2)
            if rc != mqtt.MQTT_ERR_SUCCESS and not self._stop.is_set():
                sock_ok = False
                self._connected.clear()
                self._stop.wait(self.backoff.next())

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue a QoS 1 message; returns its mid (its PUBACK comes through ``on_ack``)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return int(info.mid)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 30.0
    ) -> None:
        while len(self._pending) >= self.window:
            self._wait_oldest(timeout)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self._pending.append(info)

    def _wait_oldest(self, timeout: float) -> None:
        info = self._pending[0]
        deadline = time.monotonic() + timeout
        while not info.is_published():
            if time.monotonic() > deadline:
                raise PublishError(
                    f"no PUBACK from {self.conf.host}:{self.conf.port} within {timeout:.0f}s"
                )
            time.sleep(0.001)
        self._pending.popleft()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every published message has its PUBACK."""
        while self._pending:
            self._wait_oldest(timeout)

    def close(self) -> None:
        try:
            if self._connected.is_set():
                self.publish(
                    device_topic(self.conf.device_id, "status"),
                    _status("offline", self.boot_id),
                    retain=True,
                )
                self.flush(5)
        finally:
            self._connected.clear()
            self.client.disconnect()
            if self._thread is not None:
                self._stop.set()
                self._thread.join(10)
                self._thread = None
                self.client._thread = None
            else:
                self.client.loop_stop()
            # paho keeps the socket pair that wakes its network loop until the client is garbage
            # collected (a cycle through our callbacks): close it now, or two sockets leak.
            self.client._reset_sockets(sockpair_only=True)


def probe(conf: DeviceMqtt, device_id: str) -> str | None:
    """Connect once and disconnect; ``None`` if fine, else what is wrong."""
    try:
        pub = MqttPublisher(conf, boot_id="doctor")
        pub.connect(timeout=5, announce=False)
        pub.client.disconnect()
        pub.client.loop_stop()
    except (PublishError, ConfigError) as err:
        return str(err)
    return None
