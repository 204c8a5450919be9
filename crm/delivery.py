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
import re
import smtplib
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Final, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.backoff import exponential, jittered
from core.errors import CrmError, DeliveryError, DuplicateAction, InboxScopeError
from crm import store as st
from crm.schema import Appointment, Coupon, CouponTemplate, Customer, Ownership, Vehicle, utcnow
from crm.store import CrmStore, audit
from crm.tables import INBOX_ROLES, InboxItem, OutboxMessage

log = logging.getLogger(__name__)


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
        """The wait after the ``attempts``-th failed attempt (from 1), within ``(1 +- jitter)``."""
        return jittered(exponential(max(attempts - 1, 0), self.base_s, self.cap_s), self.jitter)


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


def outbox_rows(
    s: Session, state: str = "dead", channel: str | None = None, limit: int = 100
) -> list[OutboxMessage]:
    """Outbox rows in ``state`` (newest first), of one channel or all."""
    q = select(OutboxMessage).where(OutboxMessage.state == state)
    if channel is not None:
        q = q.where(OutboxMessage.channel == channel)
    return list(s.scalars(q.order_by(OutboxMessage.id.desc()).limit(limit)))


def dead_letters(s: Session, limit: int = 100) -> list[OutboxMessage]:
    return outbox_rows(s, "dead", None, limit)


def masked_target(msg: OutboxMessage) -> str:
    """Where a message goes, for an operator's list: an address's first letter and domain, a
    webhook's scheme and host (its path and query may hold a token)."""
    t = msg.target
    if not t:
        return ""
    if msg.channel == "email" and "@" in t:
        local, _, domain = t.rpartition("@")
        return f"{local[:1]}***@{domain}"
    scheme, sep, rest = t.partition("://")
    return f"{scheme}{sep}{rest.split('/', 1)[0].split('?', 1)[0]}/..." if sep else "***"


_EMAIL: Final = re.compile(r"([^\s<>@\"']+)@([^\s<>@\"']+)")


