"""``carpulse crm dry-run``: replays a JSON-lines log, reports effects, issues nothing; malformed
rules and bad lines get clear messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from carpulse.cli import app
from crm.rules import SHIPPED
from crm.schema import Coupon, Effect
from tests.unit.crm.conftest import T0, VIN, Dealer


def write_log(path: Path) -> None:
    ts = int(T0.timestamp() * 1e6)
    lines = [
        json.dumps(
            {
                "topic": "carpulse.predictions",
                "value": {
                    "vin": VIN,
                    "kind": "service_due",
                    "ts_us": ts,
                    "days": 9.0,
                    "km": 30000.0,
                    "odo": 29800.0,
                    "cycle": "c",
                },
            }
        ),
        json.dumps(
            {
                "kind": "crash",
                "ts": T0.isoformat(),
                "id": "crash-1",
                "vin": VIN,
                "data": {"trigger": "airbag"},
            }
        ),
        "{broken",
        json.dumps({"kind": "crash", "ts": "2026-03-01T08:00:00", "vin": VIN}),  # naive time
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("dealer", ["sqlite"], indirect=True)
def test_dry_run_reports_and_issues_nothing(dealer: Dealer, tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    write_log(log)
    url = str(dealer.store.engine.url)
    res = CliRunner().invoke(
        app, ["crm", "dry-run", "--rules", str(SHIPPED), "--events", str(log), "--db", url]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["per_rule"] == {"service-due-coupon": 1, "crash-call-centre": 1}
    assert doc["bad_lines"] == 2 and doc["problems"] == []
    assert "events.jsonl:3: JSONDecodeError" in doc["bad_examples"][0]
    assert "events.jsonl:4: ValueError: naive timestamp" in doc["bad_examples"][1]
    with dealer.store.tx() as s:
        assert s.scalar(select(func.count(Coupon.id))) == 0
        assert s.scalar(select(func.count(Effect.id))) == 0


def test_malformed_rules_exit_with_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - id: x\n    on: crash\n    when: [event.kind == crash]\n"
                   "    subject: vin\n    period: sometimes\n    effect: {inbox: {role: expert, template: crash_alert}}\n")  # fmt: skip
    log = tmp_path / "e.jsonl"
    log.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "carpulse", "crm", "dry-run", "--rules", str(bad), "--events", str(log),
         "--db", f"sqlite:///{tmp_path / 'x.sqlite'}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{bad}:6:13: rules[0] (x).period: expected one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_issues_coupons_from_simulated_predictions_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    res = CliRunner().invoke(app, ["crm", "demo", "--db", url, "--vehicles", "20", "--days", "40"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["coupons"] >= 1 and doc["coupons"] == doc["fired"] and doc["replay_fired"] == 0
    assert doc["messages_queued"] == 2 * doc["coupons"]  # e-mail and webhook for each
    assert {e["template"] for e in doc["examples"]} == {"maintenance"}


def test_coupons_lists_what_the_demo_issued(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    demo = CliRunner().invoke(app, ["crm", "demo", "--db", url, "--vehicles", "8", "--days", "40"])
    assert demo.exit_code == 0, demo.output
    issued = json.loads(demo.output)["coupons"]
    res = CliRunner().invoke(app, ["crm", "coupons", "--db", url, "--template", "maintenance"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert len(rows) == issued >= 1
    assert all(r["effect"].startswith("service-due-coupon|") for r in rows)
    one = CliRunner().invoke(app, ["crm", "coupons", "--db", url, "--vin", rows[0]["vin"]])
    assert [json.loads(x)["id"] for x in one.output.splitlines()] == [rows[0]["id"]]
    none = CliRunner().invoke(app, ["crm", "coupons", "--db", url, "--template", "tier-welcome"])
    assert none.exit_code == 0 and none.output == ""


def test_seeded_demo_devices_match_the_live_fleet(tmp_path: Path) -> None:
    from crm import store as st
    from crm.demo import registry_of, seed_demo
    from crm.migrate import upgrade

    store = st.CrmStore.from_url(f"sqlite:///{tmp_path / 'd.sqlite'}")
    upgrade(store.engine)
    devices = ["demo-car-1", "demo-car-2", "demo-gt350"]
    vins = seed_demo(store, 3, devices=devices, dealer_id="dealer-a")
    assert registry_of(store, devices) == dict(zip(devices, vins, strict=True))
    assert seed_demo(store, 3) == vins  # idempotent
    # other VINs for the same devices: the devices stay where they are
    other = ["CPDEM000000000001", "CPDEM000000000002", "CPDEMGT3500000001"]
    assert seed_demo(store, 3, devices=devices, vins=other) == other
    assert registry_of(store, devices) == dict(zip(devices, vins, strict=True))
