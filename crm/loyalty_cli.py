"""``carpulse crm segments``, ``carpulse crm jobs run``, ``carpulse crm points`` and ``carpulse crm
close-service``: the loyalty side of the CRM (``crm.loyalty``, ``crm.lifecycle``) from the shell.

Only typer is imported at module level; SQLAlchemy loads inside the commands.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated

import typer

from core.errors import ConfigError, CrmError
from crm.cli_store import DbOpt, open_store

if TYPE_CHECKING:
    from crm.store import CrmStore

jobs_app = typer.Typer(help="The CRM's scheduled jobs (the CRM worker runs them on a timer).")

NowOpt = Annotated[
    str | None,
    typer.Option("--now", help="Evaluate at this ISO time with offset (default: now)."),
]


def _setup(db: str | None) -> CrmStore:
    """The store, with ``[crm] loyalty_file`` made this process's loyalty rules."""
    from core.config import cli_settings
    from crm import loyalty

    path = cli_settings().crm.loyalty_file
    loyalty.use_config(loyalty.LoyaltyConfig.load(path) if path else None)
    return open_store(db)


def _now(text: str | None) -> dt.datetime:
    if not text:
        return dt.datetime.now(dt.UTC)
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--now {text!r}: not an ISO time (2026-12-01T08:00:00+08:00)") from None
    if at.tzinfo is None:
        raise ConfigError(f"--now {text!r}: add a UTC offset (+08:00 or Z)")
    return at.astimezone(dt.UTC)


def segments_cmd(
    db: DbOpt = None,
    segment: Annotated[str | None, typer.Option(help="Only this segment (e.g. loyal).")] = None,
    inactive: Annotated[bool, typer.Option("--inactive", help="Only inactive customers.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    now: NowOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many customers (0 = all).")] = 0,
) -> None:
    """Recency/frequency/monetary scores and segment per customer (rules: crm/loyalty.yaml), a
    count per segment first; most recent visit first."""
    from collections import Counter

    from crm.lifecycle import rfm

    store = _setup(db)
    try:
        with store.tx() as s:
            rows = rfm(s, _now(now))
    finally:
        store.engine.dispose()
    counts = Counter(r.segment.id for r in rows)
    inactive_n = sum(r.inactive for r in rows)
    rows = [r for r in rows if (segment is None or r.segment.id == segment)
            and (not inactive or r.inactive)]  # fmt: skip
    if limit:
        rows = rows[:limit]
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r.to_json(), ensure_ascii=False))
        return
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    typer.echo(f"{sum(counts.values())} customers with visits: {summary}; inactive {inactive_n}")
    typer.echo(f"{'customer':32}  {'last visit':10}  {'days':>5}  R F M  {'segment':12} status")
    for r in rows:
        status = "inactive" if r.inactive else "active"
        typer.echo(f"{r.customer_id:32}  {r.last_visit}  {r.days_since:>5}  {r.r} {r.f} {r.m}  "
                   f"{r.segment.id:12} {status}")  # fmt: skip


@jobs_app.command("run")
def jobs_run_cmd(
    db: DbOpt = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these jobs (repeatable): expire, tiers, events, referrals, inactive."
        ),
    ] = None,
    now: NowOpt = None,
    rules: Annotated[
        list[str] | None, typer.Option("--rules", help="Rules (default: shipped).")
    ] = None,
) -> None:
    """Expire coupons, review tiers, send tier and expiry-reminder events, referral rewards and
    inactivity (win-back) events through the rules, once; safe to run again (prints counters)."""
    from pathlib import Path

    from core.config import cli_settings
    from crm.engine import RuleEngine
    from crm.lifecycle import JOBS, run_jobs
    from crm.rules import load_rules, shipped_rules

    store = _setup(db)
    try:
        engine = RuleEngine(
            load_rules([Path(r) for r in rules]) if rules else shipped_rules(),
            webhook_url=cli_settings().webhooks.url or None,
        )
        with store.tx() as s:
            if problems := engine.check(s):
                raise ConfigError(
                    "rules need coupon templates the CRM lacks (add them with "
                    "`carpulse crm templates add`):\n  " + "\n  ".join(problems)
                )
        totals = run_jobs(store, engine, _now(now), only or JOBS)
    finally:
        store.engine.dispose()
    typer.echo(json.dumps(dict(sorted(totals.items()))))


