"""read_location with the dashboard's live fix: same checks and audit, ownership period, the
crash-response exception, and the one inbox's dealer-scoped actions (crm.delivery)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from core.errors import CrmError, DuplicateAction, InboxScopeError, PrivacyError
from crm import delivery as dl
from crm import privacy as pv
from crm import store as st
from crm.schema import AuditRecord, Coupon, Customer, Vehicle, utcnow
from crm.tables import InboxItem, LocationFix
from tests.unit.crm.conftest import VIN, VIN2, Dealer


def audits(d: Dealer, action: str) -> list[AuditRecord]:
    with d.store.tx() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def fixes(d: Dealer, vin: str) -> int:
    with d.store.tx() as s:
        return s.scalar(select(func.count(LocationFix.id)).where(LocationFix.vin == vin)) or 0


def test_live_fix_goes_through_the_same_checks_and_is_kept_with_consent(dealer: Dealer) -> None:
    now = utcnow()
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", True)
        pv.record_location(s, VIN, now - dt.timedelta(hours=2), 30.0, 120.0, "crash-alert")
    live = pv.Fix(VIN, now, 31.5, 121.5, "vehicle-state")
    with dealer.store.tx() as s:
        fix = pv.read_location(s, "agent-7", VIN, "roadside-assistance", "T-1", live=live)
    assert fix is not None and (fix.lat, fix.source) == (31.5, "vehicle-state")
    assert fixes(dealer, VIN) == 2  # the live fix is now the CRM's last known place
    older = pv.Fix(VIN, now - dt.timedelta(hours=3), 1.0, 2.0, "vehicle-state")
    with dealer.store.tx() as s:  # a stale live fix does not hide a newer stored one
        fix = pv.read_location(s, "agent-7", VIN, "roadside-assistance", "T-2", live=older)
    assert fix is not None and fix.lat == 31.5
    # no consent: the live fix is refused like a stored one, and the refusal is audited
    with pytest.raises(PrivacyError, match="not consented"), dealer.store.tx() as s:
        pv.read_location(s, "agent-7", VIN2, "customer-request", "T-3",
                         live=pv.Fix(VIN2, now, 1.0, 2.0, "vehicle-state"))  # fmt: skip
    assert fixes(dealer, VIN2) == 0
    rec = audits(dealer, "location.read")
    assert [r.detail["source"] for r in rec] == ["vehicle-state", "vehicle-state"]
    assert [r.detail["ticket"] for r in audits(dealer, "location.read.denied")] == ["T-3"]


def test_a_new_owner_never_sees_a_live_fix_from_before_the_sale(dealer: Dealer) -> None:
    now = utcnow()
    with dealer.store.tx() as s:
        buyer = st.find_or_create_customer(s, {"phone": "+8613800000009"})
        st.set_consent(s, buyer, "location", True)
        st.transfer_ownership(s, VIN, buyer, now - dt.timedelta(hours=1))
    before = pv.Fix(VIN, now - dt.timedelta(hours=2), 31.0, 121.0, "vehicle-state")
    with dealer.store.tx() as s:
        assert pv.read_location(s, "agent-7", VIN, "customer-request", "T-1", live=before) is None
    after = pv.Fix(VIN, now, 31.1, 121.1, "vehicle-state")
    with dealer.store.tx() as s:
        fix = pv.read_location(s, "agent-7", VIN, "customer-request", "T-2", live=after)
    assert fix is not None and fix.lat == 31.1


def test_crash_response_without_consent_needs_a_crash_on_record(dealer: Dealer) -> None:
    now = utcnow()
    live = pv.Fix(VIN2, now, 31.2, 121.2, "vehicle-state")
    with pytest.raises(PrivacyError, match="no crash"), dealer.store.tx() as s:
        pv.read_location(s, "agent-7", VIN2, "crash-response", "T-1", live=live)
    with dealer.store.tx() as s:  # the crash rule's call-centre card
        dl.file_card(s, role="call_centre", kind="crash", key="crash-call-centre|x|1", vin=VIN2,
                     title="CRASH")  # fmt: skip
    with dealer.store.tx() as s:
        fix = pv.read_location(s, "agent-7", VIN2, "crash-response", "T-1", live=live)
    assert fix is not None and fix.lat == 31.2
    assert fixes(dealer, VIN2) == 0  # shown for the emergency, not kept without consent
    rec = audits(dealer, "location.read")[-1]
    assert rec.detail["emergency"] is True and rec.detail["consent"] is False
    with pytest.raises(PrivacyError), dealer.store.tx() as s:  # other purposes still refused
        pv.read_location(s, "agent-7", VIN2, "customer-request", "T-2", live=live)


def test_dealer_inbox_scope_and_audited_actions(dealer: Dealer) -> None:
    with dealer.store.tx() as s:
        v2 = s.get(Vehicle, VIN2)
        c2 = s.get(Customer, dealer.other)
        assert v2 is not None and c2 is not None
        v2.dealer_id = c2.dealer_id = "dealer-b"
        a = dl.file_card(s, role="advisor", kind="maintenance", key="k|a", vin=VIN, title="A",
                         data={"evidence": [[1, 2.0]]})  # fmt: skip
        b = dl.file_card(s, role="expert", kind="dtc", key="k|b", vin=VIN2, title="B")
        c = dl.file_card(s, role="call_centre", kind="crash", key="k|c", vin=VIN, title="C")
        g = dl.file_card(s, role="advisor", kind="gate_arrival", key="k|g", title="G",
                         customer_id=dealer.member)  # fmt: skip
        ids = a.id, b.id, c.id, g.id
        mine = dealer_id = s.get(Vehicle, VIN).dealer_id  # type: ignore[union-attr]
        assert {i.title for i in dl.dealer_inbox(s, mine)} == {"A", "G"}
        assert [i.title for i in dl.dealer_inbox(s, "dealer-b")] == ["B"]
        # refiling updates the card, keeps its actions
        dl.file_card(s, role="advisor", kind="maintenance", key="k|a", vin=VIN, title="A2")
    with dealer.store.tx() as s:
        for wrong in (ids[1], ids[2], 10**9):
            with pytest.raises(InboxScopeError):
                dl.acknowledge(s, wrong, "adv", dealer_id)
        dl.acknowledge(s, ids[0], "adv", dealer_id)
        dl.coupon(s, ids[0], "maintenance", "adv", dealer_id)
        with pytest.raises(DuplicateAction):
            dl.coupon(s, ids[0], "maintenance", "adv", dealer_id)
        dl.book(s, ids[0], utcnow() + dt.timedelta(days=2), "adv", dealer_id)
        dl.coupon(s, ids[3], "maintenance", "adv", dealer_id)  # a customer-only arrival card
        with pytest.raises(CrmError, match="no vehicle"):
            dl.book(s, ids[3], utcnow(), "adv", dealer_id)
    with dealer.store.tx() as s:
        item = s.get(InboxItem, ids[0])
        assert item is not None and item.title == "A2" and dl.card_state(item) == "booked"
        assert item.done_at is not None
        held = s.scalars(select(Coupon.holder_id).where(Coupon.effect_key.like("inbox|%"))).all()
        assert sorted(held) == sorted([dealer.member, dealer.member])
    acts = [r.action for r in audits(dealer, "inbox.acknowledge") + audits(dealer, "inbox.coupon")
            + audits(dealer, "inbox.book")]  # fmt: skip
    assert acts == ["inbox.acknowledge", "inbox.coupon", "inbox.coupon", "inbox.book"]
