"""Delivery of the outbox: signed JSON webhooks and SMTP e-mail with retries, backoff and dead
letters; and the dashboard inbox (cards per role) that rules write directly.

An outbox row is written in the same transaction as its effect, so it exists exactly once; the
dispatcher delivers it at least once and passes the effect key as the idempotency key
(``Idempotency-Key`` header, e-mail ``Message-ID``) so a receiver can drop a repeat sent after a
crash between "sent" and "marked sent".

Webhook signature: ``X-Carpulse-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>." + body)>``
with ``X-Carpulse-Timestamp: <unix seconds>``; ``verify_signature`` is the receiver's check
(constant-time, with a replay window).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import random
import smtplib
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import CarpulseError
from crm.models import utcnow
from crm.store import CrmStore, audit
from crm.tables import INBOX_ROLES, InboxItem, OutboxMessage

log = logging.getLogger(__name__)


class DeliveryError(CarpulseError):
    """A delivery attempt failed; ``permanent`` ones go to the dead letters at once."""

    def __init__(self, msg: str, permanent: bool = False) -> None:
        super().__init__(msg)
        self.permanent = permanent


class Transport(Protocol):
    def send(self, msg: OutboxMessage) -> None: ...


# ----- webhooks ----------------------------------------------------------------------------------
def sign(secret: bytes, ts: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes,
    signature: str,
    ts_header: str,
    body: bytes,
    now: float | None = None,
    tolerance_s: float = 300.0,
) -> bool:
    """The receiver's check: right HMAC and a timestamp within ``tolerance_s`` (no replays)."""
    try:
        ts = int(ts_header)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