def points_cmd(
    customer: Annotated[str, typer.Argument(help="The customer's id.")],
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(help="The newest ledger entries shown.")] = 20,
) -> None:
    """A customer's balance, tier, the points in the tier window and the ledger's newest rows."""
    from sqlalchemy import select

    from crm import loyalty
    from crm import store as st
    from crm.schema import Member
    from crm.tables import PointsEntry

    store = _setup(db)
    try:
        with store.tx() as s:
            cid = st.resolve(s, customer)
            member = s.get(Member, cid)
            now = dt.datetime.now(dt.UTC)
            rows = s.scalars(
                select(PointsEntry)
                .where(PointsEntry.customer_id.in_(loyalty.aliases(s, cid)))
                .order_by(PointsEntry.id.desc())
                .limit(limit)
            ).all()
            cfg = loyalty.config()
            tier = member.tier if member else None
            doc = {
                "customer_id": cid, "member": member is not None,
                "tier": tier, "tier_zh": loyalty.tier_name(tier, "zh-CN"),
                "tier_en": loyalty.tier_name(tier, "en"),
                "tier_since": member.tier_since.isoformat() if member else None,
                "balance": loyalty.balance(s, cid),
                "window_points": loyalty.window_points(s, cid, now),
                "window_days": cfg.tiers.window_days,
                "ledger": [{"at": r.at.isoformat(), "source": r.source, "kind": r.kind,
                            "delta": r.delta, "amount": None if r.amount is None else str(r.amount),
                            "actor": r.actor} for r in rows],
            }  # fmt: skip
    except CrmError as err:
        raise ConfigError(str(err)) from None
    finally:
        store.engine.dispose()
    typer.echo(json.dumps(doc, ensure_ascii=False, indent=2))


def close_service_cmd(
    amount: Annotated[str, typer.Option(help="CNY, e.g. 1280 or 1,280.00.")],
    advisor: Annotated[str, typer.Option(help="Who closes the visit (audited).")],
    vin: Annotated[str | None, typer.Option(help="The vehicle (its owner earns).")] = None,
    customer: Annotated[
        str | None, typer.Option(help="The customer, for a visit without a known vehicle.")
    ] = None,
    odometer_km: Annotated[
        float | None, typer.Option(help="Odometer (default: the vehicle's last reading).")
    ] = None,
    work: Annotated[str, typer.Option(help="What was done.")] = "",
    db: DbOpt = None,
) -> None:
    """Close a visit with its amount, as the advisor page does: the service record, the points
    (rules: crm/loyalty.yaml), the tier. The same close again earns nothing more."""
    from core.errors import CrmError
    from crm.loyalty import close_service

    store = _setup(db)
    try:
        with store.tx() as s:
            done = close_service(s, amount=amount, advisor=advisor, vin=vin,
                                 customer_id=customer, odometer_km=odometer_km, work=work)  # fmt: skip
    except CrmError as err:
        raise ConfigError(f"close-service refused: {err}") from None
    finally:
        store.engine.dispose()
    doc = {"customer_id": done.customer_id, "vin": done.vin, "record": done.service_record_id,
           "amount": str(done.amount), "points": done.points, "written": done.written,
           "balance": done.balance, "tier": done.tier,
           "tier_change": list(done.tier_change) if done.tier_change else None}  # fmt: skip
    typer.echo(json.dumps(doc, ensure_ascii=False))


def register(crm_app: typer.Typer) -> None:
    """Add the commands to ``carpulse crm``."""
    crm_app.command("segments")(segments_cmd)
    crm_app.command("points")(points_cmd)
    crm_app.command("close-service")(close_service_cmd)
    crm_app.add_typer(jobs_app, name="jobs")
