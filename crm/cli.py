"""``carpulse crm ...`` and ``carpulse report ...``: dry run, worker, migrations, yearly report.

Only typer is imported at module level; SQLAlchemy, Faust and matplotlib load inside commands, so
``carpulse edge ...`` on a Raspberry Pi never needs them.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.config import CarpulseSettings, KafkaSettings, SmtpSettings
from core.errors import CarpulseError, ConfigError
from crm.admin_cli import import_cmd, templates_app
from crm.cli_store import DbOpt, db_url, open_store, settings_db_url
from crm.loyalty_cli import register as register_loyalty
from crm.outbox_cli import outbox_app

if TYPE_CHECKING:
    from core.crm_events import CrmEvent

crm_app = typer.Typer(
    help="CRM: rules (dry run), the rules worker, coupons issued, database migrations."
)
report_app = typer.Typer(help="Reports for owners.")
audit_app = typer.Typer(help="The audit log: verify its hash chain.")
crm_app.add_typer(audit_app, name="audit")
crm_app.add_typer(templates_app, name="templates")
crm_app.add_typer(outbox_app, name="outbox")
crm_app.command("import")(import_cmd)
register_loyalty(crm_app)  # segments, points, close-service, jobs run (crm.loyalty_cli)


def read_events(path: Path) -> tuple[list[CrmEvent], list[str]]:
    """CRM events from a JSON-lines file: each line a ``CrmEvent`` document or a topic record
    ``{"topic": ..., "value": {...}}`` / ``{"topic": ..., "value_b64": "..."}``. Bad lines are
    reported as ``file:line: why`` and skipped."""
    from core.crm_events import CrmEvent
    from crm.normalize import from_record

    events: list[CrmEvent] = []
    bad: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read events: {err}") from err
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object")
            if "topic" in doc:
                if "value_b64" in doc:
                    raw = base64.b64decode(doc["value_b64"])
                else:
                    raw = json.dumps(doc["value"]).encode()
                events += from_record(str(doc["topic"]), raw)
            else:
                events.append(CrmEvent.from_json(doc))
        except (ValueError, KeyError, TypeError, CarpulseError) as err:
            bad.append(f"{path}:{no}: {type(err).__name__}: {err}")
    return events, bad


@crm_app.command("dry-run")
def dry_run_cmd(
    rules: Annotated[
        list[Path], typer.Option("--rules", help="Rules file or directory (repeatable).")
    ],
    events: Annotated[Path, typer.Option("--events", help="JSON-lines file of past events.")],
    db: DbOpt = None,
    show: Annotated[int, typer.Option(help="How many effects to list (0 = none).")] = 50,
) -> None:
    """Replay past events through rules and report what they would have issued; issues nothing."""
    import time

    from crm.engine import RuleEngine
    from crm.jobs import dry_run
    from crm.rules import load_rules

    loaded = load_rules(rules)  # RuleError (file:line: field) is printed by carpulse.cli.main
    evs, bad = read_events(events)
    store = open_store(db)
    engine = RuleEngine(loaded, webhook_url="https://dry-run.invalid/hook")
    with store.tx() as s:
        problems = engine.check(s)
    t0 = time.perf_counter()
    report = dry_run(store, engine, evs)
    elapsed = time.perf_counter() - t0
    report["effects"] = report["effects"][:show]
    report |= {
        "rules": [r.id for r in loaded], "bad_lines": len(bad), "bad_examples": bad[:20],
        "problems": problems, "seconds": round(elapsed, 3),
        "events_per_s": round(len(evs) / elapsed, 1) if elapsed > 0 else None,
    }  # fmt: skip
    typer.echo(json.dumps(report, ensure_ascii=False, indent=2, default=str))


@crm_app.command("migrate")
def migrate_cmd(
    db: DbOpt = None,
    app_role: Annotated[
        str | None,
        typer.Option(help="PostgreSQL: then grant this application role (see `crm app-role`)."),
    ] = None,
) -> None:
    """Bring the CRM database to the latest schema (idempotent; under a lock, so two runs at
    once are safe). The only command that changes the schema: the others refuse an old one."""
    from crm.migrate import migrate
    from crm.store import CrmStore

    url = db_url(db)
    store = CrmStore.from_url(url)
    try:
        before, after = migrate(store.engine)
        if app_role:
            from crm.audit import grant_app_role

            grant_app_role(store.engine, app_role, os.environ.get("CARPULSE_CRM_APP_PASSWORD"))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    finally:
        store.engine.dispose()
    done = f"{before or 'empty'} -> {after}" if before != after else f"already at {after}"
    typer.echo(
        f"migrated {url.split('@')[-1]} ({done})" + (f", granted {app_role}" if app_role else "")
    )


@audit_app.command("verify")
def audit_verify_cmd(
    db: DbOpt = None,
    expect_head: Annotated[
        str | None,
        typer.Option(
            help="The head hash printed by an earlier verify: catches rows cut off the end."
        ),
    ] = None,
) -> None:
    """Walk the audit log's hash chain; list edited rows and gaps (exit 1 if any)."""
    from crm.audit import verify_chain

    store = open_store(db)
    try:
        with store.tx() as s:
            report = verify_chain(s, expect_head)
    finally:
        store.engine.dispose()
    doc = {"ok": report.ok, "rows": report.rows, "head": report.head, "problems": report.problems}
    typer.echo(json.dumps(doc, indent=2))
    if not report.ok:
        raise typer.Exit(1)


