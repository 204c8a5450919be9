"""The customer lifecycle (``crm.lifecycle``): RFM segments, the inactivity event and the win-back
rule once per lapse, coupons expired and reminded once each, the jobs from the worker's timer and
from ``carpulse crm jobs run`` / ``segments`` / ``points`` / ``close-service``."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from carpulse.cli import app
from crm import loyalty
from crm import store as st
from crm.agents import periodic
from crm.engine import RuleEngine
from crm.lifecycle import inactive_events, rfm, run_jobs
from crm.migrate import upgrade
from crm.rules import shipped_rules
from crm.schema import AuditRecord, Coupon, CouponTemplate, Vehicle
from crm.tables import OutboxMessage
from tests.unit.crm.conftest import VIN, VIN2, Dealer

NOW = st.utcnow()
DAY = dt.timedelta(days=1)


def engine() -> RuleEngine:
    return RuleEngine(shipped_rules(), webhook_url="https://dealer.example/hook")


def visits(store: st.CrmStore, vin: str, days_ago: list[int], amount: int) -> None:
    with store.tx() as s:
        for i, d in enumerate(sorted(days_ago, reverse=True)):
            loyalty.close_service(s, vin=vin, amount=amount, advisor="adv", at=NOW - d * DAY,
                                  odometer_km=10_000 + 1000 * i)  # fmt: skip


def test_rfm_scores_and_segments(dealer: Dealer) -> None:
    visits(dealer.store, VIN, [700, 500, 400, 300, 200], 3000)  # 5 visits, 15,000 CNY
    visits(dealer.store, VIN2, [20], 500)
    now = st.utcnow()
    with dealer.store.tx() as s:
        table = {c.customer_id: c for c in rfm(s, now)}
    m, o = table[dealer.member], table[dealer.other]
    # the fixture's walk-in visit of today counts too: 6 visits, 15,500 CNY in two years
    assert (m.days_since, m.visits, m.r, m.f, m.m) == (0, 6, 4, 4, 3)
    assert m.segment.id == "champion" and not m.inactive
    assert (o.days_since, o.r, o.f, o.m, o.segment.id) == (20, 4, 1, 1, "occasional")
    with dealer.store.tx() as s:  # eight months on: the champion lapsed (4 months), not the other
        later = {c.customer_id: c for c in rfm(s, NOW + 240 * DAY)}
        assert later[dealer.member].inactive and not later[dealer.other].inactive
        assert later[dealer.member].r == 2
        assert [e.customer_id for e in inactive_events(s, NOW + 240 * DAY)] == [dealer.member]


def test_win_back_once_per_lapse_and_only_with_consent(dealer: Dealer) -> None:
    eng = engine()
    visits(dealer.store, VIN, [500], 100)  # the member, long ago (and the fixture's visit today)
    visits(dealer.store, VIN2, [530], 500)  # the other customer: no marketing consent
    then = NOW - 100 * DAY  # both lapsed then: over 12 months without a visit
    first = run_jobs(dealer.store, eng, then, only=["inactive"])
    assert first["inactive_events"] == 2 and first["inactive_fired"] == 1, first
    assert first["inactive_conditions"] == 1  # no consent: no coupon, no message
    assert run_jobs(dealer.store, eng, then + 3 * DAY, only=["inactive"])["inactive_fired"] == 0
    with dealer.store.tx() as s:
        (coupon,) = s.scalars(select(Coupon).where(Coupon.template_code == "win-back")).all()
        assert coupon.owner_id == dealer.member
        mail = s.scalars(select(OutboxMessage).where(
            OutboxMessage.payload["template"].as_string() == "win_back",
            OutboxMessage.channel == "email")).one()  # fmt: skip
        assert "回厂礼券" in mail.body and "约 13 个月" in mail.body  # 400 days
    # the visit of today ended that lapse: a year later it is a new one, and it fires again
    now = st.utcnow()
    assert run_jobs(dealer.store, eng, now, only=["inactive"])["inactive_events"] == 1  # other
    again = run_jobs(dealer.store, eng, now + 400 * DAY, only=["inactive"])
    assert again["inactive_fired"] == 1, again
    with dealer.store.tx() as s:
        assert len(s.scalars(select(Coupon).where(Coupon.template_code == "win-back")).all()) == 2


def test_sold_car_owners_are_not_lapsed(dealer: Dealer) -> None:
    visits(dealer.store, VIN2, [30], 500)
    with dealer.store.tx() as s:
        buyer = st.find_or_create_customer(s, {"phone": "+8613800000077"})
        st.transfer_ownership(s, VIN2, buyer, NOW - DAY)
        assert [e.customer_id for e in inactive_events(s, NOW + 400 * DAY)] == [dealer.member]


def test_coupons_expire_and_are_reminded_once(dealer: Dealer) -> None:
    eng = engine()
    with dealer.store.tx() as s:
        soon = st.issue_coupon(s, "maintenance", dealer.member, NOW + 5 * DAY)
        later = st.issue_coupon(s, "maintenance", dealer.member, NOW + 60 * DAY)
    first = run_jobs(dealer.store, eng, NOW, only=["expire", "events"])
    assert first["expire_expired"] == 0 and first["events_fired"] == 1, first
    assert run_jobs(dealer.store, eng, NOW + DAY, only=["events"])["events_fired"] == 0
    gone = run_jobs(dealer.store, eng, NOW + 6 * DAY, only=["expire"])
    assert gone["expire_expired"] == 1
    assert run_jobs(dealer.store, eng, NOW + 7 * DAY, only=["expire"])["expire_expired"] == 0
    with dealer.store.tx() as s:
        assert s.get(Coupon, soon.id).state == "expired"  # type: ignore[union-attr]
        assert s.get(Coupon, later.id).state == "issued"  # type: ignore[union-attr]
        reminders = s.scalars(select(OutboxMessage).where(
            OutboxMessage.payload["template"].as_string() == "coupon_expiring")).all()  # fmt: skip
        assert len(reminders) == 1 and reminders[0].payload["coupon"] == {}
        assert reminders[0].payload["event"]["coupon_id"] == soon.id
        audit = s.scalars(select(AuditRecord).where(AuditRecord.action == "coupon.expire")).all()
        assert [a.subject for a in audit] == [soon.id]


def test_the_worker_timer_runs_the_jobs(dealer: Dealer) -> None:
    with dealer.store.tx() as s:
        st.issue_coupon(s, "maintenance", dealer.member, NOW - DAY)  # already past its date
    stats: Counter[str] = Counter()
    periodic(dealer.store, engine(), None, stats)
    assert stats["jobs_expire_expired"] == 1 and "jobs_tiers_changed" in stats
    periodic(dealer.store, engine(), None, stats)  # within the hour: no second tier review
    assert stats["jobs_expire_expired"] == 1


def test_cli_close_service_points_segments_and_jobs(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store = st.CrmStore.from_url(db)
    upgrade(store.engine)
    with store.tx() as s:
        for code in ("maintenance", "tier-welcome"):
            s.add(CouponTemplate(code=code, title_zh="券", title_en="Coupon", valid_days=60))
        s.add(Vehicle(vin=VIN, model="Lavida"))
        s.flush()
        cid = st.find_or_create_customer(s, {"phone": "+8613800000001"}, "王先生")
        st.transfer_ownership(s, VIN, cid, NOW - 900 * DAY)
    store.engine.dispose()
    run = CliRunner().invoke
    res = run(app, ["crm", "close-service", "--db", db, "--vin", VIN, "--amount", "3,200.00",
                    "--advisor", "adv-li", "--odometer-km", "42000"])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["points"], doc["written"], doc["tier"]) == (320, 320, "silver")
    res = run(app, ["crm", "close-service", "--db", db, "--vin", VIN, "--amount", "-3",
                    "--advisor", "adv-li"])  # fmt: skip
    assert res.exit_code != 0 and "must be 0..9999999999.99" in str(res.exception)
    res = run(app, ["crm", "points", cid, "--db", db])
    points = json.loads(res.stdout)
    assert (points["balance"], points["tier_zh"], points["window_points"]) == (320, "银卡", 320)
    assert [r["kind"] for r in points["ledger"]] == ["service"]
    res = run(app, ["crm", "segments", "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert (row["customer_id"], row["segment"], row["r"], row["inactive"]) == (
        cid, "occasional", 4, False)  # fmt: skip
    res = run(app, ["crm", "segments", "--db", db, "--now", (NOW + 400 * DAY).isoformat()])
    assert "occasional 1; inactive 1" in res.stdout and " inactive" in res.stdout
    res = run(app, ["crm", "jobs", "run", "--db", db])
    assert res.exit_code == 0, res.output
    totals = json.loads(res.stdout)
    assert totals["events_fired"] >= 1 and totals["tiers_changed"] == 0
    res = run(app, ["crm", "jobs", "run", "--db", db, "--only", "nap"])
    assert res.exit_code != 0 and "unknown job(s) nap" in str(res.exception)
