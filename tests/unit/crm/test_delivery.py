"""Delivery: signed webhooks to a real local HTTP server with retries and dead letters, e-mail
through a real local SMTP server (aiosmtpd), the inbox per role."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from carpulse.stack import free_port
from crm.delivery import (
    Backoff,
    Dispatcher,
    SmtpTransport,
    WebhookTransport,
    close_item,
    dead_letters,
    inbox,
    masked_error,
    requeue,
    sign,
    verify_signature,
)
from crm.schema import AuditRecord, utcnow
from crm.tables import InboxItem, OutboxMessage
from tests.unit.crm.conftest import Dealer

SECRET = b"s3cret"


class Hook:
    """A webhook receiver that checks signatures and fails the first ``fail`` requests."""

    def __init__(self, fail: int = 0, status: int = 503) -> None:
        self.fail, self.status = fail, status
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify_signature(SECRET, self.headers["X-Carpulse-Signature"],
                                      self.headers["X-Carpulse-Timestamp"], body)  # fmt: skip
                if not ok:
                    hook.bad_signatures += 1
                    self.send_response(401)
                elif hook.fail > 0:
                    hook.fail -= 1
                    self.send_response(hook.status)
                else:
                    hook.received.append(
                        {"key": self.headers["Idempotency-Key"], "body": json.loads(body)}
                    )
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook(fail=2)
    yield h
    h.close()


def queue(d: Dealer, channel: str, target: str, key: str, **payload: Any) -> int:
    with d.store.tx() as s:
        msg = OutboxMessage(channel=channel, target=target, effect_key=key, subject="主题 subject",
                            body="正文 body", payload={"key": key, **payload})  # fmt: skip
        s.add(msg)
        s.flush()
        return msg.id


def test_signature_roundtrip_and_replay_window() -> None:
    body = b'{"a":1}'
    sig = sign(SECRET, 1_000, body)
    assert verify_signature(SECRET, sig, "1000", body, now=1_100)
    assert not verify_signature(SECRET, sig, "1000", body + b" ", now=1_100)  # tampered body
    assert not verify_signature(b"other", sig, "1000", body, now=1_100)
    assert not verify_signature(SECRET, sig, "1000", body, now=2_000)  # replayed too late
    assert not verify_signature(SECRET, sig, "soon", body, now=1_000)


def test_webhook_retries_with_backoff_then_delivers(dealer: Dealer, hook: Hook) -> None:
    mid = queue(dealer, "webhook", hook.url, "crash|VIN|1", vin="VIN")
    disp = Dispatcher(dealer.store, {"webhook": WebhookTransport(SECRET, timeout_s=2)},
                      Backoff(base_s=10, jitter=0))  # fmt: skip
    now = utcnow()
    assert disp.run_once(now)["retry"] == 1
    assert disp.run_once(now + dt.timedelta(seconds=5)) == {}  # not due before 10 s
    assert disp.run_once(now + dt.timedelta(seconds=11))["retry"] == 1
    with dealer.store.tx() as s:
        row = s.get(OutboxMessage, mid)
        assert row is not None and row.attempts == 2 and "503" in row.last_error
        assert row.next_at == now + dt.timedelta(seconds=31)  # 10 s, then 20 s
    assert disp.run_once(now + dt.timedelta(seconds=31))["sent"] == 1
    assert hook.bad_signatures == 0
    assert hook.received == [
        {"key": "crash|VIN|1|webhook", "body": {"key": "crash|VIN|1", "vin": "VIN"}}
    ]
    assert disp.run_once(now + dt.timedelta(hours=1)) == {}  # sent once


def test_dead_letters_permanent_and_exhausted(dealer: Dealer) -> None:
    refusing = Hook(fail=100, status=400)
    try:
        bad = queue(dealer, "webhook", refusing.url, "k1")
        gone = queue(dealer, "webhook", f"http://127.0.0.1:{free_port()}/nobody", "k2")
        wrong_key = WebhookTransport(b"not-the-secret", timeout_s=2)
        other = queue(dealer, "webhook", refusing.url, "k3")
        disp = Dispatcher(dealer.store, {"webhook": WebhookTransport(SECRET, timeout_s=2)},
                          Backoff(base_s=1, max_attempts=3, jitter=0))  # fmt: skip
        now = utcnow()
        for i in range(4):
            disp.run_once(now + dt.timedelta(seconds=10 * i))
        assert refusing.bad_signatures == 0
        with dealer.store.tx() as s:
            dead = {m.id: m for m in dead_letters(s)}
            assert set(dead) == {bad, gone, other}
            assert dead[bad].attempts == 1 and "HTTP 400" in dead[bad].last_error  # no retry
            assert dead[gone].attempts == 3 and "unreachable" in dead[gone].last_error
            audits = s.scalars(select(AuditRecord).where(AuditRecord.action == "outbox.dead")).all()
            assert len(audits) == 3
            requeue(s, gone, "ops")
        assert Dispatcher(dealer.store, {"webhook": wrong_key}).run_once()["retry"] == 1
    finally:
        refusing.close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(msg)  # type: ignore[arg-type]
        return "250 OK"


def test_email_through_a_real_smtp_server(dealer: Dealer) -> None:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        queue(dealer, "email", "wang@example.com", "service-due-coupon|VIN|c1")
        smtp = SmtpTransport("127.0.0.1", controller.port, sender="dealer@example.com")
        assert Dispatcher(dealer.store, {"email": smtp}).run_once()["sent"] == 1
    finally:
        controller.stop()
    (msg,) = handler.messages
    assert msg["To"] == "wang@example.com" and msg["Subject"] == "主题 subject"
    assert msg.get_content().strip() == "正文 body"
    assert msg["Message-ID"].endswith("@carpulse>")
    # the server is gone now: the next mail is retried, not lost
    queue(dealer, "email", "li@example.com", "k9")
    assert Dispatcher(dealer.store, {"email": smtp}).run_once()["retry"] == 1


def test_inbox_per_role_most_urgent_first(dealer: Dealer) -> None:
    with dealer.store.tx() as s:
        for role, prio, title in [("expert", 1, "dtc"), ("call_centre", 3, "later"),
                                  ("call_centre", 0, "crash"), ("advisor", 3, "arrival")]:  # fmt: skip
            s.add(InboxItem(role=role, priority=prio, kind=title, title=title))
    with dealer.store.tx() as s:
        assert [i.title for i in inbox(s, "call_centre")] == ["crash", "later"]
        close_item(s, inbox(s, "call_centre")[0].id, "agent-7", note="called the driver")
    with dealer.store.tx() as s:
        assert [i.title for i in inbox(s, "call_centre")] == ["later"]
        assert len(inbox(s, "call_centre", open_only=False)) == 2
        with pytest.raises(Exception, match="unknown inbox role"):
            inbox(s, "boss")


def test_addresses_in_delivery_errors_are_masked_for_operators() -> None:
    err = "SMTP 550 <wang.xiaoming@example.com>: recipient refused; cc li@example.org"
    assert (
        masked_error(err) == "SMTP 550 <w***@example.com>: recipient refused; cc l***@example.org"
    )
    assert masked_error("HTTP 400 from https://dms.example.com/hook") == (
        "HTTP 400 from https://dms.example.com/hook"
    )  # no address in it: unchanged