def masked_error(text: str) -> str:
    """A delivery error for an operator's list: addresses in it (SMTP echoes them) masked."""
    return _EMAIL.sub(lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", text)


CONSENT_CONDITION: Final = re.compile(r"^customer\.consent\.([a-z_]+)\s*==\s*true$")


def requeue_refusal(s: Session, msg: OutboxMessage, rules: Sequence[Any]) -> str | None:
    """Why ``msg`` may not be sent again now, or ``None``: not a dead letter, its customer was
    erased, or the consent its rule asked for (``customer.consent.X == true``) was withdrawn
    since; a rule this CRM does not know (``rules``) cannot be checked, so it is refused."""
    if msg.state != "dead":
        return f"is {msg.state}, not a dead letter"
    if msg.customer_id is None:
        return None  # an integration's webhook (crash call): no customer's consent involved
    customer = s.get(Customer, st.resolve(s, msg.customer_id))
    if customer is None or customer.erased_at is not None or not msg.target:
        return "its customer was erased"
    rule_id = (msg.payload or {}).get("rule")
    rule = next((r for r in rules if r.id == rule_id), None)
    if rule is None:
        return f"its rule {rule_id!r} is not among the rules given (--rules)"
    for cond in rule.conditions:
        m = CONSENT_CONDITION.match(cond.strip())
        if m and not st.has_consent(s, customer.id, m.group(1)):
            return f"its customer's {m.group(1)} consent was withdrawn"
    return None


def requeue(s: Session, message_id: int, actor: str, rules: Sequence[Any] | None = None) -> None:
    """Put a dead letter back in the queue (after fixing the endpoint or the address); with
    ``rules``, only when ``requeue_refusal`` finds nothing against it."""
    msg = s.get(OutboxMessage, message_id)
    if msg is None or msg.state != "dead":
        raise DeliveryError(f"outbox message {message_id} is not a dead letter", permanent=True)
    if rules is not None and (why := requeue_refusal(s, msg, rules)):
        raise DeliveryError(f"outbox message {message_id} {why}", permanent=True)
    msg.state, msg.attempts, msg.next_at = "pending", 0, utcnow()
    audit(s, actor, "outbox.requeue", str(message_id))


# ----- dashboard inbox ---------------------------------------------------------------------------
# The one inbox: the rules engine writes cards (``crm.engine``), the dashboard files its
# maintenance predictions and DTC routings here with ``file_card``, and the service advisors act
# on them through ``acknowledge`` / ``book`` / ``coupon`` (audited, scoped to their dealer).
ADVISOR_ROLES: Final = ("advisor", "expert")
RECENTLY_DONE: Final = dt.timedelta(days=1)  # closed cards stay on the advisors' page this long


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


def close_silent_cards(s: Session, vin: str, alarm_id: str) -> int:
    """The car of a silence episode reports again: close that episode's open call-centre cards
    (``silent_car``, filed by the rules engine with the episode id as their event)."""
    q = select(InboxItem).where(
        InboxItem.vin == vin, InboxItem.kind == "silent_car", InboxItem.done_at.is_(None)
    )
    closed = 0
    for item in s.scalars(q):
        if (item.data or {}).get("event") == alarm_id:
            close_item(s, item.id, "stream", note="the car reports again")
            closed += 1
    return closed


def file_card(
    s: Session,
    *,
    role: str,
    kind: str,
    key: str,
    title: str,
    vin: str | None = None,
    customer_id: str | None = None,
    body: str = "",
    priority: int = 5,
    data: dict[str, Any] | None = None,
) -> InboxItem:
    """Add a card, or refresh the one with the same ``key`` (a repeated prediction updates its
    card instead of piling up; a card already acted on stays closed)."""
    if role not in INBOX_ROLES:
        raise DeliveryError(f"unknown inbox role {role!r}; expected one of {INBOX_ROLES}", True)
    item = s.scalar(select(InboxItem).where(InboxItem.effect_key == key))
    if item is None:
        item = InboxItem(role=role, kind=kind, effect_key=key, vin=vin, customer_id=customer_id,
                         priority=priority, title=title[:200], body=body, data=data or {})  # fmt: skip
        s.add(item)
    else:
        item.title, item.body = title[:200], body
        item.data = {**(data or {}), "actions": item.data.get("actions", [])}
    s.flush()
    return item


# ----- DTC cards: one per (vehicle, code, ownership period) --------------------------------------
DTC_PRIORITY: Final = {"high": 1, "medium": 2, "low": 3}


def dtc_role(severity: str) -> str:
    """The queue a fault belongs in: the expert's for a high-severity code, else the advisor's."""
    return "expert" if severity == "high" else "advisor"


def ownership_period(s: Session, vin: str, at: dt.datetime) -> str:
    """The ownership a fault at ``at`` belongs to (its row id; ``none`` while nobody owns it)."""
    row = s.scalar(
        select(Ownership.id).where(
            Ownership.vin == vin,
            Ownership.valid_from <= at,
            Ownership.valid_to.is_(None) | (Ownership.valid_to > at),
        )
    )
    return "none" if row is None else str(row)


def dtc_key(vin: str, code: str, period: str) -> str:
    return f"dtc|{vin}|{code}|{period}"


def file_dtc_card(
    s: Session,
    *,
    vin: str,
    code: str,
    severity: str,
    text: str = "",
    source: str,
    at: dt.datetime | None = None,
    role: str | None = None,
    title: str | None = None,
    body: str = "",
    lang: str | None = None,
    data: dict[str, Any] | None = None,
) -> InboxItem:
    """The one card of a fault: per (vehicle, code, ownership period), whoever reports it.

    The dashboard's Kafka feed (``source="feed"``) and the rules engine (``rule:<id>``) both file
    DTCs through here under the key ``dtc|<vin>|<code>|<ownership id>``, so a fault both see is
    one card. It goes to ``role`` (default: by severity, ``dtc_role``) and only ever moves up:
    an advisor card becomes the expert's when a later report says high, never back. A card
    already acted on stays closed; a new owner's period is a new card.
    """
    at = utcnow() if at is None else at
    role = role or dtc_role(severity)
    if role not in ADVISOR_ROLES:
        raise DeliveryError(f"DTC cards go to {ADVISOR_ROLES}, not {role!r}", True)
    key = dtc_key(vin, code, ownership_period(s, vin, at))
    entry = {"code": code, "text": text, "severity": severity}
    extra = data or {}
    item = s.scalar(select(InboxItem).where(InboxItem.effect_key == key))
    if item is None:
        try:
            with s.begin_nested():
                item = InboxItem(role=role, kind="dtc", effect_key=key, vin=vin,
                                 customer_id=st.owner_at(s, vin, at),
                                 priority=DTC_PRIORITY.get(severity, 2),
                                 title=(title or f"DTC {code} on {vin}")[:200], body=body,
                                 data={**extra, "codes": [entry], "sources": [source]})  # fmt: skip
                if lang:
                    item.lang = lang
                s.add(item)
            return item
        except IntegrityError:  # another process filed it between our read and our insert
            item = s.scalar(select(InboxItem).where(InboxItem.effect_key == key))
            assert item is not None
    old = dict(item.data)
    known = old.get("codes") or []
    if not any(c.get("text") for c in known) or (text and role == "expert"):
        known = [entry]
    new = {**old, **extra, "codes": known,
           "sources": sorted({*old.get("sources", []), source})}  # fmt: skip
    new["actions"] = old.get("actions", [])
    if role == "expert" and item.role != "expert":
        item.role, item.priority = "expert", min(item.priority, DTC_PRIORITY["high"])
        new["moved_to_expert"] = {"by": source, "at": utcnow().isoformat()}
        if title:
            item.title, item.body = title[:200], body
            item.lang = lang or item.lang
    item.data = new
    s.flush()
    return item


def _dealer_of_card() -> Any:
    """The card's dealer: its vehicle's, or (no VIN, e.g. a face or customer-plate arrival) its
    customer's."""
    return func.coalesce(Vehicle.dealer_id, Customer.dealer_id)


def dealer_inbox(
    s: Session, dealer_id: str, roles: Sequence[str] = ADVISOR_ROLES, *, limit: int = 100
) -> list[InboxItem]:
    """The open cards of ``roles`` for one dealer, most urgent first, then those closed within
    ``RECENTLY_DONE`` (so an advisor sees what was just done)."""
    q = (
        select(InboxItem)
        .outerjoin(Vehicle, Vehicle.vin == InboxItem.vin)
        .outerjoin(Customer, Customer.id == InboxItem.customer_id)
        .where(
            InboxItem.role.in_(tuple(roles)),
            _dealer_of_card() == dealer_id,
            InboxItem.done_at.is_(None) | (InboxItem.done_at >= utcnow() - RECENTLY_DONE),
        )
        .order_by(InboxItem.done_at.is_not(None), InboxItem.priority, InboxItem.created_at.desc())
        .limit(limit)
    )
    return list(s.scalars(q))


def dealer_card(
    s: Session, item_id: int, dealer_id: str, roles: Sequence[str] = ADVISOR_ROLES
) -> InboxItem:
    """One card of the dealer's queues, or ``InboxScopeError`` (unknown, other dealer or queue)."""
    item = s.get(InboxItem, item_id)
    if item is not None and item.role in roles:
        veh = s.get(Vehicle, item.vin) if item.vin else None
        cust = s.get(Customer, item.customer_id) if item.customer_id else None
        owner_dealer = veh.dealer_id if veh else (cust.dealer_id if cust else None)
        if owner_dealer == dealer_id:
            return item
    raise InboxScopeError(f"inbox item {item_id} is not in dealer {dealer_id}'s queues")


def card_state(item: InboxItem) -> str:
    """``new``, or the last action taken on it (acknowledged, booked, coupon_issued)."""
    actions = item.data.get("actions") or []
    return str(actions[-1]["action"]) if actions else ("done" if item.done_at else "new")


def _act(s: Session, item: InboxItem, actor: str, state: str, action: str, **detail: Any) -> None:
    """Record the action on the card, close it (the first action does) and audit it."""
    entry = {"action": state, "by": actor, "at": utcnow().isoformat(), **detail}
    item.data = {**item.data, "actions": [*item.data.get("actions", []), entry]}
    if item.done_at is None:
        item.done_at = utcnow()
    audit(s, actor, action, item.vin or item.customer_id or str(item.id), "service",
          item=item.id, kind=item.kind, role=item.role, **detail)  # fmt: skip


def _customer_of(s: Session, item: InboxItem) -> str:
    cid = st.owner_at(s, item.vin, utcnow()) if item.vin else None
    cid = cid or (st.resolve(s, item.customer_id) if item.customer_id else None)
    if cid is None:
        raise CrmError(f"inbox item {item.id} has no current customer")
    return cid


def acknowledge(
    s: Session, item_id: int, actor: str, dealer_id: str, roles: Sequence[str] = ADVISOR_ROLES
) -> InboxItem:
    item = dealer_card(s, item_id, dealer_id, roles)
    _act(s, item, actor, "acknowledged", "inbox.acknowledge")
    return item


def book(s: Session, item_id: int, at: dt.datetime, actor: str, dealer_id: str) -> Appointment:
    """An appointment for the card's vehicle and its current owner."""
    item = dealer_card(s, item_id, dealer_id)
    if item.vin is None:
        raise CrmError(f"inbox item {item_id} names no vehicle to book")
    appt = Appointment(vin=item.vin, customer_id=_customer_of(s, item), at=at, kind=item.kind,
                       created_by=actor)  # fmt: skip
    s.add(appt)
    s.flush()
    _act(s, item, actor, "booked", "inbox.book", appointment=appt.id, at=at.isoformat())
    return appt


def coupon(s: Session, item_id: int, template: str, actor: str, dealer_id: str) -> Coupon:
    """Issue a coupon to the card's customer through the CRM store, once per card and template
    (the effect key ``inbox|<id>|<template>`` is claimed like a rule's)."""
    item = dealer_card(s, item_id, dealer_id)
    cid = _customer_of(s, item)
    t = s.get(CouponTemplate, template)
    if t is None:
        raise CrmError(f"unknown coupon template {template!r}")
    period = template if len(template) <= 32 else hashlib.sha256(template.encode()).hexdigest()[:32]
    if not st.claim_effect(s, "inbox", str(item.id), period, "coupon", {"by": actor}):
        raise DuplicateAction(f"a {template} coupon was already issued for inbox item {item_id}")
    until = utcnow() + dt.timedelta(days=t.valid_days)
    c = st.issue_coupon(s, template, cid, until, vin=item.vin,
                        effect=st.effect_key("inbox", str(item.id), period))  # fmt: skip
    _act(s, item, actor, "coupon_issued", "inbox.coupon", coupon=c.id, template=template)
    return c
