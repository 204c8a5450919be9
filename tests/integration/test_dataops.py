"""Retention per family, backup and restore against the throwaway stack's real InfluxDB 1.x
(started alone: the stack's own influxdb.conf, RPC bind address included), a real SQLite CRM and
a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from carpulse.backup import MANIFEST, backup, restore
from carpulse.cli import app
from carpulse.stack import Stack, free_stack_settings
from core.config import CarpulseSettings, InfluxSettings
from core.errors import BackupError
from core.wire import Samples, TelemetryBatch
from crm import store as st
from crm.demo import seed_demo
from crm.migrate import head_revision, migrate
from stream.lines import batch_lines
from stream.pipeline import summary_lines
from stream.retention import v1_policies
from stream.sinks.influx import InfluxV1Sink
from tests.integration.helpers import influx_query

pytestmark = pytest.mark.integration
DAY = 86_400


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The local stack's InfluxDB 1.x only (Kafka and Mosquitto are not needed here)."""
    stack = Stack(free_stack_settings(tmp_path_factory.mktemp("stack")))
    stack.prepare()
    try:
        stack.start_service("influxdb")
        yield stack
    finally:
        stack.down()


def settings(stack: Stack, db: str, **retention: Any) -> InfluxSettings:
    return InfluxSettings.model_validate({
        "url": f"http://{stack.s.host}:{stack.s.influx_port}", "database": db,
        "backup_address": f"{stack.s.host}:{stack.s.influx_rpc_port}", "retention": retention,
    })  # fmt: skip


