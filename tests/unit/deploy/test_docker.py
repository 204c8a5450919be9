"""deploy/docker: checked as far as this machine allows (no Docker daemon, so nothing is built or
started). ``docker-compose config`` (Debian's docker-compose 1.29) validates the compose file
against the compose schema; the Dockerfile's COPY sources, base-image pins, user and extras are
checked here; every carpulse command in the compose file is a real CLI command; the compose
config loads and names only secrets the compose file mounts."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import load_settings
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "deploy" / "docker"
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None and not IN_CI, reason="docker-compose missing (apt-get install docker-compose)"
)


def instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())  # type: ignore[no-any-return]


def carpulse_services() -> dict:  # type: ignore[type-arg]
    return {
        n: s for n, s in compose()["services"].items() if s.get("image", "").startswith("carpulse")
    }


@needs_compose
def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(COMPOSE), "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        (DOCKER / "compose.yaml")
        .read_text()
        .replace("restart: unless-stopped", "restarts: unless-stopped", 1)
    )
    proc = subprocess.run([str(COMPOSE), "-f", str(broken), "config", "-q"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0 and "restarts" in proc.stderr


def test_dockerfile_copies_what_exists_from_pinned_images_as_a_user() -> None:
    steps = instructions()
    for op, rest in steps:
        if op == "FROM":
            image = rest.split()[0]
            assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-bookworm", image), image
        if op == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
    users = [rest for op, rest in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["carpulse"]') in steps
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = set(cfg["options.extras_require"])
    installs = [rest for op, rest in steps if op == "RUN" and "pip install '.[" in rest]
    wanted = set(re.search(r"\.\[([a-z,]+)\]", installs[0]).group(1).split(","))  # type: ignore[union-attr]
    assert wanted == {"stream", "crm", "dashboards", "models"} and wanted <= extras


@pytest.mark.parametrize("service", ["migrate", "bridge", "stream", "crm", "dashboard"])
def test_compose_commands_are_real_carpulse_commands(service: str) -> None:
    args = carpulse_services()[service]["command"]
    proc = subprocess.run([sys.executable, "-m", "carpulse", *args, "--help"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr


def test_compose_config_loads_and_its_secrets_are_mounted(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("CARPULSE_")]:
        monkeypatch.delenv(var)
    s = load_settings(DOCKER / "carpulse.toml")
    assert s.kafka.bootstrap == "kafka:9092" and s.mqtt.host == "mosquitto"
    declared = set(compose()["secrets"])
    services = carpulse_services()
    needs = {
        "bridge": {s.mqtt.password_file},
        "crm": {s.crm.url_file},
        "migrate": {s.crm.url_file},
        "dashboard": {s.crm.url_file, s.dashboard.signing_key_file, s.dashboard.mqtt_password_file},
    }
    for service, files in needs.items():
        names = {Path(str(f)).name for f in files}
        assert all(str(f).startswith("/run/secrets/") for f in files)
        assert names <= set(services[service].get("secrets", [])) <= declared, service
    for svc in services.values():
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]


def test_dockerfile_copies_every_package_and_file_the_build_reads() -> None:
    """pip builds the image's carpulse from the COPY'd files only: every package setup.cfg
    includes and every ``file:`` it names must be among them."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split()
    packages = {p for p in include if not p.endswith(".*")}
    copied = {
        src.rstrip("/")
        for op, rest in instructions()
        if op == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]
    }
    assert packages <= copied, f"not copied: {sorted(packages - copied)}"
    files = {
        v.split("file:", 1)[1].strip()
        for section in cfg.sections()
        for v in cfg[section].values()
        if "file:" in v
    }
    assert files and files <= copied, f"not copied: {sorted(files - copied)}"
    assert {"setup.cfg", "pyproject.toml"} <= copied
