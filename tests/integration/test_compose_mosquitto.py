"""deploy/docker/mosquitto.conf runs on the real Mosquitto: the compose file's broker config, with
its container paths mapped to a copy of the throwaway stack's PKI and dynamic-security file and
its ports to free ones; a device logs in by certificate, a service by password, and the device's
message reaches the service."""

from __future__ import annotations

import getpass
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from carpulse import broker_acl
from carpulse.stack import Stack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.security]

CONF = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "mosquitto.conf"


def test_the_compose_mosquitto_conf_serves_devices_and_services(
    local_stack: Stack, tmp_path: Path
) -> None:
    device = f"pi-{uuid.uuid4().hex[:8]}"
    cert, key = local_stack.provision_device(device)
    dynsec = local_stack.root / "mosquitto" / "dynamic-security.json"
    deadline = time.monotonic() + 10
    while device not in broker_acl.known_clients(dynsec):  # the plugin saves it on the change
        assert time.monotonic() < deadline, "the device never reached the plugin's file"
        time.sleep(0.1)
    conf_dir, data = tmp_path / "config", tmp_path / "data"
    conf_dir.mkdir()
    data.mkdir()
    pki = local_stack.pki
    # the broker's certificate as the README has it made for compose (`carpulse pki broker-cert`)
    server_cert, server_key = pki.broker_cert(["mosquitto", "127.0.0.1"])
    for src, name in [(pki.ca_cert, "ca.pem"), (server_cert, "server.pem"),
                      (server_key, "server.key"), (pki.device_ca_cert, "device-ca.pem"),
                      (pki.device_crl, "device-crl.pem")]:  # fmt: skip
        shutil.copyfile(src, conf_dir / name)
    shutil.copyfile(dynsec, conf_dir / "dynamic-security.json")
    dev_port, svc_port = free_port(), free_port()
    text = CONF.read_text()
    assert "/mosquitto/config/" in text and "listener 8883\n" in text and "listener 8884\n" in text
    text = (
        text.replace("/mosquitto/config/", f"{conf_dir}/")
        .replace("/mosquitto/data/", f"{data}/")
        .replace("/usr/lib/mosquitto_dynamic_security.so", broker_acl.plugin_path())
        .replace("listener 8883\n", f"listener {dev_port} 127.0.0.1\n")
        .replace("listener 8884\n", f"listener {svc_port} 127.0.0.1\n")
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text + f"user {getpass.getuser()}\n")
    log = tmp_path / "mosquitto.log"
    with open(log, "wb") as out:
        broker = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        got: list[bytes] = []
        subscribed = threading.Event()
        svc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"svc-{uuid.uuid4().hex[:6]}")
        svc.tls_set(ca_certs=str(pki.ca_cert))
        svc.username_pw_set(
            "carpulse-bridge", local_stack.secret_file("carpulse-bridge").read_text().strip()
        )
        svc.on_connect = lambda c, *a: c.subscribe(f"carpulse/v1/{device}/events", 1)
        svc.on_subscribe = lambda *a: subscribed.set()
        svc.on_message = lambda c, u, m: got.append(bytes(m.payload))
        deadline = time.monotonic() + 15
        while True:  # the broker needs a moment to listen
            try:
                svc.connect("127.0.0.1", svc_port, keepalive=10)
                break
            except OSError:
                if time.monotonic() > deadline or broker.poll() is not None:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.2)
        svc.loop_start()
        assert subscribed.wait(15), log.read_text()
        car = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
        car.tls_set(ca_certs=str(pki.ca_cert), certfile=str(cert), keyfile=str(key),
                    cert_reqs=ssl.CERT_REQUIRED)  # fmt: skip
        car.connect("127.0.0.1", dev_port, keepalive=10)
        car.loop_start()
        car.publish(f"carpulse/v1/{device}/events", b"hello", qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b"hello" not in got:
            time.sleep(0.05)
        assert got == [b"hello"], log.read_text()
        car.loop_stop()
        car.disconnect()
        svc.loop_stop()
        svc.disconnect()
    finally:
        broker.terminate()
        broker.wait(10)
