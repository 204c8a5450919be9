"""The engine's jobs: CRM-side event sources (tier changes, expiring coupons), running a batch of
events one transaction each, retrying parked events, and the dry run (a rolled-back replay)."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.crm_events import CrmEvent
from crm import store as st
from crm.engine import RuleEngine
from crm.models import Coupon, CouponTemplate, TierChange, utcnow
from crm.tables import ParkedEvent

# ----- CRM-side event sources (scanned periodically; idempotent through the effect keys) --------
TIER_ORDER = [t.name for t in st.DEFAULT_TIERS]


def tier_events(s: Session, since: dt.datetime) -> list[CrmEvent]:
    rows = s.scalars(
        select(TierChange).where(TierChange.at >= since).order_by(TierChange.at, TierChange.id)
    )
    out = []
    for r in rows:
        old = TIER_ORDER.index(r.from_tier) if r.from_tier in TIER_ORDER else -1
        new = TIER_ORDER.index(r.to_tier) if r.to_tier in TIER_ORDER else -1
        direction = (
            "up" if new > old and r.from_tier is not None else "down" if new < old else "same"
        )
        out.append(
            CrmEvent(
                kind="tier_upgraded",
                ts=r.at,
                id=f"tier:{r.id}",
                customer_id=r.customer_id,
                data={
                    "from_tier": r.from_tier or "",
                    "to_tier": r.to_tier,
                    "direction": direction,
                    "change_id": str(r.id),
                },
                source="crm.tiers",
            )
        )
    return out


def expiring_coupon_events(
    s: Session, now: dt.datetime, within: dt.timedelta = dt.timedelta(days=7)
) -> list[CrmEvent]:
    rows = s.execute(
        select(Coupon, CouponTemplate)
        .join(CouponTemplate, CouponTemplate.code == Coupon.template_code)
        .where(
            Coupon.state.in_(("issued", "shared")),
            Coupon.valid_until >= now,
            Coupon.valid_until <= now + within,
        )
    ).all()
    return [
        CrmEvent(
            kind="coupon_expiring",
            ts=now,
            id=f"coupon:{c.id}",
            customer_id=c.holder_id,
            data={
                "coupon_id": c.id,
                "days_left": math.ceil((c.valid_until - now).total_seconds() / 86_400),
                "valid_until": f"{c.valid_until:%Y-%m-%d}",
                "title_zh": t.title_zh,
                "title_en": t.title_en,
            },
            source="crm.coupons",
        )
        for c, t in rows
    ]


def run_events(store: st.CrmStore, engine: RuleEngine, events: Iterable[CrmEvent]) -> Counter[str]:
    """One transaction per event (an effect commits with its claim); returns totals."""
    totals: Counter[str] = Counter()
    for ev in events:
        with store.tx() as s:
            out = engine.handle(s, ev)
        totals["events"] += 1
        totals["fired"] += len(out.fired)
        totals["parked"] += out.parked is not None
        totals.update(out.skipped)
    return totals


def scan(store: st.CrmStore, engine: RuleEngine, now: dt.datetime | None = None) -> Counter[str]:
    """The periodic job: tier upgrades of the last 30 days and coupons expiring within 7 days."""
    now = now or utcnow()
    with store.tx() as s:
        events = tier_events(s, now - dt.timedelta(days=30)) + expiring_coupon_events(s, now)
    return run_events(store, engine, events)


def retry_parked(
    store: st.CrmStore, engine: RuleEngine, now: dt.datetime | None = None, limit: int = 500
) -> Counter[str]:
    """Retry parked events that are due; still unplaced ones back off (1 min doubling, <= 1 day)."""
    now = now or utcnow()
    totals: Counter[str] = Counter()
    with store.tx() as s:
        ids = list(
            s.scalars(
                select(ParkedEvent.id)
                .where(ParkedEvent.resolved_at.is_(None), ParkedEvent.next_at <= now)
                .order_by(ParkedEvent.id)
                .limit(limit)
            )
        )
    for pid in ids:
        with store.tx() as s:
            row = s.get(ParkedEvent, pid)
            assert row is not None
            ev = CrmEvent.from_json(row.event)
            out = engine.handle(s, ev, park=False)
            row.attempts += 1
            if out.parked is None:
                row.resolved_at = now
                totals["resolved"] += 1
                totals["fired"] += len(out.fired)
            else:
                delay = min(60 * 2 ** min(row.attempts, 20), 86_400)
                row.next_at = now + dt.timedelta(seconds=delay)
                row.reason = out.parked[:300]
                totals["still_parked"] += 1
    return totals


def dry_run(store: st.CrmStore, engine: RuleEngine, events: Iterable[CrmEvent]) -> dict[str, Any]:
    """What the rules would have done over ``events``, in one transaction that is rolled back."""
    fired: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    with store.engine.connect() as conn:
        trans = conn.begin()
        try:
            with Session(bind=conn, join_transaction_mode="create_savepoint") as s:
                for ev in events:
                    out = engine.handle(s, ev)
                    s.flush()
                    totals["events"] += 1
                    totals["parked"] += out.parked is not None
                    totals.update(out.skipped)
                    fired += [f.__dict__ | {"because": list(f.because)} for f in out.fired]
        finally:
            trans.rollback()
    per_rule = Counter(f["rule"] for f in fired)
    return {
        "totals": dict(totals),
        "fired": len(fired),
        "per_rule": dict(per_rule),
        "effects": fired,
    }
