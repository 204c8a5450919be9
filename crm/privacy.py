"""Privacy: location and face data only with consent, audited location reads, retention per data
class with a purge job, and erasure of a customer on request (the audit log is kept).

Consent is checked for the customer who owned the vehicle at the time of the data: a fix taken
while the previous owner had the car belongs to the previous owner's consent, and is never shown
to the new owner's staff view (``read_location`` reads only the current ownership period).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.errors import PrivacyError
from crm import store as st
from crm.schema import Consent, Coupon, Customer, CustomerIdentity, Ownership, utcnow
from crm.tables import (
    CustomerContact,
    GateSighting,
    InboxItem,
    LocationFix,
    OutboxMessage,
    ParkedEvent,
)

READ_PURPOSES: Final = ("crash-response", "roadside-assistance", "customer-request", "theft")
EMERGENCY_PURPOSE: Final = "crash-response"
CRASH_WINDOW: Final = dt.timedelta(days=1)

# How long each class of personal data is kept (days). The audit log is never purged.
RETENTION_DAYS: Final[Mapping[str, int]] = {
    "location": 90,
    "gate_sighting": 30,
    "face": 7,  # the face match on a gate sighting; the plate sighting itself lives longer
    "inbox_closed": 365,
    "outbox_done": 90,
    "parked_resolved": 30,
}


@dataclass(frozen=True)
class Fix:
    vin: str
    at: dt.datetime
    lat: float
    lon: float
    source: str


def record_location(
    s: Session, vin: str, at: dt.datetime, lat: float, lon: float, source: str = ""
) -> bool:
    """Keep a position only if the vehicle's owner at ``at`` consents to location use."""
    owner = st.owner_at(s, vin, at)
    if owner is None or not st.has_consent(s, owner, "location"):
        return False
    if s.scalar(select(LocationFix.id).where(LocationFix.vin == vin, LocationFix.at == at)):
        return False  # the same fix again (a replayed alert)
    s.add(LocationFix(vin=vin, customer_id=owner, at=at, lat=lat, lon=lon, source=source))
    return True


def record_gate_sighting(
    s: Session,
    at: dt.datetime,
    camera: str,
    plate: str | None,
    vin: str | None = None,
    customer_id: str | None = None,
    face_customer_id: str | None = None,
) -> GateSighting:
    """A gate sighting; a face match is kept only for a customer who consented to face use."""
    if face_customer_id is not None and not st.has_consent(s, face_customer_id, "face"):
        face_customer_id = None
    row = GateSighting(at=at, camera=camera, plate=plate, vin=vin, customer_id=customer_id,
                       face_customer_id=face_customer_id)  # fmt: skip
    s.add(row)
    return row


def _crash_reported(s: Session, vin: str, now: dt.datetime) -> bool:
    """A crash of ``vin`` reached the CRM (the crash rule's call-centre card) within a day."""
    return (
        s.scalar(
            select(InboxItem.id)
            .where(
                InboxItem.vin == vin,
                InboxItem.kind == "crash",
                InboxItem.created_at >= now - CRASH_WINDOW,
            )
            .limit(1)
        )
        is not None
    )


def read_location(
    s: Session, actor: str, vin: str, purpose: str, ticket: str, *, live: Fix | None = None
) -> Fix | None:
    """The last known position of ``vin`` for ``actor``; every call is audited, refusals too.

    ``live`` is the vehicle's current fix as the caller saw it (the dashboard's ``vehicle-state``
    feed); it passes the same checks as the stored fixes, and with consent it is kept as the
    CRM's last known place. Refused without a ticket, for an unknown purpose, or when the current
    owner has not consented to location use, except for ``crash-response`` to a crash the CRM
    has on record within a day (vital interest: then only the live fix is shown, nothing stored
    is). Only fixes from the current ownership period are returned.
    """
    now = utcnow()
    owner = st.owner_at(s, vin, now)
    why = None
    consent = emergency = False
    if not ticket.strip():
        why = "a ticket is required"
    elif purpose not in READ_PURPOSES:
        why = f"unknown purpose {purpose!r}; expected one of {READ_PURPOSES}"
    elif owner is None:
        why = f"vehicle {vin} has no current owner"
    else:
        consent = st.has_consent(s, owner, "location")
        emergency = not consent and purpose == EMERGENCY_PURPOSE and _crash_reported(s, vin, now)
        if not consent and not emergency:
            why = "the owner has not consented to location use"
            if purpose == EMERGENCY_PURPOSE:
                why += " and no crash of this vehicle is on record"
    if why is not None:
        # its own transaction: the refusal stays on record although the caller rolls back
        with Session(bind=s.get_bind()) as side, side.begin():
            st.audit(side, actor, "location.read.denied", vin, purpose, ticket=ticket, reason=why)
        raise PrivacyError(f"location of {vin} not readable: {why}")
    since = s.scalar(
        select(Ownership.valid_from).where(
            Ownership.vin == vin,
            Ownership.valid_from <= now,
            Ownership.valid_to.is_(None) | (Ownership.valid_to > now),
        )
    )
    assert since is not None  # owner_at found this period
    best: Fix | None = None
    if consent:
        row = s.scalar(
            select(LocationFix)
            .where(LocationFix.vin == vin, LocationFix.at >= since)
            .order_by(LocationFix.at.desc())
            .limit(1)
        )
        best = None if row is None else Fix(row.vin, row.at, row.lat, row.lon, row.source)
    # a live fix from before the current ownership (a stale state) is the previous owner's
    if live is not None and live.vin == vin and _aware(live.at) >= _aware(since):
        if consent:
            record_location(s, vin, live.at, live.lat, live.lon, live.source)
        if best is None or _aware(live.at) >= _aware(best.at):
            best = live
    st.audit(s, actor, "location.read", vin, purpose, ticket=ticket, found=best is not None,
             fix_at=best.at.isoformat() if best else None, source=best.source if best else None,
             consent=consent, emergency=emergency)  # fmt: skip
    return best


