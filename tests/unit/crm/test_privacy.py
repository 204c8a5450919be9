"""Privacy on SQLite and PostgreSQL: consent-gated location and face data, audited location
reads, retention purge, erasure that keeps the audit log."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from core.errors import PrivacyError
from crm import privacy as pv
from crm import store as st
from crm.schema import AuditRecord, Coupon, CustomerIdentity, utcnow
from crm.tables import CustomerContact, GateSighting, LocationFix, OutboxMessage
from tests.unit.crm.conftest import VIN, VIN2, Dealer


def audits(d: Dealer, action: str) -> list[AuditRecord]:
    with d.store.tx() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def test_location_kept_and_read_only_with_consent_and_every_read_audited(dealer: Dealer) -> None:
    now = utcnow()
    with dealer.store.tx() as s:
        assert not pv.record_location(s, VIN, now, 31.23, 121.47, "alert")  # no consent yet
        st.set_consent(s, dealer.member, "location", True, source="app")
    with dealer.store.tx() as s:
        assert pv.record_location(s, VIN, now, 31.23, 121.47, "alert")
        assert not pv.record_location(s, VIN2, now, 30.0, 120.0, "alert")  # other owner: no
    with dealer.store.tx() as s:
        fix = pv.read_location(s, "agent-7", VIN, "crash-response", "T-100")
        assert fix is not None and (fix.lat, fix.lon) == (31.23, 121.47)
    for vin, purpose, ticket, why in [
        (VIN, "crash-response", " ", "a ticket is required"),
        (VIN, "curiosity", "T-101", "unknown purpose 'curiosity'"),
        (VIN2, "crash-response", "T-102", "has not consented"),
    ]:
        with pytest.raises(PrivacyError, match=why), dealer.store.tx() as s:
            pv.read_location(s, "agent-7", vin, purpose, ticket)
    granted = audits(dealer, "location.read")
    assert [(a.actor, a.subject, a.purpose, a.detail["ticket"]) for a in granted] == [
        ("agent-7", VIN, "crash-response", "T-100")
    ]
    denied = audits(dealer, "location.read.denied")  # refusals are on record although rolled back
    assert [a.detail["ticket"] for a in denied] == [" ", "T-101", "T-102"]


def test_new_owner_period_hides_previous_fixes(dealer: Dealer) -> None:
    now = utcnow()
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", True)
        pv.record_location(s, VIN, now - dt.timedelta(days=2), 31.0, 121.0)
        buyer = st.find_or_create_customer(s, {"phone": "+8613800000009"})
        st.set_consent(s, buyer, "location", True)
        st.transfer_ownership(s, VIN, buyer, now - dt.timedelta(days=1))
    with dealer.store.tx() as s:
        assert pv.read_location(s, "agent-7", VIN, "customer-request", "T-1") is None


def test_face_match_needs_face_consent(dealer: Dealer) -> None:
    now = utcnow()
    with dealer.store.tx() as s:
        a = pv.record_gate_sighting(s, now, "gate-1", "沪A12345", VIN, dealer.member, dealer.member)
        b = pv.record_gate_sighting(s, now, "gate-1", "沪B99999", VIN2, dealer.other, dealer.other)
        st.set_consent(s, dealer.member, "face", True)
        c = pv.record_gate_sighting(s, now, "gate-1", "沪A12345", VIN, dealer.member, dealer.member)
        s.flush()
        assert (a.face_customer_id, b.face_customer_id, c.face_customer_id) == (
            None,
            None,
            dealer.member,
        )


def test_purge_keeps_each_class_for_its_retention(dealer: Dealer) -> None:
    now = utcnow()
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", True)
        st.set_consent(s, dealer.member, "face", True)
        for age in (1, 89, 91, 200):
            pv.record_location(s, VIN, now - dt.timedelta(days=age), 31.0, 121.0)
        for age in (1, 8, 31):
            pv.record_gate_sighting(s, now - dt.timedelta(days=age), "g", "沪A12345", VIN,
                                    dealer.member, dealer.member)  # fmt: skip
    with dealer.store.tx() as s:
        counts = pv.purge(s, now)
    assert counts["location"] == 2 and counts["gate_sighting"] == 1 and counts["face"] == 2
    with dealer.store.tx() as s:
        assert s.scalar(select(func.count(LocationFix.id))) == 2
        faces = sorted((g.face_customer_id is not None) for g in s.scalars(select(GateSighting)))
        assert faces == [False, True]  # 8 days: face stripped, plate kept; 1 day: both kept
    assert audits(dealer, "privacy.purge")[0].detail["location"] == 2


def test_erasure_anonymises_and_keeps_the_audit_log(dealer: Dealer) -> None:
    now = utcnow()
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", True)
        pv.record_location(s, VIN, now, 31.0, 121.0)
        cp = st.issue_coupon(s, "maintenance", dealer.member, now + dt.timedelta(days=30))
        s.add(OutboxMessage(channel="email", target="wang@example.com", effect_key="k",
                            customer_id=dealer.member, subject="hi 王先生", body="..."))  # fmt: skip
    with dealer.store.tx() as s:
        before = s.scalar(select(func.count(AuditRecord.id))) or 0
    with pytest.raises(PrivacyError, match="needs a ticket"), dealer.store.tx() as s:
        pv.erase_customer(s, dealer.member, "dpo", "")
    with dealer.store.tx() as s:
        counts = pv.erase_customer(s, dealer.member, "dpo", "GDPR-42")
    assert counts["identities"] == 1 and counts["contacts"] == 1 and counts["coupons_voided"] == 1
    with dealer.store.tx() as s:
        assert not s.scalars(
            select(CustomerIdentity).where(CustomerIdentity.customer_id == dealer.member)
        ).all()
        assert s.get(CustomerContact, dealer.member) is None
        assert not st.has_consent(s, dealer.member, "marketing")
        assert not st.has_consent(s, dealer.member, "location")
        coupon = s.get(Coupon, cp.id)
        assert coupon is not None and coupon.state == "voided"
        msg = s.scalars(select(OutboxMessage)).one()
        assert (msg.target, msg.subject, msg.state) == ("", "", "dead")
        assert s.scalar(select(func.count(LocationFix.id))) == 0
        assert (s.scalar(select(func.count(AuditRecord.id))) or 0) > before  # nothing deleted
        # the old phone number now finds nobody: a new customer is created
        assert st.find_or_create_customer(s, {"phone": "+8613800000001"}) != dealer.member
    (rec,) = audits(dealer, "customer.erase")
    assert rec.detail["ticket"] == "GDPR-42" and rec.subject == dealer.member
