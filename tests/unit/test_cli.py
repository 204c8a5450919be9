"""The CLI: effective config with secrets masked, one clear line for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from carpulse.cli import app


def test_config_show_masks_secrets(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CARPULSE_INFLUX__TOKEN", "very-secret")
    monkeypatch.setenv("CARPULSE_KAFKA__PARTITIONS", "12")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["influx"]["token"] == "********"
    assert shown["kafka"]["partitions"] == 12
    assert "very-secret" not in result.output


def _carpulse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carpulse", *args], capture_output=True, text=True, timeout=60
    )


def test_malformed_dbc_gives_one_clear_line(tmp_path: Path) -> None:
    dbc = tmp_path / "bad.dbc"
    dbc.write_text(
        'VERSION ""\nBO_ 100 M: 8 X\n SG_ S : 0|8@1+ (1,0) [0|0] "" X\nthis is not dbc\n'
    )
    log = tmp_path / "x.log"
    log.write_text("(1.000000) can0 064#0102030405060708\n")
    r = _carpulse("replay", str(log), "--dbc", str(dbc), "--device", "car-x")
    assert r.returncode == 2
    assert r.stderr.startswith(f"carpulse: error: DBC file {dbc} cannot be loaded")
    assert "Traceback" not in r.stderr


def test_missing_log_is_named(tmp_path: Path) -> None:
    r = _carpulse(
        "replay", str(tmp_path / "nope.log"), "--dbc", str(tmp_path / "x.dbc"), "--device", "car-x"
    )
    assert r.returncode == 2
    assert "nope.log does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_benchmark_lists_known() -> None:
    r = _carpulse("bench", "nope")
    assert r.returncode == 2
    assert "unknown benchmark 'nope'; known:" in r.stderr and "wire" in r.stderr


def test_bench_and_eval_help_list_their_names() -> None:
    for command, name in (("bench", "e2e"), ("eval", "nab")):
        r = _carpulse(command, "--help")
        assert r.returncode == 0, r.stderr
        assert f"Usage: carpulse {command} NAME" in r.stdout and f"  {name}\n" in r.stdout
        assert "unknown" not in r.stderr
