"""``carpulse backup DIR`` / ``carpulse restore DIR``: InfluxDB 1.x and the CRM in one folder.

Layout of a backup folder::

    manifest.json   what, when, versions, a SHA-256 of every file below
    influx/         ``influxd backup -portable -db <database>`` (InfluxDB 1.x, over its RPC port)
    crm.sqlite      SQLite: the online backup API (consistent while the CRM worker writes)
    crm.pgdump      PostgreSQL: ``pg_dump --format=custom`` (one snapshot, consistent too)

Restore checks the manifest first (format, every checksum, no file missing or unlisted, the CRM's
backend and schema revision known to this carpulse) and goes only into an empty target: an
InfluxDB without that database, a CRM database without tables. Anything else is refused with
what was wrong; nothing is half-restored because of a bad backup.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Final

from core.config import CarpulseSettings, InfluxSettings
from core.errors import BackupError

FORMAT: Final = "carpulse-backup/1"
MANIFEST: Final = "manifest.json"
INFLUX_DIR: Final = "influx"
TOOL_TIMEOUT_S: Final = 3600.0


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("carpulse")
    except PackageNotFoundError:
        return "0+unknown"


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=env, check=False
        )
    except FileNotFoundError as err:
        raise BackupError(f"{what}: {argv[0]} not found ({err.strerror})") from err
    except subprocess.TimeoutExpired as err:
        raise BackupError(f"{what}: {argv[0]} did not finish in {TOOL_TIMEOUT_S:.0f} s") from err
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise BackupError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout + proc.stderr


# -- InfluxDB 1.x ---------------------------------------------------------------------------------


def _influx_http(s: InfluxSettings, q: str, method: str = "GET") -> dict[str, Any]:
    params = {"q": q}
    if s.username and s.password:
        params |= {"u": s.username, "p": s.password.get_secret_value()}
    url = f"{s.url.rstrip('/')}/query?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=s.timeout_s) as resp:
            return json.load(resp)  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise BackupError(f"InfluxDB at {s.url}: {err}") from err


def influx_databases(s: InfluxSettings) -> list[str]:
    doc = _influx_http(s, "SHOW DATABASES")
    result = (doc.get("results") or [{}])[0]
    if "error" in result:
        raise BackupError(f"InfluxDB at {s.url}: {result['error']}")
    return [str(row[0]) for series in result.get("series", []) for row in series["values"]]


def influx_version(s: InfluxSettings) -> str:
    try:
        with urllib.request.urlopen(f"{s.url.rstrip('/')}/ping", timeout=s.timeout_s) as resp:
            return str(resp.headers.get("X-Influxdb-Version", "unknown"))
    except (urllib.error.URLError, OSError) as err:
        raise BackupError(f"InfluxDB at {s.url}: {err}") from err


def _v1_only(s: InfluxSettings) -> None:
    if s.api != "v1":
        raise BackupError(
            "[influx] api = v2: back up InfluxDB 2.x/3.x with its own CLI "
            "(`influx backup DIR` / `influx restore DIR`, see README 'Backup and restore'); "
            "use --no-influx here for the CRM only"
        )


def backup_influx(s: InfluxSettings, influxd: str, dest: Path) -> dict[str, Any]:
    _v1_only(s)
    if s.database not in influx_databases(s):
        raise BackupError(f"InfluxDB at {s.url} has no database {s.database!r}")
    version = influx_version(s)
    out = dest / INFLUX_DIR
    _run(
        [influxd, "backup", "-portable", "-host", s.backup_address, "-db", s.database, str(out)],
        f"influxd backup from {s.backup_address}",
    )
    return {"api": "v1", "database": s.database, "server_version": version,
            "tool": "influxd backup -portable"}  # fmt: skip


def check_influx_target(s: InfluxSettings, database: str | None) -> str:
    """The database to restore into, once it is known not to exist."""
    _v1_only(s)
    target = database or s.database
    if target in influx_databases(s):
        raise BackupError(
            f"InfluxDB at {s.url} already has a database {target!r}: restore goes into an "
            f'empty target (DROP DATABASE "{target}" first, or --influx-database NEW)'
        )
    return target


def restore_influx(
    s: InfluxSettings, influxd: str, src: Path, part: dict[str, Any], target: str
) -> str:
    argv = [influxd, "restore", "-portable", "-host", s.backup_address, "-db", part["database"]]
    if target != part["database"]:
        argv += ["-newdb", target]
    try:
        _run([*argv, str(src / INFLUX_DIR)], f"influxd restore to {s.backup_address}")
    except BackupError as err:
        # influxd 1.6 restores a database without shards (nothing written yet) and then reports
        # "DB metadata not changed"; the database and its policies are there all the same
        shards = list((src / INFLUX_DIR).glob("*.tar.gz"))
        if shards or "metadata not changed" not in str(err) or target not in influx_databases(s):
            raise
    return target


# -- the CRM -------------------------------------------------------------------------------------


def _backend(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        name = make_url(url).get_backend_name()
    except Exception as err:  # sqlalchemy.exc.ArgumentError
        raise BackupError(f"CRM database URL is not valid: {err}") from err
    if name not in ("sqlite", "postgresql"):
        raise BackupError(f"CRM database backend {name!r}: backups know sqlite and postgresql")
    return name


def _sqlite_path(url: str) -> Path:
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    if not db or db == ":memory:":
        raise BackupError(f"CRM database {url}: an in-memory database has nothing to back up")
    return Path(db)


def _pg_env(url: str) -> dict[str, str]:
    """libpq's environment for ``url`` (the password never on a command line)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = dict(os.environ)
    for key, value in (("PGHOST", u.host), ("PGPORT", u.port), ("PGUSER", u.username),
                       ("PGPASSWORD", u.password), ("PGDATABASE", u.database)):  # fmt: skip
        if value is not None:
            env[key] = str(value)
    return env


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    import glob

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise BackupError(f"{name} not found (apt-get install postgresql-client)")
    return candidates[-1]


