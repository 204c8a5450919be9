"""What the CRM tells the stream about locations (crm.location_sync), the console's grant check
(crm.privacy.grant_in_force) and the InfluxDB deletes it asks for (crm.location_sink)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from core.config import InfluxSettings
from crm import delivery as dl
from crm import location_sync as ls
from crm import privacy as pv
from crm import store as st
from crm.location_sink import InfluxLocations, v1_delete_period, v1_purge, v2_delete_body
from crm.schema import Ownership, utcnow
from tests.unit.crm.conftest import VIN, VIN2, Dealer


def policies(d: Dealer) -> dict[str, Any]:
    with d.store.tx() as s:
        return ls.current_policies(s)


def test_only_the_current_owners_consent_allows_locations(dealer: Dealer) -> None:
    got = policies(dealer)
    assert not got[VIN].location and not got[VIN2].location  # nobody consented yet
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", True)
        own = s.scalar(select(Ownership).where(Ownership.vin == VIN, Ownership.valid_to.is_(None)))
        assert own is not None
        period, since = str(own.id), int(own.valid_from.timestamp() * 1e6)
    p = policies(dealer)[VIN]
    assert (p.location, p.ownership, p.since_us) == (True, period, since)
    assert p.changed_us > since  # consent given now, long after the purchase
    sold = utcnow() - dt.timedelta(minutes=5)
    with dealer.store.tx() as s:  # sold to someone without consent: no longer
        buyer = st.find_or_create_customer(s, {"phone": "+8613800000077"})
        st.transfer_ownership(s, VIN, buyer, sold)
    p2 = policies(dealer)[VIN]
    assert not p2.location and p2.ownership != period
    assert p2.since_us == int(sold.timestamp() * 1e6)
    with dealer.store.tx() as s:  # the buyer merges into the consenting member: consent follows
        st.merge_customers(s, dealer.member, buyer, "same person")
    assert policies(dealer)[VIN].location


def test_sync_publishes_changes_only_and_cuts_after_a_withdrawal(dealer: Dealer) -> None:
    sync = ls.PolicySync()
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", True)
    first = sync.changes(policies(dealer))
    assert {p.vin for p in first} == {VIN, VIN2}  # a first run publishes every vehicle
    sync.mark_published(first)
    assert sync.changes(policies(dealer)) == [] and sync.cuts == []
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", False)
    withdrawn = utcnow()
    changed = sync.changes(policies(dealer))
    assert [(p.vin, p.location) for p in changed] == [(VIN, False)]
    (cut,) = sync.cuts
    assert cut.vin == VIN and cut.ownership == next(p.ownership for p in first if p.vin == VIN)
    assert abs((cut.since - withdrawn).total_seconds()) < 5

    class Sink:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str, dt.datetime | None]] = []
            self.fail = True

        def delete_period(self, vin: str, ownership: str, since: dt.datetime | None = None) -> None:
            if self.fail:
                raise OSError("InfluxDB away")
            self.calls.append((vin, ownership, since))

    sink = Sink()
    assert sync.run_cuts(sink) == 0 and len(sync.cuts) == 1  # kept for the next run
    sink.fail = False
    assert sync.run_cuts(sink) == 1 and len(sync.cuts) == 1  # a second pass follows
    assert sync.run_cuts(sink) == 1 and sync.cuts == []
    assert sink.calls == [(VIN, cut.ownership, cut.since)] * 2


def test_a_grant_holds_only_while_the_current_owner_consents(dealer: Dealer) -> None:
    with dealer.store.tx() as s:
        assert pv.grant_in_force(s, VIN, "customer-request") is None
        st.set_consent(s, dealer.member, "location", True)
    with dealer.store.tx() as s:
        since = pv.grant_in_force(s, VIN, "customer-request")
        assert since is not None and since < utcnow() - dt.timedelta(days=700)
        st.set_consent(s, dealer.member, "location", False)
    with dealer.store.tx() as s:
        assert pv.grant_in_force(s, VIN, "customer-request") is None
        assert pv.grant_in_force(s, VIN, "crash-response") is None  # no crash on record
        dl.file_card(s, role="call_centre", kind="crash", key="crash|x|1", vin=VIN, title="C")
    with dealer.store.tx() as s:
        assert pv.grant_in_force(s, VIN, "crash-response") is not None  # vital interest
        assert pv.grant_in_force(s, VIN, "customer-request") is None


def test_influx_statements_name_one_period_and_never_the_other_signals() -> None:
    since = dt.datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    q = v1_delete_period("telemetry", VIN, "12", since)
    assert q == (f"DELETE FROM \"telemetry\" WHERE \"vin\" = '{VIN}' AND \"ownership\" = '12' "
                 f"AND time >= {int(since.timestamp()) * 10**9 + 250_000_000}")  # fmt: skip
    assert "\\'" in v1_delete_period("telemetry", "a'b", "1")  # quoted, not injected
    assert v1_purge("telemetry", since).startswith('DELETE FROM "telemetry" WHERE "ownership" =~')
    body = v2_delete_body("telemetry", VIN, "12", since, since + dt.timedelta(days=1))
    assert body["predicate"] == f'_measurement="telemetry" AND vin="{VIN}" AND ownership="12"'
    assert body["start"] == "2026-05-01T12:00:00.250000Z"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                          "body": self.rfile.read(n)})  # fmt: skip
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    _Recorder.seen = []
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_v2_deletes_go_to_the_delete_api_with_the_token(recorder: str) -> None:
    """The request format of InfluxDB 2.x's ``/api/v2/delete`` (the real v1 server is in
    tests/security/test_location_privacy.py; no 2.x server is packaged for the tests)."""
    sink = InfluxLocations(
        InfluxSettings(api="v2", url=recorder, org="o", bucket="b", token=SecretStr("tok")),
        "telemetry",
    )
    sink.delete_period(VIN, "12")
    cutoff = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    sink.purge(cutoff, [(VIN, "12"), (VIN2, "13")])
    assert [r["path"] for r in _Recorder.seen] == ["/api/v2/delete?org=o&bucket=b"] * 3
    assert {r["auth"] for r in _Recorder.seen} == {"Token tok"}
    bodies = [json.loads(r["body"]) for r in _Recorder.seen]
    assert bodies[0]["start"].startswith("1970-01-01") and bodies[0]["stop"].startswith("2262")
    assert [b["stop"] for b in bodies[1:]] == ["2026-01-01T00:00:00.000000Z"] * 2
    assert 'vin="LSVAA4182E2654321" AND ownership="13"' in bodies[2]["predicate"]


def test_purge_deletes_in_the_crm_then_reports_an_unreachable_influxdb(dealer: Dealer) -> None:
    from collections import Counter

    from carpulse.stack import free_port
    from core.errors import SinkError
    from crm.agents import periodic
    from crm.engine import RuleEngine
    from crm.rules import shipped_rules
    from crm.tables import LocationFix

    old = utcnow() - dt.timedelta(days=100)
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "location", True)
        assert pv.record_location(s, VIN, old, 31.0, 121.0, "crash-alert")
    away = InfluxLocations(InfluxSettings(url=f"http://127.0.0.1:{free_port()}", timeout_s=2))
    with pytest.raises(SinkError, match="unreachable"):
        ls.purge(dealer.store, away)
    with dealer.store.tx() as s:  # the CRM's own copy went first
        assert s.scalar(select(LocationFix.id)) is None
    stats: Counter[str] = Counter()  # the worker's periodic job counts it and goes on
    periodic(dealer.store, RuleEngine(shipped_rules()), None, stats, away)
    assert stats["purge_influx_errors"] == 1 and "_last_purge_mono" not in stats
    assert ls.purge(dealer.store, None)["location"] == 0  # no sink: the CRM's tables only
