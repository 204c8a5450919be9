"""Member links (crm.member_links): signed sign-in and share tokens, one claim per share link,
short codes, counter redemption (one winner of N parallel scans, SQLite and PostgreSQL) and the
member's own view (current ownership only)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import func, select

from core.errors import ClaimError, CounterError, CouponStateError, CrmError, LinkError
from crm import loyalty
from crm import member_links as ml
from crm import store as st
from crm.schema import AuditRecord, Consent, Coupon, CouponShare, CustomerIdentity, utcnow
from crm.tables import ServiceRecord
from tests.unit.crm.conftest import VIN, VIN2, Dealer

KEY = b"k" * 32
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _coupon(d: Dealer, holder: str, days: float = 30) -> str:
    with d.store.tx() as s:
        return st.issue_coupon(s, "maintenance", holder, utcnow() + dt.timedelta(days=days)).id


def test_sign_in_token_names_one_member_and_expires() -> None:
    cid = "a" * 32
    tok = ml.sign_in_token(KEY, cid, dt.timedelta(hours=1), now=NOW)
    got = ml.read_sign_in(KEY, tok, now=NOW + dt.timedelta(minutes=59))
    assert got.customer_id == cid and len(got.nonce) == 24
    with pytest.raises(LinkError) as err:
        ml.read_sign_in(KEY, tok, now=NOW + dt.timedelta(hours=1))
    assert err.value.reason == "expired"
    swapped = tok.replace(cid, "b" * 32)  # another member's id under the same signature
    with pytest.raises(LinkError) as err:
        ml.read_sign_in(KEY, swapped, now=NOW)
    assert err.value.reason == "tampered"
    later = tok.split(".")
    later[2] = str(int(later[2]) + 86400)  # a longer life
    with pytest.raises(LinkError, match="changed"):
        ml.read_sign_in(KEY, ".".join(later), now=NOW)
    with pytest.raises(LinkError) as err:
        ml.read_sign_in(b"other-key", tok, now=NOW)
    assert err.value.reason == "tampered"
    for bad in ("", "i1.x", tok[:-1] + ".", "s1." + tok[3:], "x" * 400):
        with pytest.raises(LinkError):
            ml.read_sign_in(KEY, bad, now=NOW)


def test_short_codes_parse_typed_and_scanned_forms() -> None:
    cid = "1a2b3c4d5e6f" + "0" * 20
    assert ml.short_code(cid) == "1A2B-3C4D-5E6F"
    for typed in ("1A2B-3C4D-5E6F", " 1a2b 3c4d 5e6f ", "1a2b3c4d5e6f", "x?code=1A2B-3C4D-5E6F"):
        assert ml.parse_code(typed) == "1a2b3c4d5e6f"
    for bad in ("", "1A2B", "ZZZZ-3C4D-5E6F", "1a2b3c4d5e6f'; --", "%" * 12):
        with pytest.raises(CounterError) as err:
            ml.parse_code(bad)
        assert err.value.reason == "bad"


def test_share_claim_once_records_prospect_consent_and_chain(dealer: Dealer) -> None:
    coupon = _coupon(dealer, dealer.member)
    with dealer.store.tx() as s:
        tok = ml.share_token(s, KEY, coupon, dealer.member)
    with pytest.raises(ClaimError) as err, dealer.store.tx() as s:
        ml.claim_share(s, KEY, tok, "+86 139 0000 0009", "", terms=False, marketing=True)
    assert err.value.reason == "terms"
    with pytest.raises(ClaimError) as err, dealer.store.tx() as s:  # the sharer's own phone
        ml.claim_share(s, KEY, tok, "+8613800000001", "", terms=True, marketing=False)
    assert err.value.reason == "own"
    with dealer.store.tx() as s:
        got, friend, new = ml.claim_share(
            s, KEY, tok, "+86 139-0000-0009", "赵", terms=True, marketing=False
        )
    assert got == coupon and new
    with dealer.store.tx() as s:
        c = s.get(Coupon, coupon)
        assert c is not None and c.holder_id == friend and c.state == "shared"
        chain = list(s.scalars(select(CouponShare).where(CouponShare.coupon_id == coupon)))
        assert [(r.from_id, r.to_id) for r in chain] == [(dealer.member, friend)]
        ident = s.scalar(select(CustomerIdentity).where(CustomerIdentity.customer_id == friend))
        assert ident is not None and (ident.value, ident.source) == (
            "+8613900000009",
            "coupon-claim",
        )
        consent = s.scalar(select(Consent).where(Consent.customer_id == friend))
        assert consent is not None and consent.purpose == "marketing" and consent.granted is False
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "coupon.claim"))
        assert rec is not None and rec.detail["prospect"] is True and rec.actor == friend
    # the same link again, by someone else: refused, nothing changes
    with pytest.raises(LinkError) as lerr, dealer.store.tx() as s:
        ml.claim_share(s, KEY, tok, "+8613900000010", "", terms=True, marketing=False)
    assert lerr.value.reason == "used"
    # even after the coupon comes back to the sharer, the old link stays dead
    with dealer.store.tx() as s:
        st.share_coupon(s, coupon, friend, dealer.member)
    with pytest.raises(LinkError, match="already claimed"), dealer.store.tx() as s:
        ml.claim_share(s, KEY, tok, "+8613900000010", "", terms=True, marketing=False)


def test_only_the_holder_can_make_a_share_link(dealer: Dealer) -> None:
    coupon = _coupon(dealer, dealer.member)
    with pytest.raises(CrmError, match="unknown coupon"), dealer.store.tx() as s:
        ml.share_token(s, KEY, coupon, dealer.other)
    expired = _coupon(dealer, dealer.member, days=-1)
    with pytest.raises(CouponStateError), dealer.store.tx() as s:
        ml.share_token(s, KEY, expired, dealer.member)


def test_parallel_claims_of_one_link_one_wins(dealer: Dealer) -> None:
    coupon = _coupon(dealer, dealer.member)
    with dealer.store.tx() as s:
        tok = ml.share_token(s, KEY, coupon, dealer.member)
    barrier, outcomes = threading.Barrier(6), []

    def claim(i: int) -> None:
        barrier.wait()
        try:
            for _attempt in range(20):
                try:
                    with dealer.store.tx() as s:
                        ml.claim_share(s, KEY, tok, f"+861390000100{i}", "", terms=True,
                                       marketing=True)  # fmt: skip
                    outcomes.append("ok")
                    return
                except CrmError:
                    raise
                except Exception:  # SQLite busy: try again, as the page's user would
                    continue
        except (LinkError, CouponStateError):
            outcomes.append("refused")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 5
    with dealer.store.tx() as s:
        n = s.scalar(select(func.count(CouponShare.id)).where(CouponShare.coupon_id == coupon))
    assert n == 1


def test_counter_refuses_with_clear_reasons(dealer: Dealer) -> None:
    coupon = _coupon(dealer, dealer.member)
    code = ml.short_code(coupon)
    with pytest.raises(CounterError) as err:
        ml.redeem_code(dealer.store, code, "adv", "dealer-z")
    assert err.value.reason == "other_dealer"
    with pytest.raises(CounterError, match="no coupon has the code") as err:
        ml.redeem_code(dealer.store, "0000-0000-0000", "adv", "default")
    got = ml.redeem_code(dealer.store, code.lower().replace("-", " "), "adv", "default")
    assert got["id"] == coupon and got["holder"] == dealer.member
    with pytest.raises(CounterError, match="already used on") as err:
        ml.redeem_code(dealer.store, code, "adv", "default")
    assert err.value.reason == "redeemed"
    old = _coupon(dealer, dealer.member, days=-2)
    with pytest.raises(CounterError, match="expired on") as err:
        ml.redeem_code(dealer.store, ml.short_code(old), "adv", "default")
    voided = _coupon(dealer, dealer.member)
    with dealer.store.tx() as s:  # as a privacy erasure leaves the member's live coupons
        coupon = s.get(Coupon, voided)
        assert coupon is not None
        coupon.state = "voided"
    with pytest.raises(CounterError, match="voided"):
        ml.redeem_code(dealer.store, ml.short_code(voided), "adv", "default")
    with dealer.store.tx() as s:
        actions = [
            (r.action, r.detail.get("reason"))
            for r in s.scalars(
                select(AuditRecord).where(AuditRecord.action.like("coupon.redeem.%"))
            )
        ]
    assert actions.count(("coupon.redeem.counter", None)) == 1
    assert {a[1] for a in actions if a[0] == "coupon.redeem.refused"} == {
        "other_dealer", "unknown", "redeemed", "expired", "voided"
    }  # fmt: skip


def test_parallel_scans_exactly_one_redeems(dealer: Dealer) -> None:
    for _round in range(3):
        code = ml.short_code(_coupon(dealer, dealer.member))
        barrier, outcomes = threading.Barrier(8), []

        def scan(code: str = code, barrier: threading.Barrier = barrier,
                 outcomes: list[str] = outcomes) -> None:  # fmt: skip
            barrier.wait()
            try:
                ml.redeem_code(dealer.store, code, "adv", "default", attempts=50)
                outcomes.append("ok")
            except CounterError as err:
                outcomes.append(err.reason)

        threads = [threading.Thread(target=scan) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["ok"] + ["redeemed"] * 7


def test_member_view_shows_only_the_current_ownership(dealer: Dealer) -> None:
    """VIN2 passes from ``other`` to ``member``: the new owner sees it with the service records
    from the day of the sale only; the previous owner no longer sees it at all."""
    sold = utcnow() - dt.timedelta(days=10)
    with dealer.store.tx() as s:
        s.add(ServiceRecord(vin=VIN2, service_date=(sold - dt.timedelta(days=100)).date(),
                            odometer_km=20000, work="previous owner's oil change"))  # fmt: skip
        s.add(ServiceRecord(vin=VIN2, service_date=(sold + dt.timedelta(days=2)).date(),
                            odometer_km=26000, work="new owner's inspection"))  # fmt: skip
        st.transfer_ownership(s, VIN2, dealer.member, sold)
    mine, theirs = _coupon(dealer, dealer.member), _coupon(dealer, dealer.other)
    with dealer.store.tx() as s:
        view = ml.member_view(s, dealer.member)
        before = ml.member_view(s, dealer.other)
    assert {v["vin"] for v in view.vehicles} == {VIN, VIN2}
    v2 = next(v for v in view.vehicles if v["vin"] == VIN2)
    assert [r["work"] for r in v2["services"]] == ["new owner's inspection"]
    assert v2["next"]["source"] == "schedule"
    assert before.vehicles == []
    assert [c["id"] for c in view.coupons["valid"]] == [mine]
    assert theirs not in str(view.coupons) and mine not in str(before.coupons)
    # the tier as its id (crm/loyalty.yaml), named in the page's language by crm.loyalty.tier_name
    assert view.points is not None and view.tier == "standard"
    assert (
        loyalty.tier_name(view.tier) == "普卡" and loyalty.tier_name(view.tier, "en") == "Standard"
    )


def test_member_view_points_and_next_tier_come_from_the_ledger(dealer: Dealer) -> None:
    """Points are the ledger's balance (crm.loyalty), the next tier what the window still lacks;
    a service closed with an amount moves both, and at the top there is no next tier."""
    cfg = loyalty.config()
    silver, gold, top = (cfg.level(t) for t in ("silver", "gold", "platinum"))
    assert silver and gold and top
    with dealer.store.tx() as s:
        before = ml.member_view(s, dealer.member)
        have = loyalty.window_points(s, dealer.member, utcnow())
    assert before.points is not None and before.next_tier is not None
    level = cfg.level(before.tier)
    assert (
        level is not None
        and before.next_tier["tier"] == cfg.tiers.levels[cfg.rank(level.id) + 1].id
    )
    assert before.next_tier["points"] == max(
        cfg.level(before.next_tier["tier"]).min_points - have,
        0,  # type: ignore[union-attr]
    )
    amount = (gold.min_points - have) * cfg.points.service_cny_per_point  # exactly to 金卡
    with dealer.store.tx() as s:
        done = loyalty.close_service(s, vin=VIN, amount=amount, advisor="li", odometer_km=30_000)
        after = ml.member_view(s, dealer.member)
        assert after.points == loyalty.balance(s, dealer.member) == before.points + done.written
    assert done.written == gold.min_points - have > 0
    assert after.tier == "gold" and after.next_tier == {"tier": "platinum",
                                                        "points": top.min_points - gold.min_points}  # fmt: skip
    with dealer.store.tx() as s:
        loyalty.close_service(s, vin=VIN, amount=top.min_points * 10, advisor="li")
        assert ml.member_view(s, dealer.member).next_tier is None
