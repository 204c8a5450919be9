"""Points and tiers from real activity (``crm.loyalty``): the ledger grants once per source (closing
at the counter, importing a CSV twice, replaying), tiers move up and down with effective dates and
fire their rules, redemptions and referrals earn, hostile amounts are refused (SQLite and a real
PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.errors import CrmError
from crm import loyalty
from crm import store as st
from crm.engine import RuleEngine
from crm.jobs import scan
from crm.lifecycle import run_jobs
from crm.onboard import import_folder
from crm.rules import shipped_rules
from crm.schema import AuditRecord, Coupon, Member, TierChange, Vehicle
from crm.tables import OutboxMessage, PointsEntry, ServiceRecord
from tests.unit.crm.conftest import VIN, VIN2, Dealer
from tests.unit.crm.test_import import write

NOW = st.utcnow()


def engine() -> RuleEngine:
    return RuleEngine(shipped_rules(), webhook_url="https://dealer.example/hook")


def ledger(s: st.Session, source_prefix: str = "") -> list[PointsEntry]:
    q = select(PointsEntry).order_by(PointsEntry.id)
    if source_prefix:
        q = q.where(PointsEntry.source.startswith(source_prefix))
    return list(s.scalars(q))


def test_close_service_earns_once_and_a_correction_earns_the_difference(dealer: Dealer) -> None:
    with dealer.store.tx() as s:
        before = s.get(Member, dealer.member)
        assert before is not None
        visits, points, spend = before.visits, before.points, Decimal(before.spend)
        done = loyalty.close_service(s, vin=VIN, amount="1,280.50", advisor="adv-li",
                                     odometer_km=30_110, work="oil and filter")  # fmt: skip
        assert (done.customer_id, done.points, done.written) == (dealer.member, 128, 128)
        assert done.balance == points + 128 and done.amount == Decimal("1280.50")
    with dealer.store.tx() as s:  # the same close again (a double click, a retry): nothing more
        again = loyalty.close_service(s, vin=VIN, amount=1280.5, advisor="adv-li")
        assert (again.points, again.written, again.balance) == (128, 0, points + 128)
    with dealer.store.tx() as s:  # the advisor corrects the amount: the difference, one visit
        fixed = loyalty.close_service(s, vin=VIN, amount="2,000", advisor="adv-li")
        assert (fixed.points, fixed.written, fixed.balance) == (200, 72, points + 200)
        rows = ledger(s, f"service:{fixed.service_record_id}")
        assert [(r.seq, r.delta, r.amount) for r in rows] == [
            (0, 128, Decimal("1280.50")), (1, 72, Decimal("719.50"))]  # fmt: skip
        member = s.get(Member, dealer.member)
        assert member is not None and member.visits == visits + 1
        assert member.spend == spend + Decimal(2000)
        rec = s.get(ServiceRecord, fixed.service_record_id)
        assert rec is not None and rec.amount == Decimal("2000.00") and rec.odometer_km == 30_110
        assert loyalty.balance(s, dealer.member) == member.points
    with dealer.store.tx() as s:  # audited (the records are written at commit)
        grants = s.scalars(select(AuditRecord).where(AuditRecord.action == "points.grant"))
        assert [g.detail["delta"] for g in grants if g.detail["source"] == fixed.source] == [
            128, 72]  # fmt: skip
    # the ledger is append-only
    with pytest.raises(CrmError, match="append-only"), dealer.store.tx() as s:
        ledger(s)[-1].delta = 10_000
    with pytest.raises(CrmError, match="append-only"), dealer.store.tx() as s:
        s.delete(ledger(s)[-1])


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        (-1, "finite number >= 0"),
        (float("nan"), "finite number >= 0"),
        (float("inf"), "finite number >= 0"),
        ("1e12", "must be 0..9999999999.99"),
        (Decimal("5000000"), "over 1000000 CNY"),
        ("1.234,50", "comma may only separate thousands"),
        ("12,34", "comma may only separate thousands"),
        ("lots", "not a number"),
        (True, "not a number"),
        (None, "not a number"),
    ],
)
def test_hostile_amounts_are_refused(dealer: Dealer, amount: object, why: str) -> None:
    with pytest.raises(CrmError, match=why), dealer.store.tx() as s:
        loyalty.close_service(s, vin=VIN, amount=amount, advisor="adv", odometer_km=1000)
    with dealer.store.tx() as s:
        assert ledger(s, "service:") == [] and s.scalar(select(func.count(ServiceRecord.id))) == 0


def test_close_service_refuses_what_does_not_fit(dealer: Dealer) -> None:
    cases = [
        ({"vin": VIN, "at": NOW + dt.timedelta(days=400)}, "in the future"),
        ({"vin": VIN}, "odometer_km is needed for the first service record"),
        ({"vin": VIN, "customer_id": dealer.other, "odometer_km": 10}, "is not the owner"),
        ({"vin": "LSVAA4182E2999999", "odometer_km": 10}, "unknown vehicle"),
        ({"vin": VIN, "odometer_km": float("nan")}, "must be 0..2000000"),
        ({}, "needs a vin or a customer_id"),
    ]
    for kwargs, why in cases:
        with pytest.raises(CrmError, match=why), dealer.store.tx() as s:
            loyalty.close_service(s, amount=100, advisor="adv", **kwargs)  # type: ignore[arg-type]
    with dealer.store.tx() as s:  # a walk-in without a known vehicle earns on the customer
        done = loyalty.close_service(s, customer_id=dealer.other, amount=350, advisor="adv")
        assert (done.vin, done.service_record_id, done.points) == (None, None, 35)


D1, D2, D3 = (f"{NOW.date() - dt.timedelta(days=d):%Y-%m-%d}" for d in (300, 180, 200))
SERVICES_OK = f"""vin,date,odometer_km,work,amount
{VIN},{D1},20000,oil,"1,500.00"
{VIN},{D2},25000,brakes,3600
{VIN2},{D3},41000,inspection,800
"""
SERVICES_HOSTILE = (
    SERVICES_OK
    + "".join(
        f"{VIN},{NOW.date() - dt.timedelta(days=170 - i):%Y-%m-%d},26000,x,{amount}\n"
        for i, amount in enumerate(("-5", "NaN", "99999999999", '"1.234,50"', "5000000"))
    )
    + f"{VIN},2999-01-01,26000,x,100\n"
)


def test_import_grants_once_and_refuses_hostile_rows(dealer: Dealer, tmp_path: Path) -> None:
    today = NOW.date()
    with dealer.store.tx() as s:
        base = {c: loyalty.balance(s, c) for c in (dealer.member, dealer.other)}
    folder = write(tmp_path / "dms", {"service_records.csv": SERVICES_HOSTILE})
    report = import_folder(dealer.store, folder, today=today, vin_check_digit=False)
    reasons = [r.split(": ", 1)[1] for r in report.rejects]
    assert len(reasons) == 6, report.rejects
    assert "amount '-5' must be 0..9999999999.99" in reasons[0]
    assert "amount 'NaN'" in reasons[1] and "99999999999" in reasons[2]
    assert "comma may only separate thousands" in reasons[3]
    assert "over 1000000 CNY" in reasons[4] and "in the future" in reasons[5]
    with dealer.store.tx() as s:
        got = {c: loyalty.balance(s, c) - base[c] for c in base}
        assert got == {dealer.member: 150 + 360, dealer.other: 80}
        n = len(ledger(s, "service:"))
        member = s.get(Member, dealer.member)
        assert member is not None and member.tier == "silver"  # 510 points this year
    for _ in range(2):  # the same export again, twice: nothing granted
        again = import_folder(dealer.store, write(folder, {"service_records.csv": SERVICES_OK}),
                              today=today, vin_check_digit=False)  # fmt: skip
        assert again.files["service_records.csv"].unchanged == 3
        with dealer.store.tx() as s:
            assert len(ledger(s, "service:")) == n
            assert {c: loyalty.balance(s, c) - base[c] for c in base} == got
    fixed = SERVICES_OK.replace("inspection,800", "inspection,1200")
    import_folder(
        dealer.store,
        write(folder, {"service_records.csv": fixed}),
        today=today,
        vin_check_digit=False,
    )
    with dealer.store.tx() as s:
        assert loyalty.balance(s, dealer.other) - base[dealer.other] == 120


def test_tiers_move_up_and_down_with_effective_dates_and_fire_rules(dealer: Dealer) -> None:
    eng = engine()
    start = NOW - dt.timedelta(days=20)
    with dealer.store.tx() as s:
        done = loyalty.close_service(s, vin=VIN, amount=12_000, advisor="adv", at=start,
                                     odometer_km=10_000)  # fmt: skip
        assert done.tier == "gold" and done.tier_change == ("standard", "gold")
    with dealer.store.tx() as s:  # what the rules' templates see (the advisor's arrival card)
        facts = eng._customer(s, dealer.member)
        assert (facts["tier"], facts["tier_zh"], facts["tier_en"]) == ("gold", "金卡", "Gold")
    first = scan(dealer.store, eng, now=NOW)
    assert first["fired"] >= 1
    with dealer.store.tx() as s:
        welcome = s.scalars(select(Coupon).where(Coupon.template_code == "tier-welcome")).one()
        assert welcome.owner_id == dealer.member
        mail = s.scalars(
            select(OutboxMessage).where(OutboxMessage.payload["rule"].as_string()
                                        == "tier-upgrade-welcome")).one()  # fmt: skip
        assert "金卡" in mail.subject  # the member reads zh-CN
    assert scan(dealer.store, eng, now=NOW)["fired"] == 0  # replayed: nothing more
    # a year later the points have left the window: the periodic review moves the tier down
    later = start + dt.timedelta(days=366)
    totals = run_jobs(dealer.store, eng, later, only=["tiers", "events"])
    assert totals["tiers_changed"] == 1 and totals["events_fired"] == 1, totals
    with dealer.store.tx() as s:
        member = s.get(Member, dealer.member)
        assert member is not None and member.tier == "standard" and member.tier_since == later
        change = s.scalars(select(TierChange).order_by(TierChange.id.desc()).limit(1)).one()
        assert (change.from_tier, change.to_tier, change.at) == ("gold", "standard", later)
        assert "points in 365 days" in change.reason
        notice = s.scalars(
            select(OutboxMessage).where(OutboxMessage.payload["rule"].as_string()
                                        == "tier-downgrade-notice")).one()  # fmt: skip
        assert "普卡" in notice.subject and "金卡" in notice.body
        assert (
            len(s.scalars(select(Coupon).where(Coupon.template_code == "tier-welcome")).all()) == 1
        )
    again = run_jobs(dealer.store, eng, later, only=["tiers", "events"])
    assert again["tiers_changed"] == 0 and again["events_fired"] == 0


def test_redemption_and_referral_earn_once(dealer: Dealer) -> None:
    eng = engine()
    cfg = loyalty.config()
    with dealer.store.tx() as s:
        friend = st.find_or_create_customer(s, {"phone": "+8613800000099"}, "朋友")
        first = st.issue_coupon(s, "maintenance", dealer.member, NOW + dt.timedelta(days=30))
        second = st.issue_coupon(s, "maintenance", dealer.member, NOW + dt.timedelta(days=30))
        st.share_coupon(s, first.id, dealer.member, friend, now=NOW)
        st.share_coupon(s, second.id, dealer.member, friend, now=NOW)
        sharer_before = loyalty.balance(s, dealer.member)
    with dealer.store.tx() as s:  # the friend's first visit
        loyalty.redeem_coupon(s, first.id, friend, now=NOW)
    with dealer.store.tx() as s:
        assert loyalty.balance(s, friend) == cfg.points.redemption
        assert loyalty.balance(s, dealer.member) == sharer_before + cfg.points.referral
        (ref,) = ledger(s, "referral:")
        assert (ref.customer_id, ref.detail["friend"]) == (dealer.member, friend)
    with dealer.store.tx() as s:  # not the friend's first visit any more: no second referral
        loyalty.redeem_coupon(s, second.id, friend, now=NOW + dt.timedelta(hours=1))
    with dealer.store.tx() as s:
        assert loyalty.balance(s, friend) == 2 * cfg.points.redemption
        assert len(ledger(s, "referral:")) == 1
    # the sharer's reward rule: a thank-you coupon and a message, once
    assert run_jobs(dealer.store, eng, NOW, only=["referrals"])["referrals_fired"] == 1
    assert run_jobs(dealer.store, eng, NOW, only=["referrals"])["referrals_fired"] == 0
    with dealer.store.tx() as s:
        thanks = s.scalars(select(Coupon).where(Coupon.template_code == "referral-thanks")).one()
        assert thanks.owner_id == dealer.member
        assert not any(r.detail.get("friend") for r in ledger(s, "redeem:"))


def test_own_coupon_redeemed_earns_no_referral(dealer: Dealer) -> None:
    with dealer.store.tx() as s:
        cp = st.issue_coupon(s, "maintenance", dealer.other, NOW + dt.timedelta(days=30))
        loyalty.redeem_coupon(s, cp.id, dealer.other, now=NOW)
    with dealer.store.tx() as s:
        assert ledger(s, "referral:") == []
        assert [r.delta for r in ledger(s, "redeem:")] == [loyalty.config().points.redemption]


def test_config_file_is_validated(tmp_path: Path) -> None:
    bad = tmp_path / "loyalty.yaml"
    bad.write_text("tiers:\n  levels:\n    - {id: a, zh: 甲, en: A, min_points: 5}\n", "utf-8")
    with pytest.raises(loyalty.ConfigError, match=r"loyalty.yaml: tiers: .*min_points 0"):
        loyalty.LoyaltyConfig.load(bad)
    bad.write_text("points:\n  service_cny_per_point: -1\n", "utf-8")
    with pytest.raises(loyalty.ConfigError, match=r"points\.service_cny_per_point"):
        loyalty.LoyaltyConfig.load(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("points:\n  service_cny_per_point: 5\n", "utf-8")
    cfg = loyalty.LoyaltyConfig.load(ok)
    assert cfg.service_points(Decimal("99.99")) == 19 and cfg.tiers.levels[3].zh == "白金卡"
    assert loyalty.shipped() == loyalty.LoyaltyConfig()  # the YAML says what the code defaults
    assert loyalty.tier_name("银卡", "en") == "Silver" and loyalty.tier_name("gold") == "金卡"


@pytest.mark.integration
def test_concurrent_grants_add_up_on_postgresql(postgres_url: str) -> None:
    """Eight counters redeem eight coupons of one new customer at once: every redemption
    succeeds, the member is created once, and the cached balance is the ledger's sum."""
    import threading
    import uuid

    from sqlalchemy import text

    from crm.migrate import upgrade
    from crm.schema import CouponTemplate

    name = "t_" + uuid.uuid4().hex[:10]
    admin = st.make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    eng = st.make_engine(postgres_url.rsplit("/", 1)[0] + "/" + name, pool_size=20)
    upgrade(eng)
    crm = st.CrmStore(eng)
    with crm.tx() as s:
        s.add(CouponTemplate(code="oil", title_zh="机油券", title_en="Oil", valid_days=30))
        s.flush()
        c = st.find_or_create_customer(s, {"phone": "+8613800000123"})
        ids = [st.issue_coupon(s, "oil", c, NOW + dt.timedelta(days=30)).id for _ in range(8)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def redeem(coupon_id: str) -> None:
        barrier.wait()
        try:
            with crm.tx() as s:
                loyalty.redeem_coupon(s, coupon_id, c)
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=redeem, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with crm.tx() as s:
        member = s.get(Member, c)
        assert member is not None
        assert member.points == loyalty.balance(s, c) == 8 * loyalty.config().points.redemption
        assert s.scalar(select(func.count(TierChange.id)).where(TierChange.customer_id == c)) == 1
    # four advisors close the same visit at once: one service record, its points once
    with crm.tx() as s:
        s.add(Vehicle(vin=VIN, model="Lavida"))
        s.flush()
        st.transfer_ownership(s, VIN, c, NOW - dt.timedelta(days=100))
    barrier = threading.Barrier(4)
    closed: list[int] = []

    def close() -> None:
        barrier.wait()
        try:
            with crm.tx() as s:
                done = loyalty.close_service(s, vin=VIN, amount="1,000", advisor="adv",
                                             odometer_km=1000)  # fmt: skip
            closed.append(done.written)
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=close) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(closed) == [0, 0, 0, 100]
    with crm.tx() as s:
        assert s.scalar(select(func.count(ServiceRecord.id))) == 1
        member = s.get(Member, c)
        assert member is not None and member.points == loyalty.balance(s, c) == 260
        assert member.visits == 1
    eng.dispose()