def _revision(url: str) -> str | None:
    from crm.migrate import current_revision
    from crm.store import make_engine

    engine = make_engine(url)
    try:
        return current_revision(engine)
    except Exception as err:
        raise BackupError(f"CRM database: {str(err).splitlines()[0][:300]}") from err
    finally:
        engine.dispose()


def _tables(url: str) -> list[str]:
    from sqlalchemy import inspect

    from crm.store import make_engine

    engine = make_engine(url)
    try:
        return sorted(inspect(engine).get_table_names())
    except Exception as err:
        raise BackupError(f"CRM database: {str(err).splitlines()[0][:300]}") from err
    finally:
        engine.dispose()


def backup_crm(url: str, dest: Path) -> dict[str, Any]:
    backend = _backend(url)
    if backend == "sqlite" and not _sqlite_path(url).is_file():
        raise BackupError(f"CRM database {_sqlite_path(url)} does not exist")
    revision = _revision(url)
    if revision is None:
        raise BackupError("the CRM database has no schema: nothing to back up")
    if backend == "sqlite":
        path = _sqlite_path(url)
        with (
            contextlib.closing(sqlite3.connect(path)) as src,
            contextlib.closing(sqlite3.connect(dest / "crm.sqlite")) as dst,
        ):
            src.backup(dst)  # page by page, a consistent snapshot while others write
            # a plain file: reading it back (restore) then leaves no -wal/-shm beside it
            dst.execute("PRAGMA journal_mode=DELETE")
        return {"backend": "sqlite", "revision": revision, "file": "crm.sqlite",
                "sqlite_version": sqlite3.sqlite_version}  # fmt: skip
    env = _pg_env(url)
    dump = _pg_tool("pg_dump")
    _run([dump, "--format=custom", "--file", str(dest / "crm.pgdump")], "pg_dump", env)
    tool = _run([dump, "--version"], "pg_dump --version").strip()
    return {"backend": "postgresql", "revision": revision, "file": "crm.pgdump", "tool": tool}


def check_crm_target(url: str, part: dict[str, Any]) -> None:
    """Refuse a backup of another backend or schema, and a target that is not empty."""
    from crm.migrate import alembic_config

    backend = _backend(url)
    if part.get("backend") != backend:
        raise BackupError(
            f"the backup's CRM is {part.get('backend')!r}, the target is {backend}: restore "
            "into the same kind of database (move between them with `carpulse crm import`)"
        )
    from alembic.script import ScriptDirectory

    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if part.get("revision") not in known:
        raise BackupError(
            f"the backup's CRM schema {part.get('revision')!r} is unknown to this carpulse "
            f"({_version()}): restore with the carpulse that made it"
        )
    if backend == "sqlite":
        path = _sqlite_path(url)
        if path.exists() and _tables(url):
            raise BackupError(
                f"CRM database {path} is not empty: restore goes into an empty target "
                "(move the old file away first)"
            )
    elif tables := _tables(url):
        raise BackupError(
            f"CRM database is not empty ({len(tables)} tables, e.g. {tables[0]}): restore goes "
            "into an empty database (createdb a new one)"
        )


