"""The CRM store on SQLite and on a real PostgreSQL: identities, ownership, consent, tiers, coupons, audit."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.errors import CouponStateError, CrmError
from crm import loyalty
from crm import store as st
from crm.migrate import upgrade
from crm.schema import AuditRecord, Coupon, CouponShare, CouponTemplate, CustomerMerge, Vehicle
from tests.unit.crm.conftest import fresh_engine

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def crm(request: pytest.FixtureRequest, tmp_path) -> Iterator[st.CrmStore]:  # type: ignore[no-untyped-def]
    engine = fresh_engine(request, tmp_path)
    upgrade(engine)
    upgrade(engine)  # idempotent
    store = st.CrmStore(engine)
    with store.tx() as s:
        s.add(
            CouponTemplate(
                code="tyre",
                title_zh="轮胎优惠券",
                title_en="Tyre coupon",
                value=200,
                valid_days=180,
            )
        )
        s.add(Vehicle(vin="LSVAA4182E2123456", model="Lavida"))
    yield store
    engine.dispose()


def test_identities_merge_into_the_oldest_customer(crm: st.CrmStore) -> None:
    with crm.tx() as s:
        a = st.find_or_create_customer(s, {"phone": "+8613800000001"}, "Wang")
        b = st.find_or_create_customer(s, {"wechat_openid": "oX1"}, "Wang (WeChat)")
        assert a != b
    with crm.tx() as s:
        merged = st.find_or_create_customer(
            s, {"phone": "+8613800000001", "wechat_openid": "oX1", "plate": "沪A12345"}
        )
        assert merged == a
        assert st.resolve(s, b) == a
        history = s.scalars(select(CustomerMerge)).all()
        assert [(m.survivor_id, m.merged_id) for m in history] == [(a, b)]
    with crm.tx() as s:  # every identity now finds the survivor
        for ident in ({"phone": "+8613800000001"}, {"wechat_openid": "oX1"}, {"plate": "沪A12345"}):
            assert st.find_or_create_customer(s, ident) == a


def test_bad_identity_kind_is_refused(crm: st.CrmStore) -> None:
    with pytest.raises(CrmError, match="unknown identity kind 'email'"), crm.tx() as s:
        st.find_or_create_customer(s, {"email": "x@y"})


def test_new_owner_never_sees_previous_owner_history(crm: st.CrmStore) -> None:
    vin = "LSVAA4182E2123456"
    with crm.tx() as s:
        first = st.find_or_create_customer(s, {"phone": "1"})
        second = st.find_or_create_customer(s, {"phone": "2"})
        st.transfer_ownership(s, vin, first, T0)
        st.transfer_ownership(s, vin, second, T0 + dt.timedelta(days=100))
    with crm.tx() as s:
        assert st.owner_at(s, vin, T0 + dt.timedelta(days=50)) == first
        assert st.owner_at(s, vin, T0 + dt.timedelta(days=150)) == second
        assert st.visible_windows(s, vin, second) == [(T0 + dt.timedelta(days=100), None)]
        assert st.visible_windows(s, vin, first) == [(T0, T0 + dt.timedelta(days=100))]
    with pytest.raises(CrmError, match="is not after the current one"), crm.tx() as s:
        st.transfer_ownership(s, vin, first, T0 + dt.timedelta(days=10))


def test_consent_is_revocable_with_history(crm: st.CrmStore) -> None:
    with crm.tx() as s:
        c = st.find_or_create_customer(s, {"phone": "3"})
        assert not st.has_consent(s, c, "location")
        st.set_consent(s, c, "location", True, source="app")
    with crm.tx() as s:
        assert st.has_consent(s, c, "location")
        st.set_consent(s, c, "location", False, source="call-centre")
    with crm.tx() as s:
        assert not st.has_consent(s, c, "location")
        actions = [r.action for r in s.scalars(select(AuditRecord).where(AuditRecord.subject == c))]
        assert actions == ["consent.grant", "consent.revoke"]


def test_tiers_upgrade_with_visits_and_spend(crm: st.CrmStore) -> None:
    with crm.tx() as s:
        c = st.find_or_create_customer(s, {"member_card": "M001"})
        changes = [loyalty.record_visit(s, c, spend=1200) for _ in range(3)]
    assert changes[0] == (None, "standard")  # 普卡
    assert changes[1] == ("standard", "standard")  # 240 points
    assert changes[2] == ("standard", "silver")  # 银卡: 3600 CNY spent, 360 points in a year


def test_coupon_lifecycle_and_share_chain(crm: st.CrmStore) -> None:
    with crm.tx() as s:
        a = st.find_or_create_customer(s, {"phone": "10"})
        b = st.find_or_create_customer(s, {"phone": "11"})
        cp = st.issue_coupon(s, "tyre", a, T0 + dt.timedelta(days=30))
        st.share_coupon(s, cp.id, a, b, now=T0)
    with pytest.raises(CouponStateError, match="held by"), crm.tx() as s:
        loyalty.redeem_coupon(s, cp.id, a, now=T0 + dt.timedelta(days=1))
    with crm.tx() as s:
        loyalty.redeem_coupon(s, cp.id, b, now=T0 + dt.timedelta(days=1))
        chain = [(x.from_id, x.to_id) for x in s.scalars(select(CouponShare))]
        assert chain == [(a, b)]
        assert s.get(Coupon, cp.id).redeemed_by == b  # type: ignore[union-attr]
    with pytest.raises(CouponStateError, match="it is redeemed"), crm.tx() as s:
        loyalty.redeem_coupon(s, cp.id, b, now=T0 + dt.timedelta(days=2))


def test_redeeming_an_expired_coupon_is_a_clear_error(crm: st.CrmStore) -> None:
    with crm.tx() as s:
        a = st.find_or_create_customer(s, {"phone": "20"})
        cp = st.issue_coupon(s, "tyre", a, T0 + dt.timedelta(days=30))
    with pytest.raises(CouponStateError, match="expired on 2026-01-31"), crm.tx() as s:
        loyalty.redeem_coupon(s, cp.id, a, now=T0 + dt.timedelta(days=31))
    with crm.tx() as s:
        assert st.expire_coupons(s, now=T0 + dt.timedelta(days=31)) == 1


def test_effects_happen_once(crm: st.CrmStore) -> None:
    with crm.tx() as s:
        assert st.claim_effect(s, "service-due", "VIN1", "2026-06", "coupon")
        assert not st.claim_effect(s, "service-due", "VIN1", "2026-06", "coupon")
        assert st.claim_effect(s, "service-due", "VIN1", "2026-07", "coupon")


def test_audit_log_is_append_only_even_in_sql(crm: st.CrmStore) -> None:
    with crm.tx() as s:
        rec = st.audit(s, "agent-7", "location.read", "VIN1", "crash-alert", ticket="T-1")
    with pytest.raises(CrmError, match="append-only"), crm.tx() as s:
        row = s.get(AuditRecord, rec.id)
        assert row is not None
        row.actor = "someone-else"
    with pytest.raises(Exception, match="append-only"), crm.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log"))


@pytest.mark.integration
def test_concurrent_redemptions_exactly_one_succeeds_on_postgresql(postgres_url: str) -> None:
    name = "t_" + uuid.uuid4().hex[:10]
    admin = st.make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    engine = st.make_engine(postgres_url.rsplit("/", 1)[0] + "/" + name, pool_size=20)
    upgrade(engine)
    crm = st.CrmStore(engine)
    with crm.tx() as s:
        s.add(
            CouponTemplate(
                code="oil", title_zh="机油券", title_en="Oil coupon", value=100, valid_days=30
            )
        )
    for _round in range(5):
        with crm.tx() as s:
            c = st.find_or_create_customer(s, {"phone": f"r{_round}"})
            coupon_id = st.issue_coupon(s, "oil", c, T0 + dt.timedelta(days=3650)).id
        barrier = threading.Barrier(8)
        outcomes: list[str] = []

        def redeem(
            c: str = c,
            coupon_id: str = coupon_id,
            barrier: threading.Barrier = barrier,
            outcomes: list[str] = outcomes,
        ) -> None:
            barrier.wait()
            try:
                with crm.tx() as s:
                    loyalty.redeem_coupon(s, coupon_id, c)
                outcomes.append("ok")
            except CouponStateError:
                outcomes.append("refused")

        threads = [threading.Thread(target=redeem) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["ok"] + ["refused"] * 7
    engine.dispose()


def test_a_savepoint_on_sqlite_waits_for_the_write_lock_instead_of_failing(tmp_path: Path) -> None:
    """A savepoint opened outside a transaction read a snapshot; another connection committed
    before its first write; SQLite said "database is locked" at once (the DTC card of a sold
    car lost in CI). Now the savepoint takes the write lock first and the other writer waits."""
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    a, b = st.make_engine(url), st.make_engine(url)
    with a.begin() as c:
        c.execute(text("CREATE TABLE t (x INTEGER)"))
    waited: list[float] = []

    def other_writer() -> None:
        t0 = time.monotonic()
        with b.begin() as c:
            c.execute(text("INSERT INTO t VALUES (2)"))
        waited.append(time.monotonic() - t0)

    with Session(a) as s, s.begin():
        with s.begin_nested():
            s.execute(text("SELECT * FROM t")).all()
            th = threading.Thread(target=other_writer)
            th.start()
            time.sleep(0.3)  # the other writer commits here unless this one holds the lock
            s.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(RuntimeError), s.begin_nested():  # a savepoint still rolls back alone
            s.execute(text("INSERT INTO t VALUES (9)"))
            raise RuntimeError
    th.join(10)
    with a.connect() as c:
        assert c.execute(text("SELECT x FROM t ORDER BY rowid")).scalars().all() == [1, 2]
    assert waited and waited[0] >= 0.2  # it waited for the savepoint's transaction
    a.dispose()
    b.dispose()
