"""``carpulse edge doctor``: interfaces, permissions and certificates on real files and devices."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carpulse.local_files import with_device_certs
from carpulse.pki import LocalPKI
from carpulse.stack import free_port
from core.config import CarpulseSettings, StackSettings
from core.signing import generate_keypair
from edge.doctor import (
    check_can_interface,
    check_certificate,
    check_kernels,
    check_private_key_file,
    check_serial_device,
    run_doctor,
)

ROOT = Path(__file__).resolve().parents[3]
DOCTOR_ARGS = ("--device", "car-doc-1", "--can", "lo")


def test_can_interface_checks_on_the_real_sysfs() -> None:
    lo = check_can_interface("lo")
    assert lo.status == "fail" and "not a CAN interface" in lo.detail
    missing = check_can_interface("nocan7")
    assert missing.status == "fail" and "missing" in missing.detail


def test_can_interface_up_and_down(tmp_path: Path) -> None:
    # A sysfs-shaped folder: the kernel's file format for a CAN link, up then down.
    d = tmp_path / "can0"
    d.mkdir()
    (d / "type").write_text("280\n")
    (d / "operstate").write_text("up\n")
    (d / "flags").write_text("0x41\n")
    assert check_can_interface("can0", tmp_path).status == "ok"
    (d / "flags").write_text("0x40\n")
    down = check_can_interface("can0", tmp_path)
    assert down.status == "fail" and "ip link set can0 up" in down.detail


def test_serial_device_checks(tmp_path: Path) -> None:
    master, slave = os.openpty()  # a real tty character device, like /dev/ttyUSB0
    try:
        assert check_serial_device(os.ttyname(slave)).status == "ok"
    finally:
        os.close(master)
        os.close(slave)
    plain = tmp_path / "ttyUSB0"
    plain.write_text("")
    assert "not a character device" in check_serial_device(plain).detail
    assert check_serial_device(tmp_path / "ttyUSB9").status == "fail"


def test_key_permissions(tmp_path: Path) -> None:
    key = tmp_path / "dev.key"
    key.write_text("secret")
    for mode, status in ((0o600, "ok"), (0o640, "warn"), (0o644, "fail")):
        os.chmod(key, mode)
        assert check_private_key_file(key, "k").status == status, oct(mode)
    assert check_private_key_file(tmp_path / "nope.key", "k").status == "fail"


def test_certificate_checks(tmp_path: Path) -> None:
    pki = LocalPKI(tmp_path / "pki")
    cert, key = pki.device("car-doc-1")
    checks = {c.name: c for c in check_certificate(cert, key, pki.device_trust, "car-doc-1")}
    assert {c.status for c in checks.values()} == {"ok"}, checks
    assert set(checks) == {
        "certificate dates",
        "certificate CN",
        "certificate issuer",
        "certificate key",
    }
    wrong_cn = {c.name: c for c in check_certificate(cert, key, pki.device_trust, "car-doc-2")}
    assert wrong_cn["certificate CN"].status == "fail"
    rogue = LocalPKI(tmp_path / "rogue")
    rogue.init()
    issuer = {c.name: c for c in check_certificate(cert, key, rogue.ca_cert, "car-doc-1")}
    assert issuer["certificate issuer"].status == "fail"
    _, other_key = pki.device("car-doc-2")
    mismatch = {
        c.name: c for c in check_certificate(cert, other_key, pki.device_trust, "car-doc-1")
    }
    assert mismatch["certificate key"].status == "fail"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3000)
    dates = {c.name: c for c in check_certificate(cert, key, pki.device_trust, "car-doc-1", later)}
    assert (
        dates["certificate dates"].status == "fail"
        and "expired" in dates["certificate dates"].detail
    )
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=820)
    near = {c.name: c for c in check_certificate(cert, key, pki.device_trust, "car-doc-1", soon)}
    assert near["certificate dates"].status == "warn"


def test_run_doctor_reports_every_check_and_a_closed_broker(tmp_path: Path) -> None:
    s = CarpulseSettings(stack=StackSettings(data_dir=tmp_path))
    s.edge.broker_port = free_port()
    s.edge.state_dir = tmp_path / "state"  # not the tree's .carpulse (make setup builds there)
    pki = LocalPKI(tmp_path / "pki")
    pki.device("car-doc-1")
    _, pub = generate_keypair(tmp_path / "pki")
    checks = run_doctor(with_device_certs(s, "car-doc-1"), "car-doc-1", can=["lo"], command_key=pub)
    by_name = {c.name: c for c in checks}
    assert by_name["CAN interface lo"].status == "fail"
    assert by_name["device key permissions"].status == "ok"
    assert by_name["command key"].status == "ok"
    kernels = by_name["kernels"]  # no build in <state_dir>/kernels: works, but with numba
    assert kernels.status == "warn" and "carpulse edge build-kernels" in kernels.detail
    s.edge.aot = False
    assert check_kernels(s).status == "skip"
    assert (
        by_name["broker"].status == "fail" and str(s.edge.broker_port) in by_name["broker"].detail
    )
    # No PKI at all: one clear failure instead of a traceback.
    bare = CarpulseSettings(stack=StackSettings(data_dir=tmp_path / "none"))
    empty = run_doctor(with_device_certs(bare, "x-1"), "x-1")
    assert [c.status for c in empty] == ["fail"] and "carpulse stack up" in empty[0].detail


def test_cli_prints_one_line_per_check_and_fails(tmp_path: Path) -> None:
    LocalPKI(tmp_path / "pki").device("car-doc-1")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[stack]\ndata_dir = "{tmp_path}"\n[edge]\nbroker_port = {free_port()}\n')
    out = subprocess.run(
        [sys.executable, "-m", "carpulse", "--config", str(cfg), "edge", "doctor", *DOCTOR_ARGS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    lines = out.stdout.splitlines()
    assert out.returncode == 1, out.stderr
    assert lines[0].startswith("fail CAN interface lo: not a CAN interface")
    assert any(line.startswith("ok   certificate CN: car-doc-1") for line in lines)
    assert lines[-1].startswith("fail broker: cannot reach the MQTT broker")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_is_reported(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_text("x")
    os.chmod(key, 0)
    assert check_private_key_file(key, "k").status == "fail"
