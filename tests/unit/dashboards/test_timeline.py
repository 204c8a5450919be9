"""Issue 18 item 8: the vehicle timeline on the console (no browser): entries of the current
ownership period only, newest first, every text escaped, the view audited."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from crm import delivery
from crm.schema import AuditRecord
from crm.store import CrmStore, audit, find_or_create_customer, transfer_ownership
from crm.tables import GateSighting, InboxItem
from dashboards.timeline import period_start, vehicle_timeline
from tests.unit.dashboards.conftest import VIN_A, VIN_B, login

NOW = dt.datetime.now(dt.UTC)
EVIL = "<script>alert('x')</script>"


def seed_history(store: CrmStore, base: dt.datetime) -> None:
    """One of each kind, an hour apart from ``base``: DTC, anomaly, crash, gate, intrusion,
    command."""
    with store.tx() as s:
        dtc = delivery.file_dtc_card(s, vin=VIN_A, code="P0217", severity="high",
                                     text=f"Engine overheat {EVIL}", source="feed", at=base)  # fmt: skip
        dtc.created_at = base  # filed then (the card's time is when it was filed)
        for kind, hours, title in (("anomaly", 1, "Unusual coolant temperature"),
                                   ("crash", 2, f"CRASH on {VIN_A} {EVIL}")):  # fmt: skip
            s.add(InboxItem(role="call_centre" if kind == "crash" else "advisor", kind=kind,
                            vin=VIN_A, title=title, created_at=base + dt.timedelta(hours=hours)))  # fmt: skip
        s.add(GateSighting(at=base + dt.timedelta(hours=3), camera="gate-1", plate="DEMO001",
                           vin=VIN_A))  # fmt: skip
        s.add(InboxItem(role="call_centre", kind="intrusion", vin=VIN_A,
                        title=f"CAN intrusion (dos) {EVIL}",
                        created_at=base + dt.timedelta(hours=4)))  # the security queue's card  # fmt: skip
        s.add(InboxItem(role="advisor", kind="maintenance", vin=VIN_A, title="Service due",
                        created_at=base + dt.timedelta(hours=5)))  # not a timeline kind  # fmt: skip
        s.add(InboxItem(role="advisor", kind="dtc", vin=VIN_B, title="DTC P0300 on another car",
                        created_at=base + dt.timedelta(hours=5)))  # fmt: skip
    with store.tx() as s:  # the console's audit row of a sent command
        audit(s, "agent", "command.lock", VIN_A, "console", dealer_id="dealer-a",
              command="0" * 32, device="demo-car-1", args={})  # fmt: skip


def test_entries_newest_first_of_the_current_ownership_only(app_store: Any) -> None:
    store = app_store[1]
    seed_history(store, NOW - dt.timedelta(hours=10))
    with store.tx() as s:
        since, entries = vehicle_timeline(s, VIN_A)
    assert since is not None and since < NOW - dt.timedelta(days=300)  # seeded a year ago
    kinds = [e.kind for e in entries]
    assert kinds == ["command", "intrusion", "gate", "crash", "anomaly", "dtc"]  # newest first
    assert [e.at for e in entries] == sorted((e.at for e in entries), reverse=True)
    assert entries[0].title == "lock sent by agent" and entries[0].label_zh == "远程指令"
    assert "P0217 Engine overheat" in entries[-1].detail and entries[-1].state == "open"
    # the car is sold: the new owner's period starts now and shows none of it
    sold = dt.datetime.now(dt.UTC)
    with store.tx() as s:
        buyer = find_or_create_customer(s, {"phone": "+8613900000099"}, source="test")
        transfer_ownership(s, VIN_A, buyer, sold)
    with store.tx() as s:
        since, entries = vehicle_timeline(s, VIN_A)
        assert since == sold and entries == []
        delivery.file_dtc_card(s, vin=VIN_A, code="P0420", severity="medium", source="feed")
    with store.tx() as s:
        _, entries = vehicle_timeline(s, VIN_A)
    # the new owner's own fault: a new card, shown (the old owner's P0217 is not)
    assert [e.detail.split(" ")[0] for e in entries] == ["P0420"]


def test_period_start_between_owners_and_never_owned(app_store: Any) -> None:
    store = app_store[1]
    with store.tx() as s:
        assert period_start(s, "NEVEROWNED0000001") is None
        from crm.schema import Ownership

        row = s.scalars(select(Ownership).where(Ownership.vin == VIN_A)).one()
        row.valid_to = NOW - dt.timedelta(days=2)  # scrapped / returned: no current owner
    with store.tx() as s:
        assert period_start(s, VIN_A) == NOW - dt.timedelta(days=2)


def test_the_vehicle_page_shows_the_timeline_escaped_and_audits_the_read(
    client: TestClient, app_store: Any
) -> None:
    store = app_store[1]
    seed_history(store, NOW - dt.timedelta(hours=10))
    login(client, "agent")
    html = client.get(f"/console/vehicles/{VIN_A}").text
    section = html[
        html.index('id="timeline"') : html.index("</section>", html.index('id="timeline"'))
    ]
    assert 'data-entries="6"' in section
    assert "<script>alert" not in html and "&lt;script&gt;alert(" in section
    assert re.findall(r'data-kind="(\w+)"', section) == [
        "command",
        "intrusion",
        "gate",
        "crash",
        "anomaly",
        "dtc",
    ]
    assert "Fault code" in section and "故障码" in section and "lock sent by agent" in section
    assert "CAN intrusion" in section and "总线入侵" in section
    assert "DTC P0300 on another car" not in html and "Service due" not in section
    with store.tx() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.action == "vehicle.timeline")).all()
        assert [(r.actor, r.subject, r.detail["entries"]) for r in rows] == [("agent", VIN_A, 6)]
    # another dealer's vehicle: 404, as for the page itself, and no timeline read
    assert client.get(f"/console/vehicles/{VIN_B}").status_code == 404
