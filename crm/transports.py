"""Message transports for the member page's sign-in links: SMS gateway, e-mail, WeChat template
message, and a recording one for tests and demos (a small ABC and a registry, as ``core.plugins``).

``MessageTransport.send`` finds the customer's address for its channel (phone, e-mail, WeChat
openid), refuses a customer without one (``DeliveryError``, permanent), counts, and calls the
plugin's ``_send_internal``. Installed distributions add transports through the entry-point group
``carpulse.member_transports``.
"""

from __future__ import annotations

import abc
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import CarpulseSettings
from core.errors import ConfigError, DeliveryError
from core.plugins import plugin_class, registry
from crm import store as st
from crm.delivery import SmtpTransport, sign
from crm.schema import CustomerIdentity, new_id
from crm.tables import CustomerContact, OutboxMessage

GROUP: Final = "carpulse.member_transports"
BUILTIN: Final = {
    "recording": "crm.transports:RecordingTransport",
    "sms": "crm.transports:SmsGatewayTransport",
    "email": "crm.transports:EmailTransport",
    "wechat": "crm.transports:WeChatTemplateTransport",
}
TEXT: Final = {
    "zh-CN": ("会员登录", "点击链接登录您的会员页（{hours} 小时内有效，请勿转发）：{url}"),
    "en": ("Member sign-in", "Open your member page ({hours} h, do not forward): {url}"),
}


@dataclass(frozen=True)
class Message:
    customer_id: str
    address: str  # phone, e-mail or openid, as the channel needs
    subject: str
    text: str
    url: str
    lang: str = "zh-CN"


class MessageTransport(abc.ABC):
    """One channel to a customer; ``address_kind`` names what it needs."""

    address_kind: str = "phone"

    def __init__(self) -> None:
        self.sent_count = 0

    def address(self, s: Session, customer_id: str) -> str | None:
        cid = st.resolve(s, customer_id)
        if self.address_kind == "email":
            contact = s.get(CustomerContact, cid)
            return contact.email if contact else None
        return s.scalar(
            select(CustomerIdentity.value)
            .where(CustomerIdentity.customer_id == cid, CustomerIdentity.kind == self.address_kind)
            .order_by(CustomerIdentity.id)
            .limit(1)
        )

    def send_link(self, s: Session, customer_id: str, url: str, hours: float) -> Message:
        """Send a sign-in link to the customer in their language; audited (never the link)."""
        cid = st.resolve(s, customer_id)
        addr = self.address(s, cid)
        if not addr:
            raise DeliveryError(f"customer {cid} has no {self.address_kind} on file", True)
        contact = s.get(CustomerContact, cid)
        lang = contact.lang if contact and contact.lang in TEXT else "zh-CN"
        subject, body = TEXT[lang]
        msg = Message(cid, addr, subject, body.format(hours=f"{hours:g}", url=url), url, lang)
        self._send_internal(msg)
        self.sent_count += 1
        st.audit(s, "crm", "member.link.sent", cid, "member-page", channel=self.address_kind)
        return msg

    @abc.abstractmethod
    def _send_internal(self, msg: Message) -> None:
        """Deliver ``msg`` or raise ``DeliveryError``."""


class RecordingTransport(MessageTransport):
    """Keeps what it sent (``sent``) and, with a ``path``, appends it as JSON lines: tests read
    the link from it, ``carpulse member link --via recording`` prints it."""

    def __init__(self, path: Path | None = None, address_kind: str = "phone") -> None:
        super().__init__()
        self.address_kind = address_kind
        self.path = path
        self.sent: list[Message] = []
        self._lock = threading.Lock()

    def _send_internal(self, msg: Message) -> None:
        with self._lock:
            self.sent.append(msg)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(msg.__dict__, ensure_ascii=False) + "\n")


def _post_json(url: str, doc: dict[str, Any], headers: dict[str, str], timeout: float) -> bytes:
    body = json.dumps(doc, ensure_ascii=False).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bytes(resp.read(65536))
    except urllib.error.HTTPError as err:
        raise DeliveryError(f"HTTP {err.code} from {url}", 400 <= err.code < 500) from err
    except (urllib.error.URLError, OSError) as err:
        raise DeliveryError(f"{url} unreachable: {err}") from err


@dataclass
class _HttpOptions:
    url: str
    secret: bytes = b""
    timeout_s: float = 10.0