@dataclass
class WebhookTransport:
    secret: bytes
    timeout_s: float = 5.0

    def send(self, msg: OutboxMessage) -> None:
        body = json.dumps(msg.payload, ensure_ascii=False, sort_keys=True, default=str).encode()
        ts = int(time.time())
        req = urllib.request.Request(
            msg.target,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "carpulse-crm/1",
                "X-Carpulse-Timestamp": str(ts),
                "X-Carpulse-Signature": sign(self.secret, ts, body),
                "Idempotency-Key": f"{msg.effect_key}|{msg.channel}",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as err:
            err.close()  # it holds the response socket
            # 4xx means this request will never work (bad URL, refused signature), except these
            permanent = 400 <= err.code < 500 and err.code not in (408, 409, 425, 429)
            raise DeliveryError(f"HTTP {err.code} {err.reason}", permanent) from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise DeliveryError(f"unreachable: {getattr(err, 'reason', err)}") from err


# ----- e-mail ------------------------------------------------------------------------------------
@dataclass
class SmtpTransport:
    host: str
    port: int = 25
    sender: str = "noreply@carpulse.local"
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0

    def send(self, msg: OutboxMessage) -> None:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = msg.target
        mail["Subject"] = msg.subject
        mail["Date"] = formatdate(localtime=False)
        digest = hashlib.sha256(msg.effect_key.encode()).hexdigest()[:32]
        mail["Message-ID"] = f"<{digest}@carpulse>"  # stable: a resent mail is recognisable
        mail.set_content(msg.body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as err:
            raise DeliveryError(f"recipient refused: {msg.target}", permanent=True) from err
        except smtplib.SMTPResponseException as err:
            raise DeliveryError(
                f"SMTP {err.smtp_code}: {err.smtp_error!r}", err.smtp_code >= 500
            ) from err
        except (smtplib.SMTPException, OSError) as err:
            raise DeliveryError(f"SMTP unreachable: {err}") from err


# ----- dispatcher --------------------------------------------------------------------------------
@dataclass
class Backoff:
    base_s: float = 30.0
    cap_s: float = 3600.0
    max_attempts: int = 6
    jitter: float = 0.2

    def delay(self, attempts: int) -> float:
        d = min(self.base_s * 2 ** max(attempts - 1, 0), self.cap_s)
        return d * (1 + random.uniform(-self.jitter, self.jitter))


class Dispatcher:
    """Sends due outbox rows; on failure retries with exponential backoff, then dead-letters."""

    def __init__(
        self,
        store: CrmStore,
        transports: Mapping[str, Transport],
        backoff: Backoff | None = None,
        lease_s: float = 120.0,
    ) -> None:
        self.store = store
        self.transports = dict(transports)
        self.backoff = backoff or Backoff()
        self.lease_s = lease_s

    def run_once(self, now: dt.datetime | None = None, limit: int = 100) -> Counter[str]:
        now = now or utcnow()
        totals: Counter[str] = Counter()
        with self.store.tx() as s:
            # Lease the rows so a second dispatcher (or a crash) does not send them meanwhile.
            rows = s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.state == "pending", OutboxMessage.next_at <= now)
                .order_by(OutboxMessage.next_at, OutboxMessage.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.next_at = now + dt.timedelta(seconds=self.lease_s)
            leased = [r.id for r in rows]
        for mid in leased:
            with self.store.tx() as s:
                msg = s.get(OutboxMessage, mid)
                assert msg is not None
                transport = self.transports.get(msg.channel)
                err: DeliveryError | None = None
                if transport is None:
                    err = DeliveryError(f"no transport for channel {msg.channel!r}", True)
                else:
                    try:
                        transport.send(msg)
                    except DeliveryError as e:
                        err = e
                msg.attempts += 1
                if err is None:
                    msg.state, msg.sent_at, msg.last_error = "sent", now, ""
                    totals["sent"] += 1
                elif err.permanent or msg.attempts >= self.backoff.max_attempts:
                    msg.state, msg.last_error = "dead", str(err)[:500]
                    totals["dead"] += 1
                    audit(s, "delivery", "outbox.dead", str(msg.id), channel=msg.channel,
                          error=str(err)[:200], attempts=msg.attempts)  # fmt: skip
                    log.warning("outbox %s dead after %d attempts: %s", msg.id, msg.attempts, err)
                else:
                    msg.last_error = str(err)[:500]
                    msg.next_at = now + dt.timedelta(seconds=self.backoff.delay(msg.attempts))
                    totals["retry"] += 1
        return totals


def dead_letters(s: Session, limit: int = 100) -> list[OutboxMessage]:
    return list(
        s.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.state == "dead")
            .order_by(OutboxMessage.id.desc())
            .limit(limit)
        )
    )


def requeue(s: Session, message_id: int, actor: str) -> None:
    """Put a dead letter back in the queue (after fixing the endpoint or the address)."""
    msg = s.get(OutboxMessage, message_id)
    if msg is None or msg.state != "dead":
        raise DeliveryError(f"outbox message {message_id} is not a dead letter", permanent=True)
    msg.state, msg.attempts, msg.next_at = "pending", 0, utcnow()
    audit(s, actor, "outbox.requeue", str(message_id))


# ----- dashboard inbox ---------------------------------------------------------------------------
def inbox(s: Session, role: str, *, open_only: bool = True, limit: int = 100) -> list[InboxItem]:
    """A role's cards, most urgent first (priority 0 = top), oldest first within a priority."""
    if role not in INBOX_ROLES:
        raise DeliveryError(f"unknown inbox role {role!r}; expected one of {INBOX_ROLES}", True)
    q = select(InboxItem).where(InboxItem.role == role)
    if open_only:
        q = q.where(InboxItem.done_at.is_(None))
    return list(
        s.scalars(q.order_by(InboxItem.priority, InboxItem.created_at, InboxItem.id).limit(limit))
    )


def close_item(s: Session, item_id: int, actor: str, note: str = "") -> None:
    item = s.get(InboxItem, item_id)
    if item is None:
        raise DeliveryError(f"unknown inbox item {item_id}", permanent=True)
    if item.done_at is None:
        item.done_at = utcnow()
        audit(s, actor, "inbox.close", str(item_id), role=item.role, note=note)