def lines_of_every_family(device: str, n: int = 400) -> list[str]:
    """What the pipeline writes: samples (stream.lines), trip and day summaries (pipeline)."""
    now = int(time.time() * 1e6)
    ts = [now - 3_600_000_000 + i * 1000 for i in range(n)]
    batch = TelemetryBatch(
        device, "b", 1, Samples.from_records([("Vehicle.Speed", t, float(i % 90))
                                              for i, t in enumerate(ts)])
    )  # fmt: skip
    out = batch_lines(batch, "telemetry")
    for k in range(3):
        rec = {"start_us": ts[0] + k, "end_us": ts[-1] + k, "km": 1.5 + k, "harsh": float(k)}
        out.append(summary_lines("trips", f"VIN{device}", rec["end_us"], rec))
    out.append(summary_lines("daily", f"VIN{device}", now // 86_400_000_000 * 86_400_000_000,
                             {"day": float(now // 86_400_000_000), "km": 4.5}))  # fmt: skip
    return out


def count(stack: Stack, db: str, what: str) -> int:
    series = influx_query(stack, f"SELECT COUNT(*) FROM {what}", db=db)
    return int(sum(v for v in series[0]["values"][0][1:] if v)) if series else 0


def dump(stack: Stack, db: str) -> dict[str, Any]:
    """Every point of every family, as the server returns them."""
    return {
        rp: influx_query(stack, f'SELECT * FROM "{db}"."{rp}"./.*/', db=db)
        for rp in ("telemetry", "trips", "daily", "autogen")
    }


def test_each_family_lands_in_its_retention_policy(influx: Stack) -> None:
    db = f"ret_{uuid.uuid4().hex[:8]}"
    s = settings(influx, db, telemetry="90d", trips="2y", daily="inf")
    lines = lines_of_every_family("car-ret")

    async def run() -> dict[str, Any]:
        sink = InfluxV1Sink(s)
        await sink.start()  # creates the database and the policies
        try:
            result = await sink.write(lines)
            assert result.written == len(lines) and result.rejected == []
            out: dict[str, Any] = {"policies": await v1_policies(sink.query, db)}
            out["again"] = await sink.apply_retention()
            s2 = settings(influx, db, telemetry="30d", trips="2y", daily="10y")
            other = InfluxV1Sink(s2)
            out["changed"] = await other.apply_retention()
            out["after"] = await v1_policies(other.query, db)
            out["twice"] = await other.apply_retention()
            await other.close()
            return out
        finally:
            await sink.close()

    out = asyncio.run(run())
    got = {k: (v["seconds"], v["default"]) for k, v in out["policies"].items()}
    assert got == {"autogen": (None, False), "telemetry": (90 * DAY, True),
                   "trips": (730 * DAY, False), "daily": (None, False)}  # fmt: skip
    assert count(influx, db, '"telemetry"."telemetry"') == 400
    assert count(influx, db, '"trips"."trips"') == 3 * 3  # three fields a trip
    assert count(influx, db, '"daily"."daily"') == 2
    assert count(influx, db, "telemetry") == 400  # readers that name no policy still find them
    assert dump(influx, db)["autogen"] == [] and count(influx, db, "trips") == 0
    assert out["again"] == []  # applying again changes nothing
    assert [c.split(" DURATION ")[1].split()[0] for c in out["changed"]] == ["720h", "87600h"]
    after = {k: v["seconds"] for k, v in out["after"].items()}
    assert after == {"autogen": None, "telemetry": 30 * DAY, "trips": 730 * DAY,
                     "daily": 3650 * DAY} and out["twice"] == []  # fmt: skip
    assert out["after"]["telemetry"]["default"] and count(influx, db, "telemetry") == 400


def test_points_older_than_their_retention_are_refused_not_lost_silently(influx: Stack) -> None:
    db = f"old_{uuid.uuid4().hex[:8]}"
    s = settings(influx, db, telemetry="1h")
    old = int((time.time() - 3 * 3600) * 1e6)
    lines = [
        f"telemetry,device=old x=1 {old}",
        f"telemetry,device=new x=2 {int(time.time() * 1e6)}",
    ]

    async def run() -> Any:
        sink = InfluxV1Sink(s)
        await sink.start()
        try:
            return await sink.write(lines)
        finally:
            await sink.close()

    result = asyncio.run(run())
    assert result.written == 1 and [line for line, _ in result.rejected] == [lines[0]]
    assert "beyond retention policy" in result.rejected[0][1]


def test_retention_commands(influx: Stack, tmp_path: Path) -> None:
    db = f"cli_{uuid.uuid4().hex[:8]}"
    conf = tmp_path / "c.toml"
    base = (f'[influx]\nurl = "http://{influx.s.host}:{influx.s.influx_port}"\n'
            f'database = "{db}"\n[influx.retention]\n')  # fmt: skip
    conf.write_text(base + 'telemetry = "26w"\n')
    run = CliRunner().invoke
    show = run(app, ["--config", str(conf), "influx", "retention", "show", "--json"])
    assert show.exit_code != 0 and "database not found" in str(show.exception)
    res = run(app, ["--config", str(conf), "influx", "retention", "apply"])
    assert res.exit_code == 0, res.output
    assert f'CREATE RETENTION POLICY "telemetry" ON "{db}" DURATION 4368h' in res.output
    conf.write_text(base + 'telemetry = "26w"\ntrips = "5y"\n')
    res = run(app, ["--config", str(conf), "influx", "retention", "apply", "--json"])
    doc = json.loads(res.stdout)
    assert len(doc["changed"]) == 1 and "ALTER" in doc["changed"][0]
    fams = {f["family"]: (f["duration"], f["configured"], f["default"]) for f in doc["families"]}
    assert fams == {"telemetry": ("182d", "182d", True), "trips": ("1825d", "1825d", False),
                    "daily": ("inf", "inf", False)}  # fmt: skip


# -- backup and restore ----------------------------------------------------------------------------


def crm_rows(url: str) -> dict[str, list[Any]]:
    """Every row of every CRM table, ordered, for comparison."""
    from sqlalchemy import inspect, text

    engine = st.make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: sorted(map(repr, conn.execute(text(f'SELECT * FROM "{t}"')).all()))
                for t in sorted(inspect(engine).get_table_names())
            }
    finally:
        engine.dispose()


def full_settings(stack: Stack, db: str) -> CarpulseSettings:
    return CarpulseSettings(influx=settings(stack, db), stack=stack.s)


def write_influx(stack: Stack, db: str) -> None:
    async def run() -> None:
        sink = InfluxV1Sink(settings(stack, db))
        await sink.start()
        try:
            for i in range(3):
                assert (await sink.write(lines_of_every_family(f"car-{i}"))).rejected == []
        finally:
            await sink.close()

    asyncio.run(run())


def drop(stack: Stack, db: str) -> None:
    influx_query(stack, f'DROP DATABASE "{db}"', db=db)


def test_backup_wipe_restore_sqlite_crm_and_influx(influx: Stack, tmp_path: Path) -> None:
    """Round trip: write, back up while the CRM is being written to, wipe, restore, compare."""
    db = f"bk_{uuid.uuid4().hex[:8]}"
    write_influx(influx, db)
    crm_file = tmp_path / "crm.sqlite"
    url = f"sqlite:///{crm_file}"
    store = st.CrmStore.from_url(url)
    migrate(store.engine)
    seed_demo(store, 12)
    store.engine.dispose()
    with sqlite3.connect(crm_file) as conn:
        conn.execute("CREATE TABLE probe (n INTEGER PRIMARY KEY, pad TEXT)")
    stop = threading.Event()

    def worker() -> None:  # a writer in another connection, as the CRM worker is
        with contextlib.closing(sqlite3.connect(crm_file, timeout=30)) as conn:
            n = 0
            while not stop.is_set():
                with conn:
                    conn.executemany("INSERT INTO probe (pad) VALUES (?)", [("x" * 200,)] * 50)
                n += 1

    t = threading.Thread(target=worker)
    t.start()
    try:
        time.sleep(0.3)
        doc = backup(full_settings(influx, db), tmp_path / "bk", url)
    finally:
        stop.set()
        t.join()
    before_influx, before_crm = dump(influx, db), crm_rows(url)
    rows = {rp: sum(len(s["values"]) for s in series) for rp, series in before_influx.items()}
    assert rows == {"telemetry": 3 * 400, "trips": 3 * 3, "daily": 3, "autogen": 0}
    assert doc["components"]["crm"] == {"backend": "sqlite", "revision": head_revision(),
                                        "file": "crm.sqlite",
                                        "sqlite_version": sqlite3.sqlite_version}  # fmt: skip
    assert doc["components"]["influx"]["database"] == db
    assert any(f.startswith("influx/") and f.endswith(".tar.gz") for f in doc["files"])
    assert json.loads((tmp_path / "bk" / MANIFEST).read_text()) == doc
    with pytest.raises(BackupError, match="not an empty folder"):  # never over another backup
        backup(full_settings(influx, db), tmp_path / "bk", url)
    with pytest.raises(BackupError, match="already has a database"):  # restore: empty targets
        restore(full_settings(influx, db), tmp_path / "bk", None)
    with pytest.raises(BackupError, match="is not empty"):
        restore(full_settings(influx, f"{db}_new"), tmp_path / "bk", url)
    assert f"{db}_new" not in str(influx_query(influx, "SHOW DATABASES"))  # nothing half-done
    # wipe both, restore, compare
    drop(influx, db)
    crm_file.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{crm_file}{suffix}").unlink(missing_ok=True)
    assert restore(full_settings(influx, db), tmp_path / "bk", url) == {
        "influx": db, "crm": head_revision()}  # fmt: skip
    assert dump(influx, db) == before_influx
    after_crm = crm_rows(url)
    probe = after_crm.pop("probe")
    before_crm.pop("probe")
    assert after_crm == before_crm and len(probe) % 50 == 0  # whole transactions only
    with sqlite3.connect(crm_file) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    policies = influx_query(influx, f'SHOW RETENTION POLICIES ON "{db}"', db=db)[0]["values"]
    assert {p[0] for p in policies} == {"autogen", "telemetry", "trips", "daily"}


def test_restore_refuses_a_corrupt_or_mismatched_backup(influx: Stack, tmp_path: Path) -> None:
    db = f"bad_{uuid.uuid4().hex[:8]}"
    write_influx(influx, db)
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store = st.CrmStore.from_url(url)
    migrate(store.engine)
    store.engine.dispose()
    good = tmp_path / "good"
    backup(full_settings(influx, db), good, url)
    drop(influx, db)
    target = f"sqlite:///{tmp_path / 'new.sqlite'}"

    def broken(name: str, change: Any) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        change(path)
        return path

    def flip(path: Path) -> None:  # one bit of one byte
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))

    shard = next((good / "influx").glob("*.tar.gz")).name
    cases = {
        "flipped": (lambda p: flip(p / "crm.sqlite"), "crm.sqlite: checksum differs"),
        "missing": (lambda p: (p / "influx" / shard).unlink(), f"influx/{shard}: missing"),
        "extra": (lambda p: (p / "influx" / "x.tar.gz").write_bytes(b"x"),
                  "influx/x.tar.gz: not in the manifest"),
        "nomanifest": (lambda p: (p / MANIFEST).unlink(), "no manifest.json"),
        "format": (lambda p: (p / MANIFEST).write_text('{"format": "other/9"}'),
                   "format 'other/9'"),
        "garbage": (lambda p: (p / MANIFEST).write_bytes(b"\xff{"), "not a readable manifest"),
    }  # fmt: skip
    for name, (change, why) in cases.items():
        with pytest.raises(BackupError, match=why.replace(".", r"\.")):
            restore(full_settings(influx, db), broken(name, change), target)
    assert not (tmp_path / "new.sqlite").exists()
    assert db not in str(influx_query(influx, "SHOW DATABASES"))
    # a schema revision this carpulse does not know
    doc = json.loads((good / MANIFEST).read_text())
    doc["components"]["crm"]["revision"] = "0999"
    future = broken("future", lambda p: (p / MANIFEST).write_text(json.dumps(doc)))
    with pytest.raises(BackupError, match="'0999' is unknown to this carpulse"):
        restore(full_settings(influx, db), future, target)
    # the real command: one clear line
    res = CliRunner().invoke(app, ["restore", str(tmp_path / "flipped"), "--db", target])
    assert res.exit_code != 0 and "checksum differs" in str(res.exception)
    # and the good one still restores
    assert restore(full_settings(influx, db), good, target)["crm"] == head_revision()


def test_backup_restore_postgresql_crm(postgres_url: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    base = postgres_url.rsplit("/", 1)[0]
    names = [f"bk_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    admin = st.make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    src, dst = (f"{base}/{n}" for n in names)
    store = st.CrmStore.from_url(src)
    migrate(store.engine)
    seed_demo(store, 15)
    store.engine.dispose()
    run = CliRunner().invoke
    res = run(app, ["backup", str(tmp_path / "bk"), "--no-influx", "--db", src, "--json"])
    assert res.exit_code == 0, res.output
    part = json.loads(res.stdout)["components"]["crm"]
    assert part["backend"] == "postgresql" and part["tool"].startswith("pg_dump (PostgreSQL)")
    res = run(app, ["restore", str(tmp_path / "bk"), "--no-influx", "--db", src])
    assert res.exit_code != 0 and "is not empty" in str(res.exception)
    sqlite_url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    res = run(app, ["restore", str(tmp_path / "bk"), "--no-influx", "--db", sqlite_url])
    assert res.exit_code != 0 and "is 'postgresql', the target is sqlite" in str(res.exception)
    res = run(app, ["restore", str(tmp_path / "bk"), "--no-influx", "--db", dst])
    assert res.exit_code == 0 and f"schema {head_revision()}" in res.output, res.output
    assert crm_rows(dst) == crm_rows(src) and len(crm_rows(dst)["vehicles"]) == 15
    # the restored database works with the commands (schema check passes, audit chain intact)
    res = run(app, ["crm", "audit", "verify", "--db", dst])
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"], res.output


def test_a_policy_dropped_behind_the_workers_back_is_made_again(influx: Stack) -> None:
    """A database made by someone else, or a policy dropped while the worker runs: the write
    that meets 'retention policy not found' makes the policies and goes through."""
    db = f"gone_{uuid.uuid4().hex[:8]}"
    influx_query(influx, f'CREATE DATABASE "{db}"', db=db)  # no policies of ours yet
    lines = lines_of_every_family("car-gone", 8)

    async def run() -> Any:
        sink = InfluxV1Sink(settings(influx, db, trips="2y"))
        sink.open_session()  # no start(): nothing created ahead of the writes
        try:
            first = await sink.write(lines)
            influx_query(influx, f'DROP RETENTION POLICY "trips" ON "{db}"', db=db)
            second = await sink.write(lines)
            return first, second, await v1_policies(sink.query, db)
        finally:
            await sink.close()

    first, second, policies = asyncio.run(run())
    assert (first.written, second.written) == (len(lines), len(lines))
    assert first.rejected == second.rejected == []
    assert policies["trips"]["seconds"] == 730 * DAY and policies["telemetry"]["default"]
    assert count(influx, db, '"trips"."trips"') == 3 * 3 and count(influx, db, "telemetry") == 8


def test_a_failed_backup_leaves_no_half_backup(influx: Stack, tmp_path: Path) -> None:
    db = f"half_{uuid.uuid4().hex[:8]}"
    write_influx(influx, db)
    missing = f"sqlite:///{tmp_path / 'missing.sqlite'}"
    with pytest.raises(BackupError, match=r"missing\.sqlite does not exist"):
        backup(full_settings(influx, db), tmp_path / "bk", missing)  # InfluxDB part done first
    assert not (tmp_path / "bk").exists() and not (tmp_path / "missing.sqlite").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackupError):
        backup(full_settings(influx, db), tmp_path / "empty", missing)
    assert list((tmp_path / "empty").iterdir()) == []
    assert backup(full_settings(influx, db), tmp_path / "empty", None)["components"].keys() == {
        "influx"}  # fmt: skip