def grant_in_force(
    s: Session, vin: str, purpose: str, now: dt.datetime | None = None
) -> dt.datetime | None:
    """The start of the current ownership if a location grant for ``purpose`` still holds, else
    None: the current owner consents, or (``crash-response``) a crash is on record within a day.

    The console asks this on every view and live update: a withdrawal or a sale ends the grant,
    and a fix taken before the returned start is never shown."""
    now = now or utcnow()
    own = s.scalar(
        select(Ownership).where(
            Ownership.vin == vin,
            Ownership.valid_from <= now,
            Ownership.valid_to.is_(None) | (Ownership.valid_to > now),
        )
    )
    if own is None:
        return None
    if st.has_consent(s, own.customer_id, "location"):
        return own.valid_from
    if purpose == EMERGENCY_PURPOSE and _crash_reported(s, vin, now):
        return own.valid_from
    return None


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def purge(
    s: Session, now: dt.datetime | None = None, retention: Mapping[str, int] = RETENTION_DAYS
) -> dict[str, int]:
    """Delete (or strip) personal data older than its retention; returns counts per class."""
    now = now or utcnow()

    def cutoff(cls: str) -> dt.datetime:
        return now - dt.timedelta(days=retention[cls])

    counts: dict[str, int] = {}

    def n(result: object) -> int:
        return int(getattr(result, "rowcount", 0) or 0)

    counts["location"] = n(
        s.execute(delete(LocationFix).where(LocationFix.at < cutoff("location")))
    )
    counts["face"] = n(
        s.execute(
            update(GateSighting)
            .where(GateSighting.at < cutoff("face"), GateSighting.face_customer_id.is_not(None))
            .values(face_customer_id=None)
        )
    )
    counts["gate_sighting"] = n(
        s.execute(delete(GateSighting).where(GateSighting.at < cutoff("gate_sighting")))
    )
    counts["inbox_closed"] = n(
        s.execute(delete(InboxItem).where(InboxItem.done_at < cutoff("inbox_closed")))
    )
    counts["outbox_done"] = n(
        s.execute(
            delete(OutboxMessage).where(
                OutboxMessage.state.in_(("sent", "dead")),
                OutboxMessage.created_at < cutoff("outbox_done"),
            )
        )
    )
    counts["parked_resolved"] = n(
        s.execute(delete(ParkedEvent).where(ParkedEvent.resolved_at < cutoff("parked_resolved")))
    )
    st.audit(s, "privacy", "privacy.purge", "retention", "retention", dealer_id=None, **counts)
    return counts


def erase_customer(s: Session, customer_id: str, actor: str, ticket: str) -> dict[str, int]:
    """Erase a customer on request: identities and contacts deleted, name blanked, consents
    revoked, live coupons voided, positions deleted, sightings, cards and queued messages
    stripped. The pseudonymous id stays so that ownership history and the audit log remain."""
    if not ticket.strip():
        raise PrivacyError("erasure needs a ticket (the customer's request)")
    cid = st.resolve(s, customer_id)
    ids = [cid, *s.scalars(select(Customer.id).where(Customer.merged_into == cid))]
    now = utcnow()
    counts: dict[str, int] = {}

    def n(result: object) -> int:
        return int(getattr(result, "rowcount", 0) or 0)

    counts["identities"] = n(
        s.execute(delete(CustomerIdentity).where(CustomerIdentity.customer_id.in_(ids)))
    )
    counts["contacts"] = n(
        s.execute(delete(CustomerContact).where(CustomerContact.customer_id.in_(ids)))
    )
    for c in s.scalars(select(Customer).where(Customer.id.in_(ids))):
        c.display_name, c.erased_at = "", now
    granted = s.scalars(
        select(Consent.purpose)
        .where(Consent.customer_id == cid, Consent.granted.is_(True))
        .distinct()
    ).all()
    for purpose in granted:  # the history stays (it proves what was allowed when); it now says no
        s.add(Consent(customer_id=cid, purpose=purpose, granted=False, at=now, source="erasure"))
    counts["coupons_voided"] = n(
        s.execute(
            update(Coupon)
            .where(Coupon.holder_id.in_(ids), Coupon.state.in_(("issued", "shared")))
            .values(state="voided")
        )
    )
    counts["locations"] = n(s.execute(delete(LocationFix).where(LocationFix.customer_id.in_(ids))))
    counts["sightings"] = n(
        s.execute(
            update(GateSighting)
            .where(GateSighting.customer_id.in_(ids) | GateSighting.face_customer_id.in_(ids))
            .values(plate=None, customer_id=None, face_customer_id=None)
        )
    )
    counts["inbox"] = n(
        s.execute(
            update(InboxItem)
            .where(InboxItem.customer_id.in_(ids))
            .values(title="[erased]", body="", data={})
        )
    )
    counts["outbox"] = n(
        s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.customer_id.in_(ids))
            .values(target="", subject="", body="", payload={})
        )
    )
    s.execute(  # nothing still queued may go out to an erased customer
        update(OutboxMessage)
        .where(OutboxMessage.customer_id.in_(ids), OutboxMessage.state == "pending")
        .values(state="dead", last_error="customer erased")
    )
    st.audit(s, actor, "customer.erase", cid, "erasure", ticket=ticket, dealer_id=None, **counts)
    return counts
