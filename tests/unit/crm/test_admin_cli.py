"""``carpulse crm templates add|list``, ``carpulse registry export`` and ``carpulse crm worker``
starting from the config file's database once the templates exist."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from carpulse.cli import app
from stream.registry import load_registry
from tests.unit.crm.test_import import TODAY, VIN_A, VIN_B, good


def _add(db: str, code: str, *extra: str) -> Any:
    return CliRunner().invoke(
        app, ["crm", "templates", "add", code, "--title-zh", "保养券", "--title-en", "Service",
              "--db", db, *extra],
    )  # fmt: skip


def test_templates_add_is_idempotent_and_listed(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    assert CliRunner().invoke(app, ["crm", "migrate", "--db", db]).exit_code == 0
    assert "added coupon template maintenance" in _add(db, "maintenance", "--value", "300").output
    assert "unchanged" in _add(db, "maintenance", "--value", "300").output
    assert "updated" in _add(db, "maintenance", "--value", "350", "--valid-days", "60").output
    res = CliRunner().invoke(app, ["crm", "templates", "list", "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    listed = {t["code"]: t for t in json.loads(res.stdout)}
    assert listed.pop("maintenance") == {"code": "maintenance", "title_zh": "保养券",
                                         "title_en": "Service", "value": "350.00",
                                         "valid_days": 60, "shareable": True}  # fmt: skip
    assert set(listed) == {"win-back", "referral-thanks"}  # migration 0008 adds the rules' own


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["=evil"], "template code '=evil'"),
        (["ok", "--value", "-1"], "--value '-1' must be"),
        (["ok", "--value", "lots"], "is not a number"),
    ],
)
def test_templates_add_refuses_bad_values(tmp_path: Path, args: list[str], why: str) -> None:
    res = _add(f"sqlite:///{tmp_path / 'crm.sqlite'}", *args)
    assert res.exit_code != 0 and why in str(res.exception)


def test_registry_export_carries_the_last_service(tmp_path: Path) -> None:
    from crm.onboard import import_folder
    from crm.store import CrmStore

    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    assert CliRunner().invoke(app, ["crm", "migrate", "--db", db]).exit_code == 0
    store = CrmStore.from_url(db)
    assert import_folder(store, good(tmp_path / "dms"), today=TODAY).rejects == []
    store.engine.dispose()
    out = tmp_path / "registry.json"
    res = CliRunner().invoke(app, ["registry", "export", "--db", db, "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc == [
        {"device_id": "car-1", "vin": VIN_A,
         "last_service": {"date": "2025-05-10", "odometer_km": 30110.5}},
        {"device_id": "car-2", "vin": VIN_B,
         "last_service": {"date": "2025-01-20", "odometer_km": 41000.0}},
    ]  # fmt: skip
    registry = load_registry(str(out))  # the stream reads it as it is
    assert registry.vin("car-1") == VIN_A and not registry.open_mode
    plain = CliRunner().invoke(app, ["registry", "export", "--db", db, "--plain"])
    assert json.loads(plain.output) == {"car-1": VIN_A, "car-2": VIN_B}
    gated = CliRunner().invoke(
        app, ["registry", "export", "--db", db, "--out", str(out), "--gate", "gate-1"]
    )
    assert gated.exit_code == 0, gated.output
    registry = load_registry(str(out))
    assert registry.is_gate("gate-1") and registry.vin("car-2") == VIN_B
    assert registry.last_service[VIN_B] == (
        float((dt.date(2025, 1, 20) - dt.date(1970, 1, 1)).days),
        41000.0,
    )


def test_crm_worker_starts_from_the_config_files_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's first complaint: `carpulse --config prod.toml crm worker` ignored the file."""
    import faust

    import crm.agents

    db_file = tmp_path / "prod-crm.sqlite"
    conf = tmp_path / "prod.toml"
    conf.write_text(
        f'[crm]\nurl = "sqlite:///{db_file}"\njobs_interval_s = 7\n'
        '[kafka]\nbootstrap = "kafka-1:9092"\n[stream]\ncrm_app_id = "crm-prod"\n'
    )
    monkeypatch.delenv("CARPULSE_CONFIG", raising=False)
    seen: dict[str, Any] = {}

    def fake_build(app_id: str, kafka: Any, store: Any, engine: Any, disp: Any, interval: float,
                   session_timeout_s: float, **kw: Any) -> str:  # fmt: skip
        seen.update(app_id=app_id, bootstrap=kafka.bootstrap, url=str(store.engine.url),
                    interval=interval, channels=sorted(disp.transports))  # fmt: skip
        return "app"

    class FakeWorker:
        def __init__(self, app: object, loglevel: str, **kw: Any) -> None:
            seen["worker"] = app
            seen["log_handlers"] = kw["logging_config"]["handlers"]  # carpulse's format (core.logs)

        def execute_from_commandline(self) -> None:
            seen["started"] = True

    monkeypatch.setattr(crm.agents, "build_crm_app", fake_build)
    monkeypatch.setattr(faust, "Worker", FakeWorker)
    runner = CliRunner()
    res = runner.invoke(app, ["--config", str(conf), "crm", "worker"])
    assert res.exit_code != 0  # nothing migrates but `crm migrate`: says so
    assert "has no schema yet" in str(res.exception)
    assert "run `carpulse crm migrate`" in str(res.exception)
    with sqlite3.connect(db_file) as conn:  # nothing created behind the operator's back
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert runner.invoke(app, ["--config", str(conf), "crm", "migrate"]).exit_code == 0
    res = runner.invoke(app, ["--config", str(conf), "crm", "worker"])
    assert res.exit_code != 0  # a fresh database lacks the rules' templates: says how to fix
    assert "carpulse crm templates add" in str(res.exception)
    for code in ("maintenance", "tier-welcome"):
        r = runner.invoke(app, ["--config", str(conf), "crm", "templates", "add", code,
                                "--title-zh", "券", "--title-en", "Coupon"])  # fmt: skip
        assert r.exit_code == 0, r.output
    res = runner.invoke(app, ["--config", str(conf), "crm", "worker"])
    assert res.exit_code == 0, res.output
    assert seen["started"] and seen["app_id"] == "crm-prod"
    assert seen["bootstrap"] == "kafka-1:9092" and seen["interval"] == 7
    assert seen["url"] == f"sqlite:///{db_file}" and seen["channels"] == []
    assert seen["log_handlers"]["default"]["stream"] == "ext://sys.stderr"
