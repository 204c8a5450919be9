"""Mosquitto as the stack configures it: per-device certificates, ACLs, no anonymous access."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from carpulse.local_files import local_device_mqtt
from carpulse.pki import LocalPKI
from carpulse.stack import Stack
from core.errors import PublishError
from edge.publisher import DeviceMqtt, MqttPublisher

pytestmark = [pytest.mark.integration, pytest.mark.security]


def _console(stack: Stack) -> tuple[mqtt.Client, list[tuple[str, bytes]]]:
    """An observer of every device channel: the bridge account (the console only sees cmd-ack)."""
    got: list[tuple[str, bytes]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer-test")
    client.tls_set(ca_certs=str(stack.pki.ca_cert))
    client.username_pw_set("carpulse-bridge", stack.secret_file("carpulse-bridge").read_text())
    client.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    ready = threading.Event()
    client.on_subscribe = lambda *a: ready.set()
    client.connect(stack.s.host, stack.s.mqtt_service_port)
    client.loop_start()
    client.subscribe("carpulse/v1/+/events", qos=1)
    assert ready.wait(10)
    return client, got


def test_device_cannot_publish_under_another_device(local_stack: Stack) -> None:
    s = local_stack.settings  # type: ignore[attr-defined]
    console, got = _console(local_stack)
    try:
        pub = MqttPublisher(local_device_mqtt(s, "sec-car-a"), boot_id="t")
        pub.connect(announce=False)
        pub.publish("carpulse/v1/sec-car-a/events", b"mine")
        pub.publish("carpulse/v1/sec-car-b/events", b"forged")
        pub.flush()
        pub.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and ("carpulse/v1/sec-car-a/events", b"mine") not in got:
            time.sleep(0.05)
        time.sleep(0.5)
        assert ("carpulse/v1/sec-car-a/events", b"mine") in got
        assert all(topic != "carpulse/v1/sec-car-b/events" for topic, _ in got)
    finally:
        console.loop_stop()
        console.disconnect()


def _connect_rc(client: mqtt.Client, host: str, port: int) -> str:
    result: dict[str, str] = {}
    done = threading.Event()

    def on_connect(c, u, f, reason, p):  # type: ignore[no-untyped-def]
        result["rc"] = str(reason)
        done.set()

    def on_disconnect(c, u, f, reason, p):  # type: ignore[no-untyped-def]
        result.setdefault("rc", f"disconnected: {reason}")
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(host, port)
    except (OSError, ssl.SSLError) as err:
        return f"refused at connect: {err}"
    client.loop_start()
    done.wait(5)
    client.loop_stop()
    client.disconnect()
    return result.get("rc", "no answer")


def test_anonymous_and_wrong_password_are_refused(local_stack: Stack) -> None:
    anon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon")
    anon.tls_set(ca_certs=str(local_stack.pki.ca_cert))
    assert _connect_rc(anon, local_stack.s.host, local_stack.s.mqtt_service_port) != "Success"
    bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bad")
    bad.tls_set(ca_certs=str(local_stack.pki.ca_cert))
    bad.username_pw_set("carpulse-bridge", "wrong")
    assert _connect_rc(bad, local_stack.s.host, local_stack.s.mqtt_service_port) != "Success"
    nocert = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nocert")
    nocert.tls_set(ca_certs=str(local_stack.pki.ca_cert))
    assert _connect_rc(nocert, local_stack.s.host, local_stack.s.mqtt_device_port) != "Success"


def test_certificate_from_another_ca_is_refused_with_clear_error(
    local_stack: Stack, tmp_path: Path
) -> None:
    rogue = LocalPKI(tmp_path / "rogue")
    cert, key = rogue.device("sec-car-a")  # same CN, wrong CA
    conf = DeviceMqtt(
        "sec-car-a",
        local_stack.s.host,
        local_stack.s.mqtt_device_port,
        local_stack.pki.ca_cert,
        cert,
        key,
    )
    with pytest.raises(
        PublishError, match=rf"{local_stack.s.host}:{local_stack.s.mqtt_device_port}"
    ):
        MqttPublisher(conf, boot_id="t").connect(timeout=5, announce=False)


def test_unreachable_broker_is_named(local_stack: Stack) -> None:
    from carpulse.stack import free_port

    s = local_stack.settings  # type: ignore[attr-defined]
    conf = local_device_mqtt(s, "sec-car-a")
    port = free_port()
    conf = DeviceMqtt(conf.device_id, conf.host, port, conf.ca_file, conf.cert_file, conf.key_file)
    with pytest.raises(PublishError, match=rf"cannot reach the MQTT broker at 127\.0\.0\.1:{port}"):
        MqttPublisher(conf, boot_id="t").connect(timeout=3, announce=False)
