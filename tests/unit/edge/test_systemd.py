"""sd_notify against a real unix datagram socket, the watchdog's pacing, and the unit file."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import systemd

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "deploy" / "systemd" / "carpulse-edge.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    # A short path: AF_UNIX paths are limited to 108 bytes and pytest's tmp paths can be long.
    path = f"/tmp/cp-notify-{os.getpid()}-{id(tmp_path)}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)


def _drain(sock: socket.socket) -> list[bytes]:
    got = []
    sock.settimeout(0.2)
    while True:
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            return got


def test_notify_sends_datagrams(notify_socket, monkeypatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.ready("3 sources open")
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 sources open"
    assert systemd.notify("STATUS=draining backlog")
    assert sock.recv(4096) == b"STATUS=draining backlog"
    assert systemd.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_socket(monkeypatch) -> None:
    name = f"cp-notify-abstract-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_outside_systemd_or_broken_socket_is_a_quiet_no_op(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify("READY=1") is False  # systemd went away: the agent keeps working
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_watchdog_pings_at_half_the_interval_from_the_loop(notify_socket) -> None:
    sock, path = notify_socket
    now = [100.0]
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    wd = systemd.Watchdog(env, clock=lambda: now[0])
    assert wd.enabled and wd.interval_s == 10.0
    sent = []
    for _ in range(40):  # a loop iteration every 0.5 s for 20 s
        sent.append(wd.kick())
        now[0] += 0.5
    assert sum(sent) == 4  # at t = 0, 5, 10, 15
    assert _drain(sock) == [b"WATCHDOG=1"] * 4
    assert wd.status("ok") and not wd.status("again too soon")
    assert _drain(sock) == [b"STATUS=ok"]


def test_watchdog_is_off_for_another_pid_or_without_usec(notify_socket) -> None:
    _, path = notify_socket
    other = systemd.Watchdog({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert not other.enabled and not other.kick()
    assert not systemd.Watchdog({"NOTIFY_SOCKET": path}).kick()
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None


def test_notify_from_a_child_process_as_systemd_sees_it(notify_socket) -> None:
    sock, path = notify_socket
    code = "from edge import systemd; import sys; sys.exit(0 if systemd.ready() else 3)"
    env = {**os.environ, "NOTIFY_SOCKET": path}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
    assert sock.recv(100) == b"READY=1"


def _unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """``(section, key) -> values``; systemd allows repeated keys, which configparser does not."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def test_unit_file_key_settings() -> None:
    u = _unit_settings(UNIT.read_text())
    svc = {k: v for (sec, k), v in u.items() if sec == "Service"}
    assert svc["Type"] == ["notify"]
    assert svc["Restart"] == ["always"]
    assert int(svc["WatchdogSec"][0]) > 0
    assert "edge run" in svc["ExecStart"][0]
    families = set(svc["RestrictAddressFamilies"][0].split())
    assert {"AF_CAN", "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= families
    assert svc.get("MemoryDenyWriteExecute", ["no"]) == ["no"]  # numba's JIT
    assert "yes" not in svc.get("PrivateDevices", [])  # would hide /dev/ttyUSB*
    assert any(d.startswith(("char-ttyUSB", "/dev/ttyUSB")) for d in svc["DeviceAllow"])
    assert svc.get("PrivateNetwork", ["no"]) == ["no"]  # SocketCAN lives in the host's netns
    for hardening in ("NoNewPrivileges", "ProtectHome"):
        assert svc[hardening] == ["yes"]
    assert svc["ProtectSystem"] == ["strict"] and svc["StateDirectory"] == ["carpulse"]
    assert u[("Install", "WantedBy")] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    carpulse = Path(sys.executable).with_name("carpulse")
    if not carpulse.exists():
        pytest.skip("the carpulse entry point is not installed in this venv")
    # verify insists that ExecStart exists: point it at this checkout's entry point.
    unit = tmp_path / "carpulse-edge.service"
    unit.write_text(UNIT.read_text().replace("/opt/carpulse/venv/bin/carpulse", str(carpulse)))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if str(unit) in line or unit.name in line
    ]
    assert out.returncode == 0 and problems == [], out.stdout + out.stderr