@crm_app.command("app-role")
def app_role_cmd(
    db: Annotated[str, typer.Option("--db", help="PostgreSQL URL of the tables' owner.")],
    role: Annotated[
        str, typer.Option(help="The role the applications connect as.")
    ] = "carpulse_app",
) -> None:
    """PostgreSQL: create or update the applications' role (password from
    $CARPULSE_CRM_APP_PASSWORD): read-write on the CRM but SELECT and INSERT only on the audit log
    and the coupon share chain. Run as the owner after every migrate."""
    from crm.audit import grant_app_role

    store = open_store(db)
    try:
        done = grant_app_role(store.engine, role, os.environ.get("CARPULSE_CRM_APP_PASSWORD"))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    finally:
        store.engine.dispose()
    typer.echo(json.dumps({"role": role, "statements": done}, indent=2))


@dataclass
class WorkerSetup:
    """What ``carpulse crm worker`` runs with, resolved from the settings and its flags."""

    db_url: str
    app_id: str
    kafka: KafkaSettings
    interval_s: float
    session_timeout_s: float
    webhook_url: str | None
    webhook_secret: str | None
    smtp: SmtpSettings | None  # None: no e-mail channel


def worker_setup(
    settings: CarpulseSettings,
    *,
    db: str | None = None,
    interval: float | None = None,
    webhook_url: str | None = None,
    smtp_host: str | None = None,
    smtp_port: int | None = None,
    sender: str | None = None,
) -> WorkerSetup:
    """``[crm]``, ``[smtp]``, ``[webhooks]``, ``[kafka]`` and ``[stream]`` with the flags given
    (not None) on top; a webhook without its secret is a configuration error."""
    url = webhook_url or settings.webhooks.url or None
    secret = settings.webhooks.resolved_secret() if url else None
    if url and not secret:
        raise ConfigError(
            f"webhook {url} needs a signing secret: [webhooks] secret_file or "
            "$CARPULSE_WEBHOOKS__SECRET"
        )
    smtp: SmtpSettings | None = settings.smtp.model_copy(
        update={k: v for k, v in (("host", smtp_host), ("port", smtp_port), ("sender", sender))
                if v is not None}
    )  # fmt: skip
    if smtp is not None and not smtp.host:
        smtp = None
    return WorkerSetup(
        db_url=db or settings_db_url(settings),
        app_id=settings.stream.crm_app_id,
        kafka=settings.kafka,
        interval_s=interval if interval is not None else settings.crm.jobs_interval_s,
        session_timeout_s=settings.stream.session_timeout_s,
        webhook_url=url,
        webhook_secret=secret,
        smtp=smtp,
    )


