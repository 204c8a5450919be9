"""Every member-link transport (crm.transports) against a real receiver: the recording file, an
HTTP SMS gateway that checks the signature, a WeChat template-message endpoint, an SMTP server
(aiosmtpd); plus the shared contract: no address -> a permanent error, nothing sent."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from carpulse.stack import free_port
from core.errors import ConfigError, DeliveryError
from crm.delivery import SmtpTransport, verify_signature
from crm.schema import AuditRecord, CustomerIdentity
from crm.transports import (
    MessageTransport,
    SmsGatewayTransport,
    WeChatTemplateTransport,
    make_transport,
    transport_class,
)
from tests.unit.crm import conftest as crm_fixtures
from tests.unit.crm.conftest import Dealer
from tests.unit.crm.test_delivery import Inbox

SECRET = b"gateway-secret"
URL = "https://dealer.example/m/signin?t=i1.abc"
dealer = crm_fixtures.dealer  # the CRM tests' seeded dealer, on SQLite and PostgreSQL


class Receiver:
    """An HTTP endpoint that records JSON posts and answers ``answer``."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.got: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                me.got.append((self.path, dict(self.headers), json.loads(body)))
                ok = verify_signature(SECRET, self.headers.get("X-Carpulse-Signature", ""),
                                      self.headers.get("X-Carpulse-Timestamp", "0"), body)  # fmt: skip
                if self.path.startswith("/sms") and not ok:
                    self.send_response(401)
                    self.end_headers()
                    return
                out = json.dumps(answer or {"errcode": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _send(d: Dealer, t: MessageTransport, who: str | None = None) -> Any:
    with d.store.tx() as s:
        return t.send_link(s, who or d.member, URL, 24)


def test_registry_names_the_builtins_and_refuses_unknown_ones() -> None:
    for kind in ("recording", "sms", "email", "wechat"):
        assert issubclass(transport_class(kind), MessageTransport)
    with pytest.raises(ConfigError, match="unknown member transport 'pigeon'"):
        transport_class("pigeon")


def test_recording_keeps_and_writes_what_it_sent(dealer: Dealer, tmp_path: Path) -> None:
    t = make_transport("recording", path=tmp_path / "sent.jsonl")
    msg = _send(dealer, t)
    assert msg.address == "+8613800000001" and URL in msg.text and msg.lang == "zh-CN"
    line = json.loads((tmp_path / "sent.jsonl").read_text().splitlines()[0])
    assert line["url"] == URL and line["customer_id"] == dealer.member
    with dealer.store.tx() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "member.link.sent"))
        assert rec is not None and URL not in json.dumps(rec.detail)  # never the link itself


def test_sms_gateway_gets_a_signed_request(dealer: Dealer, receiver: Receiver) -> None:
    _send(dealer, SmsGatewayTransport(receiver.base + "/sms", SECRET))
    ((path, _headers, doc),) = receiver.got
    assert path == "/sms" and doc["to"] == "+8613800000001" and URL in doc["text"]
    with pytest.raises(DeliveryError, match="HTTP 401") as err:  # a wrong key: refused, for good
        _send(dealer, SmsGatewayTransport(receiver.base + "/sms", b"wrong"))
    assert err.value.permanent
    with pytest.raises(DeliveryError, match="unreachable") as err:
        _send(dealer, SmsGatewayTransport(f"http://127.0.0.1:{free_port()}/sms", SECRET))
    assert not err.value.permanent


def test_wechat_template_message(dealer: Dealer, receiver: Receiver, tmp_path: Path) -> None:
    with dealer.store.tx() as s:
        s.add(CustomerIdentity(customer_id=dealer.member, kind="wechat_openid", value="oABC123"))
    token = tmp_path / "wechat.token"
    token.write_text("ACCESS-1\n")
    _send(dealer, WeChatTemplateTransport("tpl-1", token, api=receiver.base))
    ((path, _h, doc),) = receiver.got
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(path).query) == {
        "access_token": ["ACCESS-1"]
    }
    assert path.startswith("/cgi-bin/message/template/send")
    assert (doc["touser"], doc["template_id"], doc["url"]) == ("oABC123", "tpl-1", URL)
    refusing = Receiver({"errcode": 40003, "errmsg": "invalid openid"})
    try:
        with pytest.raises(DeliveryError, match="errcode 40003"):
            _send(dealer, WeChatTemplateTransport("tpl-1", token, api=refusing.base))
    finally:
        refusing.close()


def test_email_through_a_real_smtp_server(dealer: Dealer) -> None:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        _send(dealer, make_transport("email", smtp=SmtpTransport("127.0.0.1", controller.port)))
    finally:
        controller.stop()
    (mail,) = handler.messages
    assert mail["To"] == "wang@example.com" and mail["Subject"] == "会员登录"
    assert URL in mail.get_content()


@pytest.mark.parametrize("kind", ["recording", "sms", "email", "wechat"])
def test_no_address_is_a_permanent_error_and_nothing_is_sent(
    dealer: Dealer, receiver: Receiver, tmp_path: Path, kind: str
) -> None:
    options: dict[str, Any] = {
        "recording": {"address_kind": "wechat_openid"},
        "sms": {"url": receiver.base + "/sms", "secret": SECRET},
        "email": {"smtp": SmtpTransport("127.0.0.1", free_port())},
        "wechat": {"template_id": "t", "token_file": tmp_path / "none", "api": receiver.base},
    }[kind]
    t = make_transport(kind, **options)
    who = dealer.other
    if kind == "sms":  # the other customer has a phone: take it away for this case
        with dealer.store.tx() as s:
            for ident in s.scalars(
                select(CustomerIdentity).where(CustomerIdentity.customer_id == who)
            ):
                s.delete(ident)
    with pytest.raises(DeliveryError, match="has no") as err:
        _send(dealer, t, who)
    assert err.value.permanent and t.sent_count == 0 and receiver.got == []
