"""Issue #15, item 7: coupons and the audit log as an attacker (or a race) tries them, on a real
PostgreSQL (the ``postgres_url`` server) where concurrency and roles matter, and on SQLite where
the same rule holds. Each refusal sits next to the legitimate use it must keep working."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from carpulse.cli import app as cli
from core.errors import CouponStateError, CrmError
from crm import loyalty
from crm import store as st
from crm.migrate import upgrade
from crm.schema import AuditRecord, Coupon, CouponShare, CouponTemplate
from tests.conftest import new_postgres_database

pytestmark = pytest.mark.security
LATER = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)


def _seed(store: st.CrmStore) -> tuple[str, str]:
    with store.tx() as s:
        s.add(CouponTemplate(code="tyre", title_zh="轮胎券", title_en="Tyre", valid_days=30))
        a = st.find_or_create_customer(s, {"phone": "+8613800000001"}, "A")
        b = st.find_or_create_customer(s, {"phone": "+8613800000002"}, "B")
    return a, b


@pytest.fixture
def pg(postgres_url: str, postgres_migrated: str) -> Iterator[tuple[st.CrmStore, str, str, str]]:
    url = new_postgres_database(postgres_url, postgres_migrated)
    store = st.CrmStore(st.make_engine(url, pool_size=20))
    upgrade(store.engine)
    a, b = _seed(store)
    yield store, a, b, url
    store.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[st.CrmStore, str]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    else:
        url = new_postgres_database(
            request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_migrated")
        )
    store = st.CrmStore.from_url(url)
    upgrade(store.engine)
    yield store, url
    store.engine.dispose()


def _issue(store: st.CrmStore, holder: str) -> str:
    with store.tx() as s:
        return st.issue_coupon(s, "tyre", holder, LATER).id


def _race_behind_a_redemption(store: st.CrmStore, cid: str, redeemer: str, other: Any) -> Any:
    """Redeem in an open transaction, start ``other`` (a share or a void) in a thread while the
    redemption is uncommitted, then commit it: ``other`` must see the redemption, not undo it."""
    outcome: dict[str, Any] = {}
    tx = Session(store.engine, expire_on_commit=False)
    tx.begin()
    loyalty.redeem_coupon(tx, cid, redeemer)  # holds the coupon's row lock until commit

    def run() -> None:
        try:
            with store.tx() as s:
                other(s)
            outcome["ok"] = True
        except CouponStateError as err:
            outcome["refused"] = str(err)

    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.5)  # the share/void has read the coupon and now waits for the row
    tx.commit()
    tx.close()
    th.join(15)
    assert not th.is_alive()
    return outcome


@pytest.mark.integration
def test_a_share_cannot_overwrite_a_redemption_on_postgresql(pg: Any) -> None:
    store, a, b, _ = pg
    cid = _issue(store, a)
    outcome = _race_behind_a_redemption(store, cid, a, lambda s: st.share_coupon(s, cid, a, b))
    assert "it is redeemed" in outcome.get("refused", ""), outcome  # refused, not overwritten
    with store.tx() as s:
        c = s.get(Coupon, cid)
        assert c is not None and (c.state, c.holder_id, c.redeemed_by) == ("redeemed", a, a)
        assert s.scalars(select(CouponShare).where(CouponShare.coupon_id == cid)).all() == []
    legit = _issue(store, a)  # sharing and redeeming in turn still work
    with store.tx() as s:
        st.share_coupon(s, legit, a, b)
    with store.tx() as s:
        loyalty.redeem_coupon(s, legit, b)
        assert s.get(Coupon, legit).redeemed_by == b  # type: ignore[union-attr]


@pytest.mark.integration
def test_racing_shares_and_redemptions_settle_to_exactly_one_on_postgresql(pg: Any) -> None:
    store, a, b, _ = pg
    ids = [_issue(store, a) for _ in range(12)]

    def attempt(fn: Any, barrier: threading.Barrier, wins: list[str], name: str) -> None:
        barrier.wait(5)
        try:
            with store.tx() as s:
                fn(s)
            wins.append(name)
        except CouponStateError:
            pass

    for cid in ids:
        barrier, wins = threading.Barrier(2), []
        share = threading.Thread(target=attempt, args=(
            lambda s, c=cid: st.share_coupon(s, c, a, b), barrier, wins, "share"))  # fmt: skip
        redeem = threading.Thread(target=attempt, args=(
            lambda s, c=cid: loyalty.redeem_coupon(s, c, a), barrier, wins, "redeem"))  # fmt: skip
        share.start(), redeem.start()
        share.join(15), redeem.join(15)
        assert len(wins) == 1, (cid, wins)  # exactly one of the two took effect
        with store.tx() as s:
            c = s.get(Coupon, cid)
            shares = s.scalars(select(CouponShare).where(CouponShare.coupon_id == cid)).all()
            assert c is not None
            if wins == ["redeem"]:
                assert (c.state, c.holder_id, c.redeemed_by, len(shares)) == ("redeemed", a, a, 0)
            else:
                assert (c.state, c.holder_id, c.redeemed_by, len(shares)) == ("shared", b, None, 1)


def test_the_share_chain_is_append_only(any_db: Any) -> None:
    store, _url = any_db
    a, b = _seed(store)
    cid = _issue(store, a)
    with store.tx() as s:
        st.share_coupon(s, cid, a, b)
    with pytest.raises(CrmError, match="append-only"), store.tx() as s:
        row = s.scalars(select(CouponShare)).one()
        row.to_id = a  # rewrite who got it
    with pytest.raises(CrmError, match="append-only"), store.tx() as s:
        s.delete(s.scalars(select(CouponShare)).one())
    for sql in ("UPDATE coupon_shares SET to_id = from_id", "DELETE FROM coupon_shares"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(sql))
    with store.tx() as s:  # the chain is intact and grows: b passes it back
        st.share_coupon(s, cid, b, a)
        chain = [
            (x.from_id, x.to_id) for x in s.scalars(select(CouponShare).order_by(CouponShare.id))
        ]
        assert chain == [(a, b), (b, a)]


def test_the_inbox_issues_only_allowlisted_coupon_templates(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from crm import delivery
    from dashboards.app import DashboardConfig, create_app
    from tests.unit.dashboards.conftest import VIN_A, login, make_store

    store = make_store(tmp_path / "crm.sqlite")
    with store.tx() as s:
        s.add(CouponTemplate(code="VIP500", title_zh="贵宾券", title_en="500 off", value=500))
        item = delivery.file_card(s, role="advisor", kind="maintenance", key="m|vip", vin=VIN_A,
                                  title="oil_life due", data={"kind": "oil_life"})  # fmt: skip
        item_id = item.id
    app = create_app(
        DashboardConfig(
            crm_url=f"sqlite:///{tmp_path / 'crm.sqlite'}", coupon_templates=["SERVICE10"]
        )
    )
    with TestClient(app, base_url="https://testserver") as c:
        token = login(c, "advisor")
        page = c.get("/inbox").text
        assert "<option>VIP500</option>" not in page and "<option>SERVICE10</option>" in page
        r = c.post(f"/inbox/{item_id}/coupon", data={"template": "VIP500", "csrf_token": token})
        assert r.status_code == 403  # refused although the CRM has the template
        ok = c.post(f"/inbox/{item_id}/coupon", data={"template": "SERVICE10", "csrf_token": token},
                    follow_redirects=False)  # fmt: skip
        assert ok.status_code == 303
    with store.tx() as s:
        issued = [
            x.template_code
            for x in s.scalars(select(Coupon).where(Coupon.effect_key.like("inbox|%")))
        ]
        assert issued == ["SERVICE10"]
        denied = s.scalars(
            select(AuditRecord).where(AuditRecord.action == "inbox.coupon.denied")
        ).all()
        assert [d.detail["template"] for d in denied] == ["VIP500"]


@pytest.mark.integration
def test_the_application_role_cannot_change_the_audit_log_on_postgresql(
    pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from dashboards import auth
    from dashboards.app import DashboardConfig, create_app
    from tests.unit.dashboards.conftest import login

    store, a, b, owner_url = pg
    role = "app_" + uuid.uuid4().hex[:8]
    monkeypatch.setenv("CARPULSE_CRM_APP_PASSWORD", "app-password-1")
    res = CliRunner().invoke(cli, ["crm", "app-role", "--db", owner_url, "--role", role])
    assert res.exit_code == 0, res.output
    assert "app-password-1" not in res.output
    again = CliRunner().invoke(cli, ["crm", "migrate", "--db", owner_url, "--app-role", role])
    assert again.exit_code == 0 and f"granted {role}" in again.output  # idempotent, after migrate
    with store.tx() as s:
        auth.add_user(s, "agent", "carpulse-demo", "call_centre_agent", "dealer-a")
    app_url = owner_url.replace("carpulse@", f"{role}:app-password-1@")
    app_store = st.CrmStore.from_url(app_url)
    # the application's work goes on through the role: coupons, their audit rows, the dashboards
    cid = _issue(app_store, a)
    with app_store.tx() as s:
        st.share_coupon(s, cid, a, b)
    with app_store.tx() as s:
        loyalty.redeem_coupon(s, cid, b)
    web = create_app(DashboardConfig(crm_url=app_url))
    with TestClient(web, base_url="https://testserver") as c:
        login(c, "agent")
        assert c.get("/console").status_code == 200
    web.state.crm.engine.dispose()
    with app_store.tx() as s:
        actions = s.scalars(select(AuditRecord.action).order_by(AuditRecord.id)).all()
    assert {"coupon.issue", "coupon.share", "coupon.redeem", "login"} <= set(actions)
    refused = (
        "UPDATE audit_log SET actor = 'nobody'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DROP TABLE audit_log",
        "UPDATE coupon_shares SET to_id = from_id",
        "TRUNCATE coupon_shares",
    )
    for sql in refused:
        with (
            pytest.raises(DBAPIError, match=r"permission denied|must be (the )?owner"),
            app_store.engine.begin() as conn,
        ):
            conn.execute(text(sql))
    verify = CliRunner().invoke(cli, ["crm", "audit", "verify", "--db", app_url])
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.output)["rows"] == len(actions)
    app_store.engine.dispose()


def _verify(url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    res = CliRunner().invoke(cli, ["crm", "audit", "verify", "--db", url, *extra])
    return res.exit_code, json.loads(res.stdout)


def _as_owner(store: st.CrmStore, sql: str) -> None:
    """What someone with the owner's (or the file's) access does: lift the trigger, change rows."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_log_no_update"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_log_no_delete"))
        conn.execute(text(sql))


