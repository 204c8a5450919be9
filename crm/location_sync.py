"""The CRM tells the stream, per vehicle, whether positions may be stored (``carpulse.privacy``).

``current_policies`` computes every vehicle's ``core.privacy.LocationPolicy`` from the schema:
the current ownership period (its id tags the stored positions, its start bounds what is shown)
and the latest ``location`` consent of its owner. ``PolicySync`` compares them with what it
published last and returns only the changes, so the CRM worker can run it every few seconds
(``crm.agents``: nothing to hook into every place that changes consent or ownership, and a
change is never missed: the next run finds it). A first run publishes every vehicle.

When a vehicle stops allowing positions (consent withdrawn, vehicle sold), positions stamped
after that moment that reached InfluxDB before the stream learnt of it are deleted
(``Cut``: twice, on this run and the next, as the stream may still be finishing a batch).
Erasure and the retention purge delete through ``crm.location_sink`` as well.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.privacy import LocationPolicy
from crm import privacy as pv
from crm import store as st
from crm.location_sink import InfluxLocations
from crm.schema import Consent, Customer, Ownership, Vehicle, utcnow

NO_OWNER: Final = "none"
CUT_PASSES: Final = 2


def _us(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def current_policies(s: Session, now: dt.datetime | None = None) -> dict[str, LocationPolicy]:
    """Every vehicle's policy at ``now``: location only with the current owner's consent."""
    now = now or utcnow()
    merged: dict[str, str] = {}
    for cid, into in s.execute(
        select(Customer.id, Customer.merged_into).where(Customer.merged_into.is_not(None))
    ):
        if into is not None:
            merged[cid] = into

    def resolve(cid: str) -> str:
        seen = set()
        while cid in merged and cid not in seen:
            seen.add(cid)
            cid = merged[cid]
        return cid

    latest: dict[str, tuple[bool, dt.datetime]] = {}
    for cid, granted, at in s.execute(
        select(Consent.customer_id, Consent.granted, Consent.at)
        .where(Consent.purpose == "location", Consent.at <= now)
        .order_by(Consent.at, Consent.id)
    ):
        latest[cid] = (bool(granted), at)  # the last row per customer is in force
    current: dict[str, Ownership] = {}
    for row in s.scalars(
        select(Ownership).where(
            Ownership.valid_from <= now,
            Ownership.valid_to.is_(None) | (Ownership.valid_to > now),
        )
    ):
        current[row.vin] = row
    out: dict[str, LocationPolicy] = {}
    for vin in s.scalars(select(Vehicle.vin)):
        own = current.get(vin)
        if own is None:
            out[vin] = LocationPolicy(vin, False, NO_OWNER, 0, 0)
            continue
        granted, at = latest.get(resolve(own.customer_id), (False, own.valid_from))
        changed = max(_us(own.valid_from), _us(at))
        out[vin] = LocationPolicy(vin, granted, str(own.id), _us(own.valid_from), changed)
    return out


class Deleter(Protocol):
    def delete_period(self, vin: str, ownership: str, since: dt.datetime | None = None) -> None:
        """Delete the positions of ``vin`` stored under ``ownership`` (from ``since`` on)."""


@dataclass
class Cut:
    """Positions of ``vin`` under ``ownership`` stamped from ``since`` on are to be deleted."""

    vin: str
    ownership: str
    since: dt.datetime
    passes: int = CUT_PASSES


@dataclass
class PolicySync:
    """What was published last, and what to publish and delete now."""

    published: dict[str, LocationPolicy] = field(default_factory=dict)
    cuts: list[Cut] = field(default_factory=list)

    def changes(self, policies: dict[str, LocationPolicy]) -> list[LocationPolicy]:
        """Policies that differ from the published ones; records the cuts they call for."""
        out = []
        for vin, new in policies.items():
            old = self.published.get(vin)
            if old == new:
                continue
            out.append(new)
            if (
                old is not None
                and old.location
                and (not new.location or new.ownership != old.ownership)
            ):
                since = dt.datetime.fromtimestamp(new.changed_us / 1e6, dt.UTC)
                self.cuts.append(Cut(vin, old.ownership, since))
        return out

    def mark_published(self, sent: Iterable[LocationPolicy]) -> None:
        for p in sent:
            self.published[p.vin] = p

    def run_cuts(self, sink: Deleter | None) -> int:
        """Delete what the cuts ask for; a cut that fails stays for the next run."""
        if sink is None:
            self.cuts.clear()
            return 0
        done, keep = 0, []
        for cut in self.cuts:
            try:
                sink.delete_period(cut.vin, cut.ownership, cut.since)
            except Exception:  # InfluxDB away: try again on the next run
                keep.append(cut)
                continue
            done += 1
            cut.passes -= 1
            if cut.passes > 0:
                keep.append(cut)
        self.cuts = keep
        return done


def ownership_periods(
    s: Session, customer_ids: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """``(vin, ownership id)`` of every period (of these customers)."""
    q = select(Ownership.vin, Ownership.id)
    if customer_ids is not None:
        q = q.where(Ownership.customer_id.in_(list(customer_ids)))
    return [(vin, str(oid)) for vin, oid in s.execute(q)]


def erase_customer(
    store: st.CrmStore, sink: InfluxLocations | None, customer_id: str, actor: str, ticket: str
) -> dict[str, int]:
    """``crm.privacy.erase_customer`` and the customer's positions in InfluxDB: every period
    they owned a vehicle in. The CRM part commits first; the InfluxDB deletes are audited."""
    with store.tx() as s:
        cid = st.resolve(s, customer_id)
        ids = [cid, *s.scalars(select(Customer.id).where(Customer.merged_into == cid))]
        periods = ownership_periods(s, ids)
        counts = pv.erase_customer(s, cid, actor, ticket)
    deleted = 0
    if sink is not None:
        for vin, ownership in periods:
            sink.delete_period(vin, ownership)
            deleted += 1
    with store.tx() as s:
        st.audit(s, actor, "customer.erase.influx", cid, "erasure", ticket=ticket,
                 periods=deleted)  # fmt: skip
    return {**counts, "influx_periods": deleted}


def purge(
    store: st.CrmStore, sink: InfluxLocations | None, now: dt.datetime | None = None
) -> dict[str, int]:
    """``crm.privacy.purge`` and positions older than the location retention in InfluxDB."""
    now = now or utcnow()
    with store.tx() as s:
        counts = pv.purge(s, now)
        periods = ownership_periods(s) if sink is not None and sink.settings.api != "v1" else []
    if sink is not None:
        sink.purge(now - dt.timedelta(days=pv.RETENTION_DAYS["location"]), periods)
        counts["influx_location"] = 1
    return counts


def publish_policies(
    store: st.CrmStore,
    kafka_options: dict[str, Any],
    sync: PolicySync | None = None,
    sink: InfluxLocations | None = None,
) -> list[LocationPolicy]:
    """One synchronous run outside the CRM worker (tests, tools): compute, send, cut.

    ``kafka_options``: aiokafka's connection keywords (``KafkaSettings.client_options("crm")``)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from core.topics import KAFKA_PRIVACY

    sync = sync or PolicySync()
    with store.tx() as s:
        changed = sync.changes(current_policies(s))

    async def send() -> None:
        producer = AIOKafkaProducer(**kafka_options, acks="all")
        await producer.start()
        try:
            for p in changed:
                await producer.send_and_wait(KAFKA_PRIVACY, p.encode(), key=p.vin.encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    sync.mark_published(changed)
    sync.run_cuts(sink)
    return changed
