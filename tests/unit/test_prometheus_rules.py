"""The alert rules and the example scrape config pass ``promtool`` (Debian package ``prometheus``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        msg = "promtool not found (apt-get install prometheus; `make setup` does)"
        if IN_CI:
            pytest.fail(msg + " and CI=true forbids skipping")
        pytest.skip(msg)
    return found


def _run(*args: str) -> str:
    out = subprocess.run(
        [promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_alert_rules_are_valid() -> None:
    assert "SUCCESS: 8 rules found" in _run("check", "rules", "alerts.yml")


def test_alert_rules_fire_as_their_unit_tests_say() -> None:
    assert "SUCCESS" in _run("test", "rules", "alerts_test.yml")


def test_example_scrape_config_is_valid_and_loads_the_rules() -> None:
    out = _run("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out and "SUCCESS: 8 rules found" in out