class SmsGatewayTransport(MessageTransport):
    """An SMS gateway behind an HTTPS endpoint: ``POST url`` with ``{"to", "text"}``, signed like
    the CRM's webhooks (``X-Carpulse-Signature``: HMAC-SHA256 of ``"<ts>." + body``)."""

    address_kind = "phone"

    def __init__(self, url: str, secret: bytes = b"", timeout_s: float = 10.0) -> None:
        super().__init__()
        if not url.startswith(("https://", "http://")):
            raise DeliveryError(f"SMS gateway URL must be http(s): {url!r}", True)
        self.opts = _HttpOptions(url, secret, timeout_s)

    def _send_internal(self, msg: Message) -> None:
        import time

        doc = {"to": msg.address, "text": msg.text, "id": new_id()}
        body = json.dumps(doc, ensure_ascii=False).encode()
        ts = int(time.time())
        headers = {"X-Carpulse-Timestamp": str(ts)}
        if self.opts.secret:
            headers["X-Carpulse-Signature"] = sign(self.opts.secret, ts, body)
        _post_json(self.opts.url, doc, headers, self.opts.timeout_s)


class EmailTransport(MessageTransport):
    """E-mail through the CRM's SMTP settings (``crm.delivery.SmtpTransport``)."""

    address_kind = "email"

    def __init__(self, smtp: SmtpTransport) -> None:
        super().__init__()
        self.smtp = smtp

    def _send_internal(self, msg: Message) -> None:
        self.smtp.send(OutboxMessage(channel="email", target=msg.address, subject=msg.subject,
                                     body=msg.text, effect_key=f"member-link|{new_id()}"))  # fmt: skip


class WeChatTemplateTransport(MessageTransport):
    """A WeChat service account's template message (``/cgi-bin/message/template/send``) to the
    customer's openid, the link as the message's ``url``. ``api`` is configurable (a relay or a
    test server); the access token comes from a file the account's token refresher writes."""

    address_kind = "wechat_openid"

    def __init__(
        self,
        template_id: str = "",
        token_file: Path | None = None,
        api: str = "https://api.weixin.qq.com",
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.template_id, self.token_file, self.api = template_id, token_file, api
        self.timeout_s = timeout_s

    def _send_internal(self, msg: Message) -> None:
        if not self.template_id or self.token_file is None:
            raise DeliveryError("wechat transport needs template_id and token_file", True)
        try:
            token = self.token_file.read_text().strip()
        except OSError as err:
            raise DeliveryError(f"cannot read the WeChat access token: {err}", True) from err
        url = f"{self.api.rstrip('/')}/cgi-bin/message/template/send?" + urllib.parse.urlencode(
            {"access_token": token}
        )
        doc = {"touser": msg.address, "template_id": self.template_id, "url": msg.url,
               "data": {"first": {"value": msg.subject}, "remark": {"value": msg.text}}}  # fmt: skip
        answer = _post_json(url, doc, {}, self.timeout_s)
        try:
            code = json.loads(answer or b"{}").get("errcode", 0)
        except (ValueError, AttributeError):
            code = -1
        if code:
            raise DeliveryError(f"WeChat refused the template message (errcode {code})", True)


def from_settings(s: CarpulseSettings) -> MessageTransport | None:
    """The transport ``[member] transport`` names, built from its settings (None: '')."""
    m = s.member
    kind = m.transport
    if not kind:
        return None
    if kind == "recording":
        return make_transport(kind, path=m.recording_file)
    if kind == "sms":
        secret = b"" if m.sms_secret_file is None else _secret(m.sms_secret_file)
        return make_transport(kind, url=m.sms_url, secret=secret)
    if kind == "email":
        if not s.smtp.host:
            raise ConfigError("[member] transport = email needs [smtp] host")
        smtp = SmtpTransport(s.smtp.host, s.smtp.port, s.smtp.sender, s.smtp.starttls,
                             s.smtp.username, s.smtp.resolved_password(), s.smtp.timeout_s)  # fmt: skip
        return make_transport(kind, smtp=smtp)
    if kind == "wechat":
        return make_transport(kind, template_id=m.wechat_template_id,
                              token_file=m.wechat_token_file, api=m.wechat_api)  # fmt: skip
    return make_transport(kind)  # an installed plug-in that needs no options


def _secret(path: Path) -> bytes:
    try:
        return path.read_text().strip().encode()
    except OSError as err:
        raise ConfigError(f"member.sms_secret_file {path}: {err.strerror}") from err


def transport_class(kind: str) -> type[MessageTransport]:
    cls = plugin_class(registry(BUILTIN, GROUP), kind, MessageTransport, "member transport")
    return cls  # type: ignore[return-value]


def make_transport(kind: str, **options: Any) -> MessageTransport:
    """The transport registered as ``kind``, built with ``options``."""
    return transport_class(kind)(**options)
