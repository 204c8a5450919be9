"""The engine's jobs: CRM-side event sources (tier changes, expiring coupons), running a batch of
events one transaction each, retrying parked events, and the dry run (a rolled-back replay).

Parked events (unknown VIN, device or plate) are retried with a backoff; they are not kept
forever: an event parked longer than ``PARK_MAX_AGE`` or retried ``PARK_MAX_ATTEMPTS`` times, and
the oldest open events of a key past ``PARK_MAX_PER_KEY``, are dead-lettered: ``dead_at`` is set
(the row stays for inspection), they are counted, and the worker sends them to
``carpulse.deadletter`` with reason ``crm_parked_expired`` or ``crm_parked_over_cap``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.backoff import exponential
from core.crm_events import CrmEvent
from crm import store as st
from crm.engine import RuleEngine
from crm.schema import Coupon, CouponTemplate, TierChange, utcnow
from crm.tables import ParkedEvent


# ----- CRM-side event sources (scanned periodically; idempotent through the effect keys) --------
def tier_events(s: Session, since: dt.datetime) -> list[CrmEvent]:
    """A ``tier_upgraded`` event per tier change up (or sideways, and a new member's first
    tier: ``direction`` ``same``), a ``tier_downgraded`` one per change down; each carries the
    tiers' names in Chinese and English (``crm.loyalty``)."""
    from crm import loyalty

    cfg = loyalty.config()
    rows = s.scalars(
        select(TierChange).where(TierChange.at >= since).order_by(TierChange.at, TierChange.id)
    )
    out = []
    for r in rows:
        old, new = cfg.rank(r.from_tier), cfg.rank(r.to_tier)
        direction = (
            "up" if new > old and r.from_tier is not None else "down" if new < old else "same"
        )
        out.append(
            CrmEvent(
                kind="tier_downgraded" if direction == "down" else "tier_upgraded",
                ts=r.at,
                id=f"tier:{r.id}",
                customer_id=r.customer_id,
                data={
                    "from_tier": r.from_tier or "",
                    "to_tier": r.to_tier,
                    "from_tier_zh": loyalty.tier_name(r.from_tier, "zh-CN", cfg),
                    "from_tier_en": loyalty.tier_name(r.from_tier, "en", cfg),
                    "to_tier_zh": loyalty.tier_name(r.to_tier, "zh-CN", cfg),
                    "to_tier_en": loyalty.tier_name(r.to_tier, "en", cfg),
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
    """The periodic job: tier changes of the last 30 days and coupons expiring within the
    reminder window (``crm/loyalty.yaml`` coupons.remind_days, 7 days)."""
    from crm.loyalty import config

    now = now or utcnow()
    within = dt.timedelta(days=config().coupons.remind_days)
    with store.tx() as s:
        events = tier_events(s, now - dt.timedelta(days=30)) + expiring_coupon_events(
            s, now, within
        )
    return run_events(store, engine, events)


PARK_MAX_AGE = dt.timedelta(days=14)  # a VIN not registered within two weeks is a data problem
PARK_MAX_ATTEMPTS = 40  # ~ two weeks of retries at the 1-day backoff ceiling
PARK_MAX_PER_KEY = 1_000  # a chatty unknown device cannot fill the table

DeadLetter = tuple[bytes, dict[str, bytes]]  # (value, headers) for the dead-letter topic


def _bury(row: ParkedEvent, now: dt.datetime, reason: str, dead: list[DeadLetter] | None) -> None:
    row.dead_at = row.resolved_at = now
    if dead is not None:
        headers = {"reason": reason.encode(), "detail": row.reason.encode(),
                   "parked_at": row.created_at.isoformat().encode(),
                   "attempts": str(row.attempts).encode()}  # fmt: skip
        dead.append((json.dumps(row.event, ensure_ascii=False).encode(), headers))


def expire_parked(
    s: Session,
    now: dt.datetime,
    dead: list[DeadLetter] | None = None,
    max_age: dt.timedelta = PARK_MAX_AGE,
    max_attempts: int = PARK_MAX_ATTEMPTS,
    max_per_key: int = PARK_MAX_PER_KEY,
) -> Counter[str]:
    """Dead-letter open parked events that are too old, retried too often, or over their key's cap."""
    totals: Counter[str] = Counter()
    open_ = ParkedEvent.resolved_at.is_(None)
    old = s.scalars(
        select(ParkedEvent)
        .where(open_, (ParkedEvent.created_at < now - max_age) | (ParkedEvent.attempts >= max_attempts))
        .order_by(ParkedEvent.id)
    )  # fmt: skip
    for row in old:
        _bury(row, now, "crm_parked_expired", dead)
        totals["dead_lettered"] += 1
    over = s.execute(
        select(ParkedEvent.key, func.count())
        .where(open_)
        .group_by(ParkedEvent.key)
        .having(func.count() > max_per_key)
    ).all()
    for key, n in over:
        rows = s.scalars(
            select(ParkedEvent).where(open_, ParkedEvent.key == key)
            .order_by(ParkedEvent.id).limit(int(n) - max_per_key)
        )  # fmt: skip
        for row in rows:  # the oldest go; the newest are the likeliest to be placed
            _bury(row, now, "crm_parked_over_cap", dead)
            totals["dead_lettered"] += 1
            totals["over_cap"] += 1
    return totals


def retry_parked(
    store: st.CrmStore,
    engine: RuleEngine,
    now: dt.datetime | None = None,
    limit: int = 500,
    dead: list[DeadLetter] | None = None,
) -> Counter[str]:
    """Dead-letter what is past the caps (``expire_parked``; the events are appended to ``dead``),
    then retry parked events that are due; still unplaced ones back off (1 min doubling, <= 1 day)."""
    now = now or utcnow()
    with store.tx() as s:
        totals = expire_parked(s, now, dead)
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
                delay = exponential(row.attempts, 60, 86_400)
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
