"""MQTT identity and ACL attacks against the real Mosquitto of the local stack (issue #15, item 1).

Each test plays one attack with a real device certificate or service account and asserts both
that the broker refuses it and that the legitimate traffic around it still flows.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from carpulse.pki import LocalPKI, _name
from carpulse.stack import Stack, _mqtt_connect_packet
from core.errors import ConfigError
from tests.security.mqtt_stack import DENIED, Peer, _device, _service, _wait, mqtt_stack, peers

__all__ = ["mqtt_stack", "peers"]  # fixtures

pytestmark = [pytest.mark.integration, pytest.mark.security]


def _handshake(stack: Stack, cert: Path, key: Path, client_id: str) -> str:
    """TLS + MQTT CONNECT on the device listener: "accepted" or how it was refused."""
    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    ctx.load_cert_chain(str(cert), str(key))
    try:
        with (
            socket.create_connection((stack.s.host, stack.s.mqtt_device_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(_mqtt_connect_packet(client_id, "x", "x"))
            head = tls.recv(4)
    except (OSError, ssl.SSLError) as err:  # TLS 1.3: the refusal arrives after the handshake
        return f"refused: {err}"
    if len(head) == 4 and head[0] == 0x20 and head[3] == 0:
        return "accepted"
    return f"refused: {head!r}"


def test_pki_refuses_a_device_certificate_for_a_service_name(
    mqtt_stack: Stack, tmp_path: Path
) -> None:
    for name in ("carpulse-console", "carpulse-bridge", "carpulse-admin", "Carpulse-x", "admin"):
        with pytest.raises(ConfigError, match="reserved"):
            mqtt_stack.provision_device(name)
        assert not mqtt_stack.pki.device_cert(name).exists()
    out = subprocess.run(
        [sys.executable, "-m", "carpulse", "pki", "device", "carpulse-console"],
        env={**os.environ, "CARPULSE_CONFIG": str(mqtt_stack.config_file)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "reserved" in out.stderr + out.stdout
    # A legitimate device is still issued, by the device CA (not the service CA).
    cert, _key = mqtt_stack.provision_device("sec-id-legit")
    issuer = x509.load_pem_x509_certificate(cert.read_bytes()).issuer
    assert issuer.rfc4514_string().startswith("CN=carpulse device CA,")


def test_service_ca_certificate_with_a_service_cn_is_refused_on_the_device_listener(
    mqtt_stack: Stack, tmp_path: Path, peers: list[Peer]
) -> None:
    """Identities are told apart by CA: the service CA signing a 'carpulse-console' client
    certificate (a mistake or a stolen service CA key) still gets no device session."""
    pki = mqtt_stack.pki
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("carpulse-console"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "svc.pem", tmp_path / "svc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert _handshake(mqtt_stack, cert_path, key_path, "carpulse-console").startswith("refused")
    # A device certificate is refused on the service listener (no password there).
    dev_cert, dev_key = mqtt_stack.provision_device("sec-id-svc")
    d = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sec-id-svc")
    d.tls_set(ca_certs=str(pki.ca_cert), certfile=str(dev_cert), keyfile=str(dev_key))
    d.username_pw_set("sec-id-svc", "")
    peer = Peer(d, mqtt_stack.s.host, mqtt_stack.s.mqtt_service_port)
    peers.append(peer)
    assert peer.connack is not None and peer.connack != "Success"
    # ... and the real console account still logs in there.
    console = _service(mqtt_stack, "carpulse-console")
    peers.append(console)
    assert console.connack == "Success"


def test_device_cannot_subscribe_outside_its_subtree_nor_join_the_bridge_share(
    mqtt_stack: Stack, peers: list[Peer]
) -> None:
    group = f"sec-bridge-{secrets.token_hex(3)}"  # the bridge's group in this test
    bridge = _service(mqtt_stack, "carpulse-bridge")
    peers.append(bridge)
    assert bridge.subscribe(f"$share/{group}/carpulse/v1/+/telemetry") == 1
    thief = _device(mqtt_stack, "sec-id-thief")
    victim = _device(mqtt_stack, "sec-id-victim")
    peers += [thief, victim]
    for flt in (
        f"$share/{group}/carpulse/v1/+/telemetry",
        "$share/other/carpulse/v1/sec-id-thief/cmd/#",
        "carpulse/v1/#",
        "carpulse/v1/+/telemetry",
        "carpulse/v1/sec-id-victim/cmd/#",
        "#",
        "$SYS/#",
        "$CONTROL/dynamic-security/v1/response",
    ):
        assert thief.subscribe(flt) == DENIED, flt
    assert thief.subscribe("carpulse/v1/sec-id-thief/cmd/+") == 1  # its own commands: fine
    sent = [f"t{i}".encode() for i in range(20)]
    for payload in sent:
        victim.publish("carpulse/v1/sec-id-victim/telemetry", payload)
    assert _wait(lambda: len(bridge.got) >= len(sent))
    time.sleep(0.3)
    assert [p for t, p, _r in bridge.got if t.endswith("sec-id-victim/telemetry")] == sent
    assert thief.got == []


def test_device_publishes_only_its_own_channels_and_no_commands(
    mqtt_stack: Stack, peers: list[Peer]
) -> None:
    bridge = _service(mqtt_stack, "carpulse-bridge")
    peers.append(bridge)
    for ch in ("telemetry", "events", "status", "cmd-ack"):
        assert bridge.subscribe(f"carpulse/v1/+/{ch}") == 1
    attacker = _device(mqtt_stack, "sec-id-forger")
    victim = _device(mqtt_stack, "sec-id-target")
    peers += [attacker, victim]
    assert victim.subscribe("carpulse/v1/sec-id-target/cmd/+") == 1
    for ch in ("telemetry", "events", "status", "cmd-ack"):
        attacker.publish(f"carpulse/v1/sec-id-target/{ch}", b"forged")
    attacker.publish("carpulse/v1/sec-id-target/cmd/unlock", b"forged", retain=True)
    attacker.publish("carpulse/v1/sec-id-forger/cmd/unlock", b"self", retain=True)
    attacker.publish("carpulse/v1/sec-id-forger/events", b"mine")
    assert _wait(lambda: any(p == b"mine" for _t, p, _r in bridge.got))
    time.sleep(0.5)
    assert all(p != b"forged" for _t, p, _r in bridge.got)
    assert victim.got == []
    # Nothing was retained on the victim's command topic: a fresh subscription gets nothing.
    late = _device(mqtt_stack, "sec-id-target", client_id="sec-id-target")
    peers.append(late)
    assert late.subscribe("carpulse/v1/sec-id-target/cmd/+") == 1
    time.sleep(0.5)
    assert late.got == []


def test_device_cannot_take_over_another_client_id(mqtt_stack: Stack, peers: list[Peer]) -> None:
    bridge = _service(mqtt_stack, "carpulse-bridge", client_id="carpulse-bridge-sec")
    victim = _device(mqtt_stack, "sec-id-car")
    peers += [bridge, victim]
    assert bridge.subscribe("carpulse/v1/+/events") == 1
    for stolen in ("sec-id-car", "carpulse-bridge-sec", "carpulse-bridge-1"):
        attacker = _device(mqtt_stack, "sec-id-intruder", client_id=stolen)
        peers.append(attacker)
        assert attacker.connack == "Success"  # the broker renames it to its certificate's CN
    time.sleep(0.5)
    assert victim.disconnects == [] and bridge.disconnects == []
    victim.publish("carpulse/v1/sec-id-car/events", b"still here")
    assert _wait(lambda: (b"still here") in [p for _t, p, _r in bridge.got])


def test_console_sends_commands_and_reads_acks_only(mqtt_stack: Stack, peers: list[Peer]) -> None:
    console = _service(mqtt_stack, "carpulse-console")
    bridge = _service(mqtt_stack, "carpulse-bridge")
    car = _device(mqtt_stack, "sec-id-console-car")
    peers += [console, bridge, car]
    for flt in (
        "carpulse/v1/#",
        "carpulse/v1/+/telemetry",
        "carpulse/v1/+/events",
        "carpulse/v1/+/status",
        "$share/carpulse-bridge/carpulse/v1/+/telemetry",
    ):
        assert console.subscribe(flt) == DENIED, flt
    assert console.subscribe("carpulse/v1/+/cmd-ack") == 1
    assert bridge.subscribe("carpulse/v1/+/events") == 1
    assert car.subscribe("carpulse/v1/sec-id-console-car/cmd/+") == 1
    console.publish("carpulse/v1/sec-id-console-car/events", b"forged")
    console.publish("carpulse/v1/sec-id-console-car/cmd/lock", b"cmd")
    assert _wait(lambda: car.got != [])
    assert [(t, p) for t, p, _r in car.got] == [("carpulse/v1/sec-id-console-car/cmd/lock", b"cmd")]
    car.publish("carpulse/v1/sec-id-console-car/cmd-ack", b"ack")
    assert _wait(lambda: console.got != [])
    assert [(t, p) for t, p, _r in console.got] == [
        ("carpulse/v1/sec-id-console-car/cmd-ack", b"ack")
    ]
    time.sleep(0.3)
    assert all(p != b"forged" for _t, p, _r in bridge.got)


def test_revoked_device_is_refused_by_the_broker(mqtt_stack: Stack, peers: list[Peer]) -> None:
    bridge = _service(mqtt_stack, "carpulse-bridge")
    peers.append(bridge)
    assert bridge.subscribe("carpulse/v1/+/events") == 1
    doomed, other = _device(mqtt_stack, "sec-id-stolen"), _device(mqtt_stack, "sec-id-kept")
    peers += [doomed, other]
    assert doomed.connack == "Success"
    cert = mqtt_stack.pki.device_cert("sec-id-stolen")
    key = mqtt_stack.pki.device_key("sec-id-stolen")
    probe_cert, probe_key = mqtt_stack.provision_device("sec-id-probe")
    assert _handshake(mqtt_stack, probe_cert, probe_key, "sec-id-probe") == "accepted"
    assert doomed.disconnects == []
    out = subprocess.run(
        [sys.executable, "-m", "carpulse", "pki", "revoke", "sec-id-stolen"],
        env={**os.environ, "CARPULSE_CONFIG": str(mqtt_stack.config_file)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    assert serial in LocalPKI(mqtt_stack.pki.root).revoked_serials()
    assert _wait(lambda: doomed.disconnects != [])  # its live session ends at once
    # A new handshake with the revoked certificate fails on the CRL.
    assert _handshake(mqtt_stack, cert, key, "sec-id-stolen").startswith("refused")
    with pytest.raises(ConfigError, match="revoked"):
        mqtt_stack.pki.device("sec-id-stolen")
    # Other devices are untouched, before and after the reload.
    assert other.disconnects == []
    other.publish("carpulse/v1/sec-id-kept/events", b"after revoke")
    fresh = _device(mqtt_stack, "sec-id-fresh")
    peers.append(fresh)
    fresh.publish("carpulse/v1/sec-id-fresh/events", b"new device")
    assert _wait(lambda: {b"after revoke", b"new device"} <= {p for _t, p, _r in bridge.got})


def test_retained_command_is_never_acted_upon_by_the_device(
    mqtt_stack: Stack, peers: list[Peer]
) -> None:
    """The broker cannot forbid the retain flag per topic, so the edge drops retained deliveries:
    a retained command would otherwise be replayed to the car on every (re)subscription."""
    from edge.publisher import DeviceMqtt, MqttPublisher

    dev = "sec-id-retained"
    cert, key = mqtt_stack.provision_device(dev)
    console = _service(mqtt_stack, "carpulse-console")
    peers.append(console)
    topic = f"carpulse/v1/{dev}/cmd/unlock"
    console.publish(topic, b"retained-unlock", retain=True)
    conf = DeviceMqtt(
        dev, mqtt_stack.s.host, mqtt_stack.s.mqtt_device_port, mqtt_stack.pki.ca_cert, cert, key
    )
    pub = MqttPublisher(conf, boot_id="t")
    got: list[tuple[str, bytes]] = []
    pub.on_message = lambda t, p: got.append((t, p))
    pub.subscriptions.append(f"carpulse/v1/{dev}/cmd/+")
    pub.connect(timeout=10, announce=False)
    try:
        assert _wait(lambda: pub.retained_dropped == 1)
        console.publish(topic, b"live-unlock")  # a live (not retained) command is delivered
        assert _wait(lambda: got != [])
        assert got == [(topic, b"live-unlock")]
    finally:
        console.publish(topic, b"", retain=True)  # clear the retained message
        pub.close()


def test_a_device_issued_while_the_broker_is_down_is_known_when_it_starts(
    tmp_path: Path, peers: list[Peer]
) -> None:
    """An agent may start (and get its certificate) during a broker outage: it must still get
    its ACL role, from the plugin's file, when the broker comes back."""
    from carpulse.stack import free_port
    from core.config import StackSettings

    stack = Stack(
        StackSettings(
            data_dir=tmp_path,
            mqtt_device_port=free_port(),
            mqtt_service_port=free_port(),
            kafka_port=free_port(),
            influx_port=free_port(),
            influx_rpc_port=free_port(),
        )
    )
    stack.prepare()
    stack.provision_device("sec-id-offline")  # broker not running
    argv, log, _port = stack._commands()["mosquitto"]
    stack._spawn("mosquitto", argv(), log)
    try:
        stack._wait_healthy("mosquitto", log, time.monotonic())
        bridge = _service(stack, "carpulse-bridge")
        car = _device(stack, "sec-id-offline")
        peers += [bridge, car]
        assert bridge.subscribe("carpulse/v1/+/events") == 1
        assert car.subscribe("carpulse/v1/sec-id-offline/cmd/+") == 1
        car.publish("carpulse/v1/sec-id-offline/events", b"back online")
        assert _wait(lambda: [p for _t, p, _r in bridge.got] == [b"back online"])
    finally:
        for p in peers:
            p.close()
        peers.clear()
        stack.down()