@crm_app.command("worker")
def worker_cmd(
    rules: Annotated[
        list[Path] | None, typer.Option("--rules", help="Rules (default: shipped).")
    ] = None,
    db: DbOpt = None,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between periodic jobs (default \\[crm]).")
    ] = None,
    webhook_url: Annotated[
        str | None, typer.Option(help="Dealer integration webhook (default \\[webhooks] url).")
    ] = None,
    smtp_host: Annotated[
        str | None, typer.Option(help="SMTP server for e-mail (default \\[smtp] host).")
    ] = None,
    smtp_port: Annotated[int | None, typer.Option(help="SMTP port (default \\[smtp]).")] = None,
    sender: Annotated[
        str | None, typer.Option(help="E-mail From address (default \\[smtp] sender).")
    ] = None,
    loglevel: str = "warn",
) -> None:
    """Run the CRM rules as Faust agents on the stream's topics, with delivery and purge jobs.

    Everything comes from the settings (--config): the crm, smtp, webhooks and kafka sections;
    the flags override single values. The webhook secret comes from $CARPULSE_WEBHOOKS__SECRET
    or the webhooks section's secret_file, never from a flag.
    """
    from core.config import cli_settings
    from core.logs import service_logging
    from crm.agents import build_crm_app
    from crm.delivery import Dispatcher, SmtpTransport, Transport, WebhookTransport
    from crm.engine import RuleEngine
    from crm.location_sink import InfluxLocations
    from crm.rules import load_rules, shipped_rules
    from stream.app import faust_worker
    from stream.registry import load_registry

    settings = cli_settings()
    service_logging("crm", settings.log.format)
    setup = worker_setup(
        settings, db=db, interval=interval, webhook_url=webhook_url,
        smtp_host=smtp_host, smtp_port=smtp_port, sender=sender,
    )  # fmt: skip
    store = open_store(setup.db_url)
    if settings.crm.loyalty_file is not None:  # points, tiers and segments of this dealer
        from crm.loyalty import LoyaltyConfig, use_config

        use_config(LoyaltyConfig.load(settings.crm.loyalty_file))
    engine = RuleEngine(
        load_rules(rules) if rules else shipped_rules(), webhook_url=setup.webhook_url
    )
    with store.tx() as s:
        if problems := engine.check(s):
            raise ConfigError(
                "rules need coupon templates the CRM lacks (add them with "
                "`carpulse crm templates add`):\n  " + "\n  ".join(problems)
            )
    transports: dict[str, Transport] = {}
    if setup.webhook_url and setup.webhook_secret:
        transports["webhook"] = WebhookTransport(setup.webhook_secret.encode())
    if setup.smtp is not None:
        m = setup.smtp
        transports["email"] = SmtpTransport(
            m.host, m.port, sender=m.sender, starttls=m.starttls, username=m.username,
            password=m.resolved_password(), timeout_s=m.timeout_s,
        )  # fmt: skip
    app = build_crm_app(
        setup.app_id, setup.kafka,
        store, engine, Dispatcher(store, transports), setup.interval_s,
        setup.session_timeout_s,
        location_sink=InfluxLocations(settings.influx, settings.stream.measurement),
        gates=load_registry(settings.stream.registry, gates=settings.stream.gate_devices).gates,
        datadir=settings.stream.faust_datadir(setup.app_id, create=True),
        web_port=settings.metrics.crm_port, web_host=settings.metrics.host,
        faust_sensor=settings.metrics.faust_sensor,
        fetch_max_wait_ms=settings.stream.fetch_max_wait_ms,
    )  # fmt: skip
    faust_worker(app, loglevel).execute_from_commandline()


@crm_app.command("coupons")
def coupons_cmd(
    db: DbOpt = None,
    vin: Annotated[str | None, typer.Option("--vin", help="Only this vehicle's coupons.")] = None,
    template: Annotated[
        str | None, typer.Option(help="Only this template (e.g. maintenance).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Newest first, at most this many.")] = 50,
) -> None:
    """Coupons issued, newest first, one JSON object a line (the rule that issued each is in
    its effect key: ``rule|subject|period``)."""
    from sqlalchemy import select

    from crm.schema import Coupon

    query = select(Coupon).order_by(Coupon.issued_at.desc()).limit(limit)
    if vin:
        query = query.where(Coupon.vin == vin)
    if template:
        query = query.where(Coupon.template_code == template)
    store = open_store(db)
    try:
        with store.tx() as s:
            for c in s.scalars(query):
                doc = {"id": c.id, "vin": c.vin, "template": c.template_code, "holder": c.holder_id,
                       "state": c.state, "issued_at": c.issued_at.isoformat(timespec="seconds"),
                       "valid_until": f"{c.valid_until:%Y-%m-%d}", "effect": c.effect_key}  # fmt: skip
                typer.echo(json.dumps(doc, ensure_ascii=False))
    finally:
        store.engine.dispose()


@crm_app.command("erase")
def erase_cmd(
    customer: Annotated[str, typer.Argument(help="The customer's id.")],
    ticket: Annotated[str, typer.Option("--ticket", help="The customer's request (audited).")],
    actor: Annotated[str, typer.Option(help="Who erases (audited).")] = "dpo",
    db: DbOpt = None,
) -> None:
    """Erase a customer: the CRM's personal data and every position stored in InfluxDB for
    the periods they owned a vehicle (``crm.location_sync.erase_customer``). Run again if
    InfluxDB was unreachable: the CRM part is then already done."""
    from core.config import cli_settings
    from crm.location_sink import InfluxLocations
    from crm.location_sync import erase_customer

    settings = cli_settings()
    sink = InfluxLocations(settings.influx, settings.stream.measurement)
    counts = erase_customer(open_store(db), sink, customer, actor, ticket)
    typer.echo(json.dumps(counts))


