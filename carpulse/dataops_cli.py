"""Data operations: ``carpulse influx retention apply|show``, ``carpulse backup DIR`` and
``carpulse restore DIR``.

Only typer is imported at module level; aiohttp, influxdb-client and SQLAlchemy load inside the
commands.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from core.errors import ConfigError, SinkError

influx_app = typer.Typer(help="InfluxDB: retention per measurement family.")
retention_app = typer.Typer(
    help="Retention policies (1.x) or buckets (2.x) per family, as \\[influx.retention] says."
)
influx_app.add_typer(retention_app, name="retention")

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", help="CRM database URL (default \\[crm] url or url_file, else the stack's SQLite)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "inf"
    days, rest = divmod(seconds, 86_400)
    return f"{days}d" if not rest else f"{seconds // 3600}h"


def _v2_token(s: Any) -> str:
    if s.token is not None:
        return str(s.token.get_secret_value())
    if s.token_file is not None:
        try:
            return str(s.token_file.read_text().strip())
        except OSError as err:
            raise ConfigError(f"influx.token_file {s.token_file}: {err.strerror}") from err
    return ""


async def _v1(fn: str) -> Any:
    from core.config import cli_settings
    from stream.retention import v1_policies
    from stream.sinks.influx import InfluxV1Sink

    sink = InfluxV1Sink(cli_settings().influx)
    sink.open_session()
    try:
        done = await sink.apply_retention() if fn == "apply" else []
        return done, await v1_policies(sink.query, sink.s.database)
    finally:
        await sink.close()


def _rows(have: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from core.config import RETENTION_FAMILIES, cli_settings
    from stream.retention import managed, v1_policy

    s = cli_settings().influx
    rows = []
    for family in RETENTION_FAMILIES:
        rp = v1_policy(s, family) or next((n for n, p in have.items() if p["default"]), "")
        cur = have.get(rp)
        rows.append({
            "family": family, "policy": rp, "exists": cur is not None,
            "duration": _duration(cur["seconds"]) if cur else None,
            "default": bool(cur and cur["default"]),
            "configured": _duration(s.retention.seconds(family)) if managed(s) else None,
        })  # fmt: skip
    return rows


def _print(rows: list[dict[str, Any]], as_json: bool, done: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps({"changed": done, "families": rows}, indent=2))
        return
    for stmt in done:
        typer.echo(stmt)
    for r in rows:
        where = r.get("policy") or r.get("bucket")
        typer.echo(
            f"{r['family']:<10} {where:<24} {r['duration'] or 'missing':<10} "
            f"configured {r['configured'] or 'unmanaged'}"
            + (" (default)" if r.get("default") else "")
        )


def _retention(fn: str, as_json: bool) -> None:
    from core.config import cli_settings

    s = cli_settings().influx
    try:
        if s.api == "v1":
            done, have = asyncio.run(_v1(fn))
            rows = _rows(have)
        else:
            from stream.retention import v2_apply, v2_show

            token = _v2_token(s)
            done = v2_apply(s, token) if fn == "apply" else []
            rows = [
                r | {"duration": _duration(r["seconds"]) if r["exists"] else None,
                     "configured": _duration(r["configured"])}
                for r in v2_show(s, token)
            ]  # fmt: skip
    except SinkError as err:
        raise ConfigError(str(err)) from err
    _print(rows, as_json, done)
    if fn == "apply" and any(not r["exists"] for r in rows):
        raise typer.Exit(1)


@retention_app.command("apply")
def retention_apply(as_json: JsonOpt = False) -> None:
    """Create the database and the per-family policies/buckets, or alter their durations to the
    configured ones (idempotent; the stream worker does the same at start)."""
    _retention("apply", as_json)


@retention_app.command("show")
def retention_show(as_json: JsonOpt = False) -> None:
    """Each family's policy (1.x) or bucket (2.x): its duration on the server and in the config."""
    _retention("show", as_json)


def _crm_url(db: str | None, crm: bool) -> str | None:
    if not crm:
        return None
    from crm.cli_store import db_url as _db_url

    return _db_url(db)


def backup_cmd(
    folder: Annotated[Path, typer.Argument(help="A new (or empty) folder for the backup.")],
    db: DbOpt = None,
    influx: Annotated[bool, typer.Option(help="Back up InfluxDB 1.x ([influx] database).")] = True,
    crm: Annotated[bool, typer.Option(help="Back up the CRM database.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Back up InfluxDB 1.x (influxd backup -portable over [influx] backup_address) and the CRM
    (SQLite online backup or pg_dump) into FOLDER, with a manifest of versions and checksums."""
    from carpulse.backup import backup
    from core.config import cli_settings

    doc = backup(cli_settings(), folder, _crm_url(db, crm), influx=influx)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for name, part in doc["components"].items():
        what = part.get("database") or part.get("backend")
        typer.echo(f"{name}: {what} ({part.get('server_version') or part.get('revision')})")
    typer.echo(f"{len(doc['files'])} files, manifest {folder / 'manifest.json'}")


def restore_cmd(
    folder: Annotated[Path, typer.Argument(help="A folder made by `carpulse backup`.")],
    db: DbOpt = None,
    influx: Annotated[bool, typer.Option(help="Restore InfluxDB.")] = True,
    crm: Annotated[bool, typer.Option(help="Restore the CRM database.")] = True,
    influx_database: Annotated[
        str | None,
        typer.Option(help="Restore into this InfluxDB database (default [influx] database)."),
    ] = None,
) -> None:
    """Restore a backup into empty targets (no such InfluxDB database, a CRM without tables),
    after checking every file against the manifest. Refuses anything else."""
    from carpulse.backup import restore
    from core.config import cli_settings
    from crm.migrate import head_revision

    done = restore(
        cli_settings(), folder, _crm_url(db, crm), influx=influx, influx_database=influx_database
    )
    if "influx" in done:
        typer.echo(f"influx: restored into database {done['influx']}")
    if "crm" in done:
        behind = done["crm"] != head_revision()
        typer.echo(
            f"crm: restored (schema {done['crm']})"
            + ("; run `carpulse crm migrate` before starting the services" if behind else "")
        )
