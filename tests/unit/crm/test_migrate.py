"""Alembic migrations on SQLite and on a real PostgreSQL: ``upgrade head`` makes exactly the
schema the models declare (the CRM's and the dashboards'), downgrades and re-upgrades cleanly,
and 0004 adopts the tables older dashboards made themselves. ``carpulse crm migrate`` is the one
command that migrates, under a lock (two processes at once, a held lock); the others refuse an
old, empty or newer schema."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect, text

import crm.tables  # noqa: F401  (registers the 0002 tables on Base.metadata)
from crm.migrate import downgrade, upgrade
from crm.schema import Base
from dashboards.auth import UserBase
from tests.unit.crm.conftest import fresh_engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    eng = fresh_engine(request, tmp_path)
    yield eng
    eng.dispose()


def _diff(engine: Engine) -> list[Any]:
    """What autogenerate would still emit: tables, columns, types, indexes the models differ by."""
    metadata = MetaData()
    for md in (Base.metadata, UserBase.metadata):
        for table in md.tables.values():
            table.to_metadata(metadata)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    return [d for d in diff if not (isinstance(d, tuple) and d[0] == "remove_table"
                                    and d[1].name == "alembic_version")]  # fmt: skip


def test_upgrade_head_matches_the_models(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert _diff(engine) == []
    tables = set(inspect(engine).get_table_names())
    assert {"dashboard_users", "dashboard_sessions", "dashboard_secrets"} <= tables
    downgrade(engine, "0003")
    tables = set(inspect(engine).get_table_names())
    assert not {"dashboard_users", "dashboard_sessions", "dashboard_secrets"} & tables
    assert "inbox_items" in tables
    upgrade(engine)
    assert _diff(engine) == []


def test_0004_adopts_the_tables_older_dashboards_made(engine: Engine) -> None:
    """Before 0004 the app ran ``create_all`` for users and sessions and kept a legacy
    ``advisor_inbox``: their rows survive the upgrade, the legacy table goes."""
    upgrade(engine, "0003")
    UserBase.metadata.tables["dashboard_users"].create(engine)
    UserBase.metadata.tables["dashboard_sessions"].create(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE advisor_inbox (id INTEGER PRIMARY KEY, title TEXT)"))
        conn.execute(
            text("INSERT INTO dashboard_users (username, password_hash, role, dealer_id, active,"
                 " created_at) VALUES ('old', 'x', 'auditor', 'd', true, CURRENT_TIMESTAMP)")
        )  # fmt: skip
    upgrade(engine)
    assert "advisor_inbox" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT username FROM dashboard_users")).scalars().all() == ["old"]
    assert _diff(engine) == []


def test_0005_chains_and_scopes_the_audit_rows_already_there(engine: Engine) -> None:
    """Rows written before 0005 get their dealer from their subject and a hash chain that
    verifies; the append-only trigger stands again afterwards (SQLite rebuilds the table)."""
    from sqlalchemy.orm import Session

    from crm.audit import verify_chain

    upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO vehicles (vin, model, dealer_id, created_at) VALUES "
                          "('VIN00000000000001', 'x', 'dealer-a', CURRENT_TIMESTAMP)"))  # fmt: skip
        for subject in ("VIN00000000000001", "retention"):
            conn.execute(
                text("INSERT INTO audit_log (at, actor, action, subject, purpose, detail) VALUES "
                     "(CURRENT_TIMESTAMP, 'crm', 'x', :s, '', '{\"n\": [1, 2]}')"),
                {"s": subject},
            )  # fmt: skip
    upgrade(engine)
    with Session(engine) as s:
        report = verify_chain(s)
        assert report.ok and report.rows == 2, report.problems
        dealers = s.execute(text("SELECT dealer_id FROM audit_log ORDER BY id")).scalars().all()
        assert dealers == ["dealer-a", None]
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'x'"))
    assert _diff(engine) == []


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_commands_refuse_an_old_schema_and_work_after_migrate(engine: Engine) -> None:
    """Only `carpulse crm migrate` changes the schema: the other commands and the dashboard
    refuse an old one with what to run, and work once it ran."""
    from typer.testing import CliRunner

    from carpulse.cli import app
    from core.errors import SchemaError
    from crm.migrate import check_schema, current_revision, head_revision
    from dashboards.app import DashboardConfig, create_app

    upgrade(engine, "0005")
    run = CliRunner().invoke
    res = run(app, ["crm", "coupons", "--db", _url(engine)])
    want = f"schema at 0005, this carpulse needs {head_revision()}: run `carpulse crm migrate`"
    assert res.exit_code != 0 and want in str(res.exception)
    assert current_revision(engine) == "0005"  # nothing migrated behind our back
    with pytest.raises(SchemaError, match="run `carpulse crm migrate`"):
        create_app(DashboardConfig(crm_url=_url(engine)))
    res = run(app, ["crm", "migrate", "--db", _url(engine)])
    assert res.exit_code == 0 and f"(0005 -> {head_revision()})" in res.output
    assert check_schema(engine) == head_revision()
    res = run(app, ["crm", "coupons", "--db", _url(engine)])
    assert res.exit_code == 0 and res.output == ""
    res = run(app, ["crm", "migrate", "--db", _url(engine)])
    assert res.exit_code == 0 and f"already at {head_revision()}" in res.output


def test_a_revision_from_a_newer_carpulse_is_refused(engine: Engine) -> None:
    from core.errors import SchemaError
    from crm.migrate import check_schema

    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    with pytest.raises(SchemaError, match="schema at 0999, newer than this carpulse"):
        check_schema(engine)


def _migrate_proc(url: str) -> Any:
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "carpulse", "crm", "migrate", "--db", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )  # fmt: skip


def test_two_migrates_at_once_are_safe(engine: Engine) -> None:
    """Two `carpulse crm migrate` processes on an empty database: one migrates, the other waits
    for its lock and finds the schema there; the schema is exactly the models'."""
    from crm.migrate import head_revision

    procs = [_migrate_proc(_url(engine)) for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted("already at" in o for o in outs) == [False, True], outs
    assert any(f"(empty -> {head_revision()})" in o for o in outs), outs
    assert _diff(engine) == []


def test_migrate_waits_for_the_lock(engine: Engine) -> None:
    """The lock is real: while another holder has it, `carpulse crm migrate` does not run."""
    import contextlib
    import fcntl
    import os
    import subprocess
    from pathlib import Path

    from crm.migrate import PG_LOCK_KEY, current_revision

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        if engine.url.get_backend_name() == "postgresql":
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
                conn.commit()
                yield
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                conn.commit()
        else:
            db = Path(str(engine.url.database))
            fd = os.open(db.with_name(db.name + ".migrate-lock"), os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
            os.close(fd)

    with held():
        proc = _migrate_proc(_url(engine))
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=6)  # the interpreter starts in ~2 s; then it waits on the lock
        assert current_revision(engine) is None
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and "(empty -> " in out, out


def test_0008_opens_the_ledger_with_the_members_points_and_renames_tiers(engine: Engine) -> None:
    """Members before 0008 keep their points as an opening row (the tier window sees them), their
    Chinese tier names become ids; the rules' coupon templates appear; the ledger refuses edits."""
    from sqlalchemy.orm import Session

    from crm import loyalty

    upgrade(engine, "0007")
    with engine.begin() as conn:
        for cid, tier, points in (("c1", "银卡", 450), ("c2", "白金", 0)):
            conn.execute(text("INSERT INTO customers (id, display_name, dealer_id, created_at) "
                              "VALUES (:c, '', 'd', CURRENT_TIMESTAMP)"), {"c": cid})  # fmt: skip
            conn.execute(
                text("INSERT INTO members (customer_id, tier, points, visits, spend, tier_since) "
                     "VALUES (:c, :t, :p, 1, 0, CURRENT_TIMESTAMP)"),
                {"c": cid, "t": tier, "p": points},
            )  # fmt: skip
    upgrade(engine)
    assert _diff(engine) == []
    with Session(engine) as s:
        tiers = {r[0]: r[1] for r in s.execute(text("SELECT customer_id, tier FROM members"))}
        assert tiers == {"c1": "silver", "c2": "platinum"}
        rows = s.execute(text("SELECT customer_id, source, delta FROM points_ledger")).all()
        assert [tuple(r) for r in rows] == [("c1", "opening:c1", 450)]
        assert loyalty.window_points(s, "c1", dt.datetime.now(dt.UTC)) == 450
        assert loyalty.review_tier(s, "c2") == ("platinum", "standard")  # no points: down
        codes = set(s.scalars(text("SELECT code FROM coupon_templates")))
        assert codes == {"win-back", "referral-thanks"}
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE points_ledger SET delta = 10000"))
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM points_ledger"))
    downgrade(engine, "0007")
    assert "points_ledger" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert _diff(engine) == []
