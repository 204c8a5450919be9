"""Packaging: a Raspberry Pi installs carpulse[edge] without Faust, Kafka clients or SQLAlchemy."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOUD_ONLY = ("faust", "aiokafka", "sqlalchemy", "influxdb", "mode")


def _extras() -> dict[str, list[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    section = cfg["options.extras_require"]
    return {
        k: [line.strip().lower() for line in v.splitlines() if line.strip()]
        for k, v in section.items()
    }


def test_edge_extra_has_no_cloud_dependencies() -> None:
    extras = _extras()
    assert {"edge", "stream", "vision", "local", "dev"} <= set(extras)
    for req in extras["edge"]:
        assert not req.startswith(CLOUD_ONLY), f"edge extra pulls {req}"


def test_edge_code_paths_import_no_cloud_modules() -> None:
    code = (
        "import sys, edge.replay, edge.publisher, edge.seqstate, edge.metrics, firmware_bridge.dbc,"
        " carpulse.cli\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {CLOUD_ONLY!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "", f"edge imports cloud modules: {out.stdout}"


def test_core_imports_nothing_of_ours() -> None:
    ours = ("edge", "stream", "models", "firmware_bridge", "dashboards", "crm", "carpulse")
    for path in (ROOT / "core").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                assert module not in ours, (
                    f"{path.name} imports {module}: core must import nothing of ours"
                )


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                found.add((path.name, stripped.split()[1].split(".")[0]))
    return found


def test_edge_and_stream_share_only_core() -> None:
    assert not [(f, m) for f, m in _imports("edge") if m == "stream"], "edge imports stream"
    assert not [(f, m) for f, m in _imports("stream") if m == "edge"], "stream imports edge"


def test_dashboards_never_import_edge() -> None:
    assert not [(f, m) for f, m in _imports("dashboards") if m == "edge"], (
        "dashboards imports edge: sign commands with core.signing"
    )