@crm_app.command("privacy-sync")
def privacy_sync_cmd(db: DbOpt = None) -> None:
    """Publish every vehicle's location policy to ``carpulse.privacy`` once (the CRM worker
    does this every two seconds; this is for a restore or a CRM without its worker)."""
    from core.config import cli_settings
    from crm.location_sync import publish_policies

    sent = publish_policies(open_store(db), cli_settings().kafka.client_options("crm"))
    allowed = sum(p.location for p in sent)
    typer.echo(json.dumps({"vehicles": len(sent), "location_allowed": allowed}))


@report_app.command("yearly")
def yearly_cmd(
    vin: Annotated[str, typer.Option("--vin", help="Vehicle identification number.")],
    year: Annotated[int, typer.Option("--year", help="Calendar year (UTC).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (index.html, PNGs, JSON).")],
    db: DbOpt = None,
    customer: Annotated[
        str | None, typer.Option(help="Report for this owner (default: the owner at year end).")
    ] = None,
) -> None:
    """The owner's year in driving: distance, trips, places (with consent), score, fuel, services."""
    from core.config import cli_settings
    from crm.report import InfluxReader, yearly_report

    settings = cli_settings()
    ix = settings.influx
    if ix.api != "v1":
        raise ConfigError("the yearly report reads InfluxDB 1.x ([influx] api = 'v1')")
    reader = InfluxReader(
        ix.url, ix.database, settings.stream.measurement, ix.username,
        ix.password.get_secret_value() if ix.password else None,
    )  # fmt: skip
    store = open_store(db)
    with store.tx() as s:
        doc = yearly_report(s, reader, vin, year, out, customer_id=customer, actor="cli")
    summary: dict[str, Any] = {
        k: doc[k] for k in ("vin", "year", "rows", "distance_km", "trips", "score")
    }
    typer.echo(json.dumps(summary | {"out": str(out / "index.html")}, ensure_ascii=False))


@crm_app.command("demo")
def demo_cmd(
    db: DbOpt = None,
    vehicles: Annotated[int, typer.Option(help="Simulated vehicles.")] = 40,
    days: Annotated[int, typer.Option(help="Days of simulated driving.")] = 45,
) -> None:
    """Coupons from simulated maintenance predictions: seed a dealer, run the shipped rules over
    a service-due prediction per car per day, replay the log, and show what was issued once."""
    from collections import Counter

    from sqlalchemy import select

    from crm.demo import seed_demo, simulated_predictions
    from crm.engine import RuleEngine
    from crm.jobs import run_events
    from crm.migrate import migrate
    from crm.rules import shipped_rules
    from crm.schema import Coupon, Member
    from crm.store import CrmStore
    from crm.tables import OutboxMessage

    store = CrmStore.from_url(db_url(db))
    migrate(store.engine)  # a demo is one command, like `carpulse demo`
    vins = seed_demo(store, vehicles)
    events = simulated_predictions(vins, days)
    engine = RuleEngine(shipped_rules(), webhook_url="https://dealer.example/hooks/crm")
    first = run_events(store, engine, events)
    replay = run_events(store, engine, events)
    with store.tx() as s:
        rows = s.scalars(
            select(Coupon).where(Coupon.vin.in_(vins)).order_by(Coupon.issued_at)
        ).all()
        coupons = [
            {"vin": c.vin, "template": c.template_code, "valid_until": f"{c.valid_until:%Y-%m-%d}",
             "state": c.state} for c in rows
        ]  # fmt: skip
        queued = len(s.scalars(select(OutboxMessage.id)).all())
        tiers = Counter(s.scalars(select(Member.tier)))  # from the seeded service histories
    doc = {
        "events": len(events), "fired": first["fired"], "coupons": len(coupons),
        "messages_queued": queued, "replay_fired": replay["fired"],
        "skipped": {k: v for k, v in first.items() if k not in ("events", "fired", "parked")},
        "examples": coupons[:10], "members_by_tier": dict(sorted(tiers.items())),
    }  # fmt: skip
    typer.echo(json.dumps(doc, ensure_ascii=False, indent=2))
