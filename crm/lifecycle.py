"""The customer lifecycle: recency/frequency/monetary segments, the inactivity event that feeds
the win-back rule, and the CRM's scheduled jobs (``run_jobs``: the CRM worker runs them on a
timer, ``carpulse crm jobs run`` from the command line).

RFM (``crm/loyalty.yaml`` rfm): a customer's visits are their service entries in the points
ledger (imported service records, services closed at the counter). R scores the days since the
last visit (4 within ``recency_days[0]``... 1 beyond ``recency_days[2]``); F and M score the
visits and the CNY spent in the last ``window_days`` (1 + the thresholds reached, so 1..4). The
segment is the first of ``segments`` whose minimum scores are met. A customer whose last visit
is ``inactive_months`` of their segment ago (and who still owns a vehicle, if they ever owned
one) is inactive: one ``customer_inactive`` event per lapse (its id names the last visit, so a
new visit starts a new lapse), which the shipped ``win-back`` rule answers.

Jobs (each idempotent: running one twice does nothing more):

- ``expire``: live coupons past their date become ``expired`` (audited, once each);
- ``tiers``: every member's tier is reviewed (points leave the window: tiers go down too);
- ``events``: tier changes (``tier_upgraded``/``tier_downgraded``) and expiry reminders
  (``coupon_expiring``, ``coupons.remind_days`` ahead; the rule's effect key makes it once per
  coupon) go through the rules (``crm.jobs.scan``);
- ``referrals``: each referral reward in the ledger (``crm.loyalty.after_redeem``) becomes a
  ``referral_rewarded`` event for the sharer (the ``referral-reward`` rule);
- ``inactive``: the inactivity events above.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.crm_events import CrmEvent
from core.errors import CrmError
from crm import loyalty
from crm import store as st
from crm.engine import RuleEngine
from crm.jobs import run_events, scan
from crm.schema import Customer, Ownership, utcnow
from crm.tables import PointsEntry

JOBS: Final = ("expire", "tiers", "events", "referrals", "inactive")
HOURLY: Final = ("tiers", "inactive")  # a pass over every member: once an hour
MONTH_DAYS: Final = 30.44


@dataclass(frozen=True)
class CustomerRfm:
    customer_id: str
    last_visit: dt.date
    days_since: int
    visits: int  # in the RFM window
    spend: Decimal  # CNY in the RFM window
    r: int
    f: int
    m: int
    segment: loyalty.Segment

    @property
    def inactive(self) -> bool:
        return self.days_since >= self.segment.inactive_months * MONTH_DAYS

    def to_json(self) -> dict[str, object]:
        return {"customer_id": self.customer_id, "last_visit": self.last_visit.isoformat(),
                "days_since": self.days_since, "visits": self.visits, "spend": str(self.spend),
                "r": self.r, "f": self.f, "m": self.m, "segment": self.segment.id,
                "segment_zh": self.segment.zh, "segment_en": self.segment.en,
                "inactive_months": self.segment.inactive_months,
                "inactive": self.inactive}  # fmt: skip


def _score_up(value: float | Decimal, thresholds: Iterable[float | Decimal]) -> int:
    return 1 + sum(value >= t for t in thresholds)


def rfm(
    s: Session, now: dt.datetime | None = None, cfg: loyalty.LoyaltyConfig | None = None
) -> list[CustomerRfm]:
    """The RFM scores and segment of every customer with a visit, most recent visit first."""
    cfg = cfg or loyalty.config()
    now = now or utcnow()
    since = now - dt.timedelta(days=cfg.rfm.window_days)
    survivor: dict[str, str] = {}
    for cid, into in s.execute(select(Customer.id, Customer.merged_into).where(
            Customer.merged_into.is_not(None))):  # fmt: skip
        survivor[cid] = str(into)

    def resolve(cid: str) -> str:
        seen = set()
        while cid in survivor and cid not in seen:
            seen.add(cid)
            cid = survivor[cid]
        return cid

    erased = set(s.scalars(select(Customer.id).where(Customer.erased_at.is_not(None))))
    # one row per visit (a source), at its time, with its amount after corrections
    rows = s.execute(
        select(PointsEntry.customer_id, PointsEntry.source, func.min(PointsEntry.at),
               func.coalesce(func.sum(PointsEntry.amount), 0))
        .where(PointsEntry.kind.in_(loyalty.VISIT_KINDS), PointsEntry.at <= now)
        .group_by(PointsEntry.customer_id, PointsEntry.source)
    ).all()  # fmt: skip
    last: dict[str, dt.datetime] = {}
    visits: Counter[str] = Counter()
    spend: defaultdict[str, Decimal] = defaultdict(Decimal)
    for cid, _source, at, amount in rows:
        cid = resolve(cid)
        if cid in erased:
            continue
        at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)  # as the column type makes it
        last[cid] = max(last.get(cid, at), at)
        if at > since:
            visits[cid] += 1
            spend[cid] += Decimal(amount or 0)
    out = []
    rc = cfg.rfm
    for cid, at in last.items():
        days = max(0, (now - at).days)
        r = 4 - sum(days > t for t in rc.recency_days)
        f = _score_up(visits[cid], rc.frequency)
        m = _score_up(spend[cid], rc.monetary)
        seg = next(g for g in rc.segments if r >= g.min_r and f >= g.min_f and m >= g.min_m)
        out.append(CustomerRfm(cid, at.date(), days, visits[cid], spend[cid], r, f, m, seg))
    out.sort(key=lambda x: (x.days_since, x.customer_id))
    return out


def inactive_events(
    s: Session, now: dt.datetime | None = None, cfg: loyalty.LoyaltyConfig | None = None
) -> list[CrmEvent]:
    """A ``customer_inactive`` event per inactive customer (see the module's docstring)."""
    now = now or utcnow()
    owners = set(s.scalars(select(Ownership.customer_id)))
    current = set(s.scalars(select(Ownership.customer_id).where(Ownership.valid_to.is_(None))))
    out = []
    for c in rfm(s, now, cfg):
        if not c.inactive:
            continue
        ids = set(loyalty.aliases(s, c.customer_id))
        if ids & owners and not ids & current:
            continue  # sold their cars: not a lapsed customer of the workshop
        out.append(
            CrmEvent(
                kind="customer_inactive",
                ts=now,
                id=f"inactive:{c.customer_id}:{c.last_visit.isoformat()}",
                customer_id=c.customer_id,
                data={**c.to_json(), "months_since": round(c.days_since / MONTH_DAYS, 1)},
                source="crm.lifecycle",
            )
        )
    return out


def referral_events(s: Session, since: dt.datetime) -> list[CrmEvent]:
    """A ``referral_rewarded`` event for the sharer per referral entry written since ``since``."""
    rows = s.scalars(
        select(PointsEntry)
        .where(PointsEntry.kind == "referral", PointsEntry.at >= since,
               PointsEntry.seq == 0)
        .order_by(PointsEntry.id)
    )  # fmt: skip
    return [
        CrmEvent(
            kind="referral_rewarded",
            ts=r.at,
            id=f"referral:{r.source}",
            customer_id=r.customer_id,
            data={
                "coupon_id": str(r.detail.get("coupon", "")),
                "friend_id": str(r.detail.get("friend", "")),
                "points": r.delta,
            },
            source="crm.loyalty",
        )
        for r in rows
    ]


def run_jobs(
    store: st.CrmStore,
    engine: RuleEngine,
    now: dt.datetime | None = None,
    only: Iterable[str] = JOBS,
) -> Counter[str]:
    """Run the named jobs (``JOBS``) in that order, each in its own transactions; returns
    counters ``<job>_<what>``."""
    now = now or utcnow()
    wanted = list(only)
    if bad := [j for j in wanted if j not in JOBS]:
        raise CrmError(f"unknown job(s) {', '.join(bad)}; expected some of {', '.join(JOBS)}")
    totals: Counter[str] = Counter()
    if "expire" in wanted:
        with store.tx() as s:
            totals["expire_expired"] = st.expire_coupons(s, now)
    if "tiers" in wanted:
        with store.tx() as s:
            totals["tiers_changed"] = loyalty.review_all(s, now)
    if "events" in wanted:
        totals.update({f"events_{k}": v for k, v in scan(store, engine, now).items()})
    if "referrals" in wanted:
        with store.tx() as s:
            events = referral_events(s, now - dt.timedelta(days=30))
        totals.update({f"referrals_{k}": v for k, v in run_events(store, engine, events).items()})
    if "inactive" in wanted:
        with store.tx() as s:
            events = inactive_events(s, now)
        totals.update({f"inactive_{k}": v for k, v in run_events(store, engine, events).items()})
    return totals