def restore_crm(url: str, src: Path, part: dict[str, Any]) -> str:
    """Restore into the (checked) empty database; returns the revision restored."""
    file = src / str(part["file"])
    if _backend(url) == "sqlite":
        path = _sqlite_path(url)
        with contextlib.closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as bk:
            if (check := bk.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
                raise BackupError(f"{file}: SQLite integrity check: {check}")
            with contextlib.closing(sqlite3.connect(path)) as dst:
                bk.backup(dst)
        return str(part["revision"])
    _run(
        [_pg_tool("pg_restore"), "--exit-on-error", "--no-owner", "--no-privileges",
         "--single-transaction", "--dbname", _pg_env(url).get("PGDATABASE", ""), str(file)],
        "pg_restore", _pg_env(url),
    )  # fmt: skip
    return str(part["revision"])


# -- the manifest ----------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def read_manifest(src: Path) -> dict[str, Any]:
    """The manifest of a backup folder, once every file matches it; ``BackupError`` otherwise."""
    path = src / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise BackupError(f"{src} is not a carpulse backup: no {MANIFEST}") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BackupError(f"{path}: not a readable manifest ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise BackupError(f"{path}: format {got!r}, this carpulse reads {FORMAT!r}")
    want = doc.get("files")
    if not isinstance(want, dict) or not isinstance(doc.get("components"), dict):
        raise BackupError(f"{path}: no files/components")
    have = _files(src)
    problems = [f"{name}: missing" for name in sorted(set(want) - set(have))]
    problems += [f"{name}: not in the manifest" for name in sorted(set(have) - set(want))]
    problems += [
        f"{name}: checksum differs (corrupt or changed)"
        for name in sorted(set(want) & set(have))
        if want[name] != have[name]
    ]
    if problems:
        raise BackupError(f"backup {src} does not match its manifest: " + "; ".join(problems[:10]))
    return doc


def backup(
    settings: CarpulseSettings, dest: Path, crm_url: str | None, *, influx: bool = True
) -> dict[str, Any]:
    """Back up InfluxDB (unless ``influx`` is off) and the CRM (unless ``crm_url`` is None)."""
    if not (influx or crm_url):
        raise BackupError("nothing to back up (both --no-influx and --no-crm)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty folder: back up into a new one")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    components: dict[str, Any] = {}
    try:
        if influx:
            components["influx"] = backup_influx(settings.influx, settings.stack.influxd_bin, dest)
        if crm_url:
            components["crm"] = backup_crm(crm_url, dest)
    except BaseException:  # leave no half backup behind: the same command can simply be rerun
        for child in dest.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        if created:
            dest.rmdir()
        raise
    doc = {
        "format": FORMAT,
        "created": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "carpulse": _version(),
        "host": socket.gethostname(),
        "components": components,
        "files": _files(dest),
    }
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(dest / MANIFEST)  # the manifest last: a folder without one is no backup
    return doc


def restore(
    settings: CarpulseSettings,
    src: Path,
    crm_url: str | None,
    *,
    influx: bool = True,
    influx_database: str | None = None,
) -> dict[str, Any]:
    """Restore what the backup holds (and was asked for) into empty targets."""
    doc = read_manifest(src)
    parts = doc["components"]
    done: dict[str, Any] = {}
    if influx and "influx" not in parts and crm_url is None:
        raise BackupError(f"backup {src} holds no InfluxDB backup")
    if crm_url is not None and "crm" not in parts:
        raise BackupError(f"backup {src} holds no CRM backup (use --no-crm)")
    # every check before the first write: a CRM that cannot go in stops the InfluxDB part too
    influx = influx and "influx" in parts
    if crm_url is not None:
        check_crm_target(crm_url, parts["crm"])
    if influx:
        target = check_influx_target(settings.influx, influx_database)
        done["influx"] = restore_influx(
            settings.influx, settings.stack.influxd_bin, src, parts["influx"], target
        )
    if crm_url is not None:
        done["crm"] = restore_crm(crm_url, src, parts["crm"])
    return done
