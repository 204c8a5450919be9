"""The systemd units in deploy/systemd pass ``systemd-analyze verify`` and run real commands.

systemd is not PID 1 here: ``verify --root`` checks the units inside a throwaway root that holds a
copy of the host's unit directory (for ``multi-user.target``, ``network-online.target``...) and an
executable at ``/opt/carpulse/venv/bin/carpulse``, the path every ``ExecStart`` names. ``verify``
exits 0 after many mistakes it only warns about (an unknown key, a bad value: "ignoring"), so any
output at all counts as a failure.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[3]
UNITS = ROOT / "deploy" / "systemd"
CLOUD = ["carpulse-bridge@.service", "carpulse-stream.service", "carpulse-crm.service",
         "carpulse-dashboard.service"]  # fmt: skip
ALL = [*CLOUD, "carpulse-edge.service"]
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
HOST_UNITS = Path("/usr/lib/systemd/system")

needs_systemd = pytest.mark.skipif(
    not (Path(ANALYZE).exists() and HOST_UNITS.is_dir()) and not IN_CI,  # under CI: fail
    reason="systemd-analyze or /usr/lib/systemd/system missing (apt-get install systemd)",
)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sysroot")
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "opt/carpulse/venv/bin/carpulse"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def verify(root: Path, unit_file: Path) -> str:
    """Install ``unit_file`` into ``root`` and verify it; the problems found ('' = none)."""
    target = root / "etc/systemd/system" / unit_file.name
    shutil.copyfile(unit_file, target)
    name = unit_file.name.replace("@.service", "@1.service")  # a template is checked as instance 1
    try:
        proc = subprocess.run(
            [ANALYZE, "verify", f"--root={root}", "--man=no", "--generators=no", name],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        target.unlink()
    out = (proc.stdout + proc.stderr).strip()
    return out or ("" if proc.returncode == 0 else f"exit status {proc.returncode}")


def service_section(unit_file: Path) -> dict[str, list[str]]:
    """``[Service]`` and ``[Unit]`` keys with every value (keys may repeat in unit files)."""
    out: dict[str, list[str]] = {}
    for line in unit_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@needs_systemd
@pytest.mark.parametrize("unit", ALL)
def test_unit_passes_systemd_analyze_verify(fake_root: Path, unit: str) -> None:
    assert verify(fake_root, UNITS / unit) == ""


@needs_systemd
@pytest.mark.parametrize("unit", ALL)
def test_unit_exposure_is_low(fake_root: Path, unit: str) -> None:
    """``systemd-analyze security``: 1.7 for the cloud units, 2.1 for the edge one (CAN, serial
    devices, numba's W+X memory) on systemd 252; 2.5 of 10 at most."""
    target = fake_root / "etc/systemd/system" / unit
    shutil.copyfile(UNITS / unit, target)
    name = unit.replace("@.service", "@1.service")
    try:
        proc = subprocess.run(
            [ANALYZE, "security", "--offline=true", f"--root={fake_root}", "--threshold=25", name],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        target.unlink()
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr


@needs_systemd
@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("NoNewPrivileges=yes", "NoNewPrivilege=yes", "Unknown key"),
        ("Restart=on-failure", "Restart=sometimes", "restart specifier"),
        ("ProtectSystem=strict", "ProtectSystem=stricter", "protect system"),
        ("/opt/carpulse/venv/bin/carpulse", "/opt/carpulse/bin/carpulse", "not executable"),
        ("[Service]", "[Servise]", "Unknown section"),
    ],
)
def test_a_broken_unit_fails_the_check(
    fake_root: Path, tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    text = (UNITS / "carpulse-stream.service").read_text()
    assert old in text
    broken = tmp_path / "carpulse-stream.service"
    broken.write_text(text.replace(old, new, 1))
    assert complaint in verify(fake_root, broken)


@pytest.mark.parametrize("unit", ALL)
def test_unit_runs_as_its_own_user_with_hardening_and_bounded_restarts(unit: str) -> None:
    keys = service_section(UNITS / unit)
    assert keys["User"] == ["carpulse"] and keys["Group"] == ["carpulse"]
    env = dict(e.split("=", 1) for e in keys.get("Environment", []))
    exec_start = shlex.split(keys["ExecStart"][0])
    assert exec_start[0] == "/opt/carpulse/venv/bin/carpulse"
    config = env.get("CARPULSE_CONFIG") or exec_start[exec_start.index("--config") + 1]
    assert config.startswith("/etc/carpulse/")
    assert keys["StateDirectory"][0].startswith("carpulse")
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""),
                       ("UMask", "0077")]:  # fmt: skip
        assert keys[key] == [value], key
    # a configuration error (carpulse exits 2) is never restarted in a loop
    assert keys["RestartPreventExitStatus"] == ["2"]
    if unit in CLOUD:
        assert keys["Restart"] == ["on-failure"]
        assert int(keys["StartLimitIntervalSec"][0]) > 0 and int(keys["StartLimitBurst"][0]) > 0
        assert keys["PrivateDevices"] == ["yes"]
        assert keys["BindReadOnlyPaths"] == ["-/etc/carpulse/secrets:/run/secrets"]


def test_faust_workers_keep_their_tables_in_their_state_directory() -> None:
    for unit, state in [("carpulse-stream.service", "stream"), ("carpulse-crm.service", "crm")]:
        keys = service_section(UNITS / unit)
        env = dict(e.split("=", 1) for e in keys["Environment"])
        assert keys["StateDirectory"] == [f"carpulse/{state}"]
        assert env["CARPULSE_STREAM__DATA_DIR"] == f"/var/lib/carpulse/{state}"


@pytest.mark.parametrize("unit", ALL)
def test_exec_start_is_a_real_carpulse_command(unit: str) -> None:
    """The arguments after the executable are accepted by this tree's CLI (``--help`` on them)."""
    args = shlex.split(service_section(UNITS / unit)["ExecStart"][0])[1:]
    args = [a.replace("%i", "1") for a in args]
    # options of the root command (--config) go before the subcommand's --help
    proc = subprocess.run(
        [sys.executable, "-m", "carpulse", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


def test_unit_files_parse_as_ini_without_duplicated_sections() -> None:
    for unit in ALL:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string((UNITS / unit).read_text())
        assert parser.sections() == ["Unit", "Service", "Install"], unit
