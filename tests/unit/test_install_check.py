"""``carpulse doctor``: another installed distribution that also provides one of our top-level
names is reported (a real dist-info on ``sys.path``, read by importlib.metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carpulse.cli import app
from carpulse.install_check import OURS, clashes


def _install_other(site: Path, top_level: str) -> None:
    """A minimal installed distribution ``other-ml`` whose package is ``top_level``."""
    info = site / "other_ml-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: other-ml\nVersion: 1.0\n")
    (info / "top_level.txt").write_text(f"{top_level}\n")
    pkg = site / top_level
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (info / "RECORD").write_text(
        f"{top_level}/__init__.py,,\nother_ml-1.0.dist-info/METADATA,,\n"
        "other_ml-1.0.dist-info/top_level.txt,,\nother_ml-1.0.dist-info/RECORD,,\n"
    )


def test_this_environment_has_no_clash() -> None:
    assert clashes() == {}
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    assert [line.split()[0] for line in res.output.splitlines()] == ["ok"] * len(OURS)


def test_another_distribution_with_our_name_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_other(tmp_path, "models")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert clashes() == {"models": ["other-ml"]}
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 1
    assert "clash  models: also installed by other-ml" in res.output
    assert "ok     core" in res.output
    doc = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)
    assert doc["models"]["others"] == ["other-ml"] and doc["edge"]["others"] == []


def test_a_distribution_with_other_names_is_no_clash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_other(tmp_path, "modelsx")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert clashes() == {}
    assert clashes({"core": ["carpulse", "Core_Utils"], "edge": ["carpulse"]}) == {
        "core": ["Core_Utils"]
    }
