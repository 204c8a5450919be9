"""``carpulse crm outbox list|requeue``: messages that could not go out are listed with masked
addresses and sent again once the cause is fixed, except to an erased customer or one who
withdrew the consent the message's rule asked for."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select
from typer.testing import CliRunner

from carpulse.cli import app
from carpulse.stack import free_port
from crm import store as st
from crm.agents import handle_record
from crm.delivery import Dispatcher, SmtpTransport
from crm.engine import RuleEngine
from crm.privacy import erase_customer
from crm.rules import shipped_rules
from crm.schema import AuditRecord
from crm.tables import OutboxMessage
from tests.unit.crm.conftest import T0, VIN, VIN2, Dealer
from tests.unit.crm.test_delivery import Inbox

pytestmark = pytest.mark.parametrize("dealer", ["sqlite"], indirect=True)


def _undeliverable(d: Dealer) -> dict[str, int]:
    """A service-due coupon for the member (e-mail + webhook) and a crash of the other car
    (webhook), all dead: the worker ran without SMTP, and the webhook was refused for good."""
    engine = RuleEngine(shipped_rules(), webhook_url="https://dms.example.com/hook?token=abc")
    ts = int(T0.timestamp() * 1e6)
    due = {"vin": VIN, "kind": "service_due", "ts_us": ts, "days": 9.0, "km": 30000.0,
           "odo": 29800.0, "cycle": "c1"}  # fmt: skip
    crash = {"kind": "crash", "vin": VIN2, "ts_us": ts, "data": {"trigger": "airbag"}}
    for topic, doc in (("carpulse.predictions", due), ("carpulse.alerts", crash)):
        handle_record(d.store, engine, topic, json.dumps(doc).encode(), Counter())
    assert Dispatcher(d.store, {}).run_once()["dead"] == 3  # "no transport for channel"
    with d.store.tx() as s:
        rows = s.scalars(select(OutboxMessage)).all()
        return {f"{m.payload['rule']}/{m.channel}": m.id for m in rows}


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["crm", "outbox", *args])


def test_list_shows_dead_letters_with_masked_addresses(dealer: Dealer) -> None:
    ids = _undeliverable(dealer)
    url = str(dealer.store.engine.url)
    res = run("list", "--db", url, "--json")
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in map(json.loads, res.output.splitlines())}
    assert set(rows) == set(ids.values())
    mail = rows[ids["service-due-coupon/email"]]
    assert mail["to"] == "w***@example.com" and "no transport" in mail["last_error"]
    hook = rows[ids["crash-call-centre/webhook"]]
    assert hook["to"] == "https://dms.example.com/..."  # never the token in its query
    assert "token" not in res.output and "wang@" not in res.output
    assert VIN not in res.output and "沪A12345" not in res.output  # subjects name the car

    assert run("list", "--db", url, "--state", "sent").output.strip() == "no sent messages"
    bad = run("list", "--db", url, "--state", "gone")
    assert bad.exit_code != 0 and "must be one of dead, pending, sent" in bad.output


def test_requeue_refuses_withdrawn_consent_and_erased_customers(dealer: Dealer) -> None:
    ids = _undeliverable(dealer)
    url = str(dealer.store.engine.url)
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "marketing", False, source="app")
    dry = run("requeue", "--db", url, "--all-dead", "--dry-run")
    assert dry.exit_code == 1
    assert "would requeue 1 message(s); refused 2" in dry.output
    assert "marketing consent was withdrawn" in dry.output
    with dealer.store.tx() as s:  # a dry run changes nothing
        assert {m.state for m in s.scalars(select(OutboxMessage))} == {"dead"}
    with dealer.store.tx() as s:
        st.set_consent(s, dealer.member, "marketing", True, source="app")
        erase_customer(s, dealer.other, "dpo", "ticket-7")
    res = run("requeue", "--db", url, "--all-dead", "--actor", "ops-li")
    assert res.exit_code == 1, res.output
    assert f"refused {ids['crash-call-centre/webhook']}: its customer was erased" in res.output
    assert "requeued 2 message(s); refused 1" in res.output
    with dealer.store.tx() as s:
        state = {m.id: m.state for m in s.scalars(select(OutboxMessage))}
        assert state[ids["service-due-coupon/email"]] == "pending"
        assert state[ids["crash-call-centre/webhook"]] == "dead"
        who = s.scalars(select(AuditRecord.actor).where(AuditRecord.action == "outbox.requeue"))
        assert list(who) == ["ops-li", "ops-li"]
    again = run("requeue", "--db", url, str(ids["service-due-coupon/email"]), "999999")
    assert again.exit_code == 1
    assert "is pending, not a dead letter" in again.output
    assert "999999: no such outbox message" in again.output
    huge = run("requeue", "--db", url, str(2**70))  # past int64: a usage error, no traceback
    assert huge.exit_code == 2 and "Invalid value" in huge.output


def test_a_requeued_mail_goes_out_once_smtp_works(dealer: Dealer) -> None:
    ids = _undeliverable(dealer)
    mid = ids["service-due-coupon/email"]
    res = run("requeue", "--db", str(dealer.store.engine.url), str(mid))
    assert res.exit_code == 0 and "requeued 1 message(s); refused 0" in res.output
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        smtp = SmtpTransport("127.0.0.1", controller.port, sender="dealer@example.com")
        assert Dispatcher(dealer.store, {"email": smtp}).run_once()["sent"] == 1
    finally:
        controller.stop()
    (msg,) = handler.messages
    assert msg["To"] == "wang@example.com"
    needs = run("requeue", "--db", str(dealer.store.engine.url))
    assert needs.exit_code != 0 and "give message ids or --all-dead" in needs.output