def test_audit_verify_finds_an_edited_and_a_deleted_row(any_db: Any) -> None:
    store, url = any_db
    for i in range(6):
        with store.tx() as s:
            st.audit(s, "agent", "location.read", f"VIN{i}", "crash-response", ticket=f"T-{i}")
    with store.tx() as s:
        ids = s.scalars(select(AuditRecord.id).order_by(AuditRecord.id)).all()
    code, doc = _verify(url)
    assert code == 0 and doc["ok"] and doc["rows"] == 6
    head = doc["head"]
    _as_owner(store, f'UPDATE audit_log SET detail = \'{{"ticket": "T-X"}}\' WHERE id = {ids[1]}')
    code, doc = _verify(url)
    assert (
        code == 1 and {"id": ids[1], "problem": "edited: content does not match"} in doc["problems"]
    )
    _as_owner(store, f"DELETE FROM audit_log WHERE id = {ids[3]}")
    code, doc = _verify(url)
    gaps = [p["id"] for p in doc["problems"] if p["problem"].startswith("gap")]
    assert code == 1 and gaps == [ids[4]]  # the row after the hole names it
    _as_owner(store, f"DELETE FROM audit_log WHERE id = {ids[5]}")  # cut off the end
    code, doc = _verify(url, "--expect-head", head)
    assert code == 1 and any("rows lost at the end" in p["problem"] for p in doc["problems"])


def test_concurrent_writers_keep_one_audit_chain(any_db: Any) -> None:
    """Eight threads commit audited transactions at once: one chain, no fork, nothing lost
    (PostgreSQL: the advisory lock; SQLite: the write lock)."""
    store, url = any_db
    a, _b = _seed(store)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(10):
                with store.tx() as s:
                    st.audit(s, f"w{n}", "load.test", a, n=n, i=i)
                    st.audit(s, f"w{n}", "load.test", a, n=n, i=i, second=True)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    code, doc = _verify(url)
    assert code == 0, doc["problems"][:3]
    with store.tx() as s:
        assert (
            len(s.scalars(select(AuditRecord.id).where(AuditRecord.action == "load.test")).all())
            == 160
        )
