"""``carpulse devices enroll``: certificate, broker identity and CRM registry in one step, against
the throwaway stack's real Mosquitto; the enrolled car publishes its own topic and cannot read
another car's."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from carpulse.stack import Stack
from crm.fields import vin_check_digit

pytestmark = [pytest.mark.integration, pytest.mark.security]


def _vin(seed: str) -> str:
    body = "1HGCM82633A" + seed.upper()[-6:]
    body = "".join(c if c in "ABCDEFGHJKLMNPRSTUVWXYZ0123456789" else "7" for c in body)
    return body[:8] + vin_check_digit(body) + body[9:]


def _cli(stack: Stack, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``carpulse devices enroll ARGS --db DB``, on a CRM migrated first (as an operator does)."""
    migrated = subprocess.run(
        [sys.executable, "-m", "carpulse", "--config", str(stack.config_file),
         "crm", "migrate", "--db", db],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    return subprocess.run(
        [sys.executable, "-m", "carpulse", "--config", str(stack.config_file),
         "devices", "enroll", *args, "--db", db],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _device_client(stack: Stack, device: str, pi: Path) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    c.tls_set(
        ca_certs=str(pi / "ca.pem"),
        certfile=str(pi / "device.pem"),
        keyfile=str(pi / "device.key"),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect(stack.s.host, stack.s.mqtt_device_port, keepalive=10)
    c.loop_start()
    assert connected.wait(15), "the enrolled device could not connect"
    return c


def test_enroll_issues_registers_and_confines_the_device(
    local_stack: Stack, tmp_path: Path
) -> None:
    device = f"pi-{uuid.uuid4().hex[:8]}"
    other = f"pi-{uuid.uuid4().hex[:8]}"
    vin, vin2 = _vin("S00001"), _vin("S00002")
    assert vin != vin2
    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    pi = tmp_path / "pi"
    first = _cli(local_stack, db, device, "--vin", vin, "--out", str(pi))
    assert first.returncode == 0, first.stderr
    assert f"VIN {vin} (created vehicle)" in first.stdout
    for name in ("ca.pem", "device.pem", "device.key"):
        assert f"{pi / name} -> /etc/carpulse/{name}" in first.stdout
    assert (pi / "device.key").stat().st_mode & 0o777 == 0o600
    # idempotent: the same pair again changes nothing, and keeps the same certificate
    cert = (pi / "device.pem").read_bytes()
    again = _cli(local_stack, db, device, "--vin", vin, "--out", str(pi))
    assert again.returncode == 0 and "(unchanged)" in again.stdout, again.stderr
    assert (pi / "device.pem").read_bytes() == cert
    # the CRM's registry has the pair (what the stream reads)
    export = subprocess.run(
        [sys.executable, "-m", "carpulse", "--config", str(local_stack.config_file),
         "registry", "export", "--plain", "--db", db],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert json.loads(export.stdout) == {device: vin}
    # conflicts are refused before anything is issued
    taken = _cli(local_stack, db, other, "--vin", vin)
    assert taken.returncode == 2 and f"VIN {vin} already has device {device}" in taken.stderr
    assert not local_stack.pki.device_cert(other).exists()
    moved = _cli(local_stack, db, device, "--vin", vin2)
    assert moved.returncode == 2 and "already registered to VIN" in moved.stderr
    assert _cli(local_stack, db, other, "--vin", vin2).returncode == 0

    # the broker: the device publishes its own topic and cannot read another car's
    got: list[tuple[str, bytes]] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"w-{uuid.uuid4().hex[:6]}")
    watcher.tls_set(ca_certs=str(local_stack.pki.ca_cert))
    watcher.username_pw_set(
        "carpulse-bridge", local_stack.secret_file("carpulse-bridge").read_text().strip()
    )
    watcher.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *a: subscribed.set()
    watcher.connect(local_stack.s.host, local_stack.s.mqtt_service_port)
    watcher.loop_start()
    watcher.subscribe("carpulse/v1/+/events", qos=1)
    assert subscribed.wait(10)
    car = _device_client(local_stack, device, pi)
    try:
        codes: list[list[int]] = []
        acked = threading.Event()

        def on_subscribe(c, u, mid, reason_codes, props) -> None:  # type: ignore[no-untyped-def]
            codes.append([rc.value for rc in reason_codes])
            acked.set()

        car.on_subscribe = on_subscribe
        car.subscribe(f"carpulse/v1/{other}/events", qos=1)
        assert acked.wait(10)
        assert codes[0][0] >= 0x80, "the device may read another car's events"
        car.publish(f"carpulse/v1/{device}/events", b"mine", qos=1).wait_for_publish(10)
        car.publish(f"carpulse/v1/{other}/events", b"forged", qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (f"carpulse/v1/{device}/events", b"mine") not in got:
            time.sleep(0.05)
        time.sleep(0.5)
        assert (f"carpulse/v1/{device}/events", b"mine") in got
        assert (f"carpulse/v1/{other}/events", b"forged") not in got
    finally:
        car.loop_stop()
        car.disconnect()
        watcher.loop_stop()
        watcher.disconnect()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["carpulse-bridge", "--vin", "1HGCM82633A004352"], "reserved for services"),
        (["bad id!", "--vin", "1HGCM82633A004352"], "cannot issue a device certificate"),
        (["pi-x1", "--vin", "1HGCM82633A00435"], "a VIN has 17 characters"),
        (["pi-x1", "--vin", "1HGCM82693A004352"], "check digit"),
        (["pi-x1"], "--vin is required"),
        (["pi-x1", "--gate", "--vin", "1HGCM82633A004352"], "a gate camera has no VIN"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(
    local_stack: Stack, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = _cli(local_stack, f"sqlite:///{tmp_path / 'crm.sqlite'}", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not local_stack.pki.device_cert("pi-x1").exists()


def test_a_gate_camera_is_enrolled_without_a_vin_and_exported_with_its_role(
    local_stack: Stack, tmp_path: Path
) -> None:
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    proc = _cli(local_stack, db, gate, "--gate", "--out", str(tmp_path / "pi"))
    assert proc.returncode == 0, proc.stderr
    assert f"enrolled {gate}: gate camera (added)" in proc.stdout
    again = _cli(local_stack, db, gate, "--gate")
    assert again.returncode == 0 and "gate camera (unchanged)" in again.stdout, again.stderr
    export = subprocess.run(
        [sys.executable, "-m", "carpulse", "--config", str(local_stack.config_file),
         "registry", "export", "--plain", "--db", db],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert json.loads(export.stdout) == [{"device_id": gate, "role": "gate"}]
    # one device, one role
    as_car = _cli(local_stack, db, gate, "--vin", _vin("S00003"))
    assert as_car.returncode == 2 and "enrolled as a gate camera" in as_car.stderr
    car = f"pi-{uuid.uuid4().hex[:8]}"
    assert _cli(local_stack, db, car, "--vin", _vin("S00004")).returncode == 0
    as_gate = _cli(local_stack, db, car, "--gate")
    assert as_gate.returncode == 2 and "not a gate camera" in as_gate.stderr
    client = _device_client(local_stack, gate, tmp_path / "pi")  # the gate's identity works
    client.loop_stop()
    client.disconnect()


def test_an_unmigrated_crm_is_refused_before_anything_is_issued(
    local_stack: Stack, tmp_path: Path
) -> None:
    device = f"pi-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, "-m", "carpulse", "--config", str(local_stack.config_file),
         "devices", "enroll", device, "--vin", _vin("S00009"),
         "--db", f"sqlite:///{tmp_path / 'empty.sqlite'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "crm migrate" in proc.stderr, proc.stderr
    assert not local_stack.pki.device_cert(device).exists()
