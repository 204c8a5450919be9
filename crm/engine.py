"""The rules engine: facts for an event, matching rules, and each effect exactly once.

``RuleEngine.handle(session, event)`` does everything inside the caller's transaction: the
effect's idempotency key (rule, subject, period) is claimed with ``crm.store.claim_effect`` and
the coupon, outbox messages and inbox cards are written in the same transaction, so they commit
together or not at all, and a replayed event finds its key taken and does nothing. A dry run is
the same code in a transaction that is rolled back (``crm.jobs.dry_run``).

A ``per_owner`` rule (every ``subject: vin`` rule by default) names in its subject the ownership
in force at the event's time (``VIN@o<ownership id>``), so a sale opens a fresh history for the
new owner (keys, cool-downs), while an event from before the sale, replayed after it, still
finds the previous owner's key. A plain per-vehicle key (written before per-owner keys existed,
or while nobody owned the car) counts for the ownership its firing's time falls in.

Events the CRM cannot place yet (unknown VIN, device or plate) are parked in ``parked_events``
and retried by ``crm.jobs.retry_parked``; they are never dropped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from core.crm_events import EVENT_KINDS, CrmEvent
from core.errors import CarpulseError, CrmError, Unplaced
from crm import store as st
from crm.delivery import ADVISOR_ROLES, file_dtc_card
from crm.loyalty import tier_name
from crm.messages import DEFAULT_LANG, render
from crm.rules import Rule, is_missing, lookup
from crm.schema import (
    Appointment,
    Coupon,
    CouponTemplate,
    Customer,
    Member,
    Ownership,
    PlateAssignment,
    Vehicle,
)
from crm.tables import CustomerContact, InboxItem, OutboxMessage, ParkedEvent, RuleFiring

log = logging.getLogger(__name__)


@dataclass
class Firing:
    rule: str
    key: str
    kind: str
    subject: str
    customer_id: str | None
    at: str
    coupon: str | None = None
    valid_until: str | None = None
    messages: int = 0
    inbox: int = 0
    because: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What one event did: effects, and why each other matching rule did nothing."""

    fired: list[Firing] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    parked: str | None = None
    evaluated: int = 0
    vin: str | None = None
    customer_id: str | None = None


class Lazy(Mapping[str, Any]):
    """A mapping computed on first access."""

    def __init__(self, load: Callable[[], dict[str, Any]]) -> None:
        self._load: Callable[[], dict[str, Any]] | None = load
        self._data: dict[str, Any] = {}

    def _get(self) -> dict[str, Any]:
        if self._load is not None:
            self._data, self._load = self._load(), None
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _short(text: str, n: int = 32) -> str:
    """Fits the 32-character period column; long values become a stable digest, not a cut."""
    return text if len(text) <= n else "h:" + hashlib.sha256(text.encode()).hexdigest()[: n - 2]


def _period(rule: Rule, ev: CrmEvent, facts: dict[str, Any]) -> str | None:
    p = rule.period
    if p == "event":
        return _short(ev.id)
    if p == "day":
        return ev.ts.strftime("%Y-%m-%d")
    if p == "week":
        y, w, _ = ev.ts.isocalendar()
        return f"{y}-W{w:02d}"
    if p == "month":
        return ev.ts.strftime("%Y-%m")
    if p == "year":
        return ev.ts.strftime("%Y")
    value = lookup(facts, p.removeprefix("field:"))
    return None if is_missing(value) or value is None else _short(str(value))


def _within(col: Any, own: Ownership) -> list[ColumnElement[bool]]:
    """``col`` inside the ownership's window ``[valid_from, valid_to)``."""
    conds = [col >= own.valid_from]
    if own.valid_to is not None:
        conds.append(col < own.valid_to)
    return conds


def _taken(s: Session, key: str, plain: str, own: Ownership | None) -> bool:
    """Whether the effect already happened: under ``key`` or, for an ownership, under the plain
    per-vehicle key ``plain`` fired within that ownership (rows from before per-owner keys; a
    plain row without a firing time counts, as it always did)."""
    if own is None or plain == key:
        return s.scalar(select(st.Effect.id).where(st.Effect.key == key)) is not None
    q = (
        select(st.Effect.id)
        .outerjoin(RuleFiring, RuleFiring.effect_key == st.Effect.key)
        .where(
            or_(
                st.Effect.key == key,
                and_(
                    st.Effect.key == plain,
                    or_(RuleFiring.id.is_(None), and_(*_within(RuleFiring.at, own))),
                ),
            )
        )
    )
    return s.scalar(q.limit(1)) is not None


def _as_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, 23, 59, 59, tzinfo=dt.UTC)
    if isinstance(value, str):
        try:
            return (
                _as_time(dt.datetime.fromisoformat(value))
                if "T" in value
                else _as_time(dt.date.fromisoformat(value))
            )
        except ValueError:
            return None
    return None


class RuleEngine:
    """Applies ``rules`` to events. ``webhook_url`` is the dealer integration that receives every
    message effect as signed JSON (``crm.delivery``); ``staff_lang`` is the inbox language."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        webhook_url: str | None = None,
        staff_lang: str = DEFAULT_LANG,
    ) -> None:
        self.rules = list(rules)
        self.by_kind: dict[str, list[Rule]] = {k: [] for k in EVENT_KINDS}
        for r in self.rules:
            self.by_kind[r.on].append(r)
        self.webhook_url = webhook_url
        self.staff_lang = staff_lang
        self.stats: Counter[str] = Counter()

    def check(self, s: Session) -> list[str]:
        """Problems that need the database: coupon templates the rules name but the CRM lacks."""
        have = set(s.scalars(select(CouponTemplate.code)))
        return [
            f"{r.source}: rule {r.id}: unknown coupon template {r.effect['coupon']['template']!r}"
            for r in self.rules
            if "coupon" in r.effect and r.effect["coupon"]["template"] not in have
        ]

    # ----- facts ----------------------------------------------------------------------------
    def _place(self, s: Session, ev: CrmEvent) -> tuple[str | None, str | None, Ownership | None]:
        """``(vin, customer_id, ownership)`` for the event, or raise ``Unplaced``; the owner is
        the one at the event's time, so a replay after a sale still finds the previous one."""
        vin = ev.vin
        if vin is None and ev.device:
            vin = s.scalar(select(Vehicle.vin).where(Vehicle.device_id == ev.device))
            if vin is None:
                raise Unplaced(f"unknown device {ev.device!r}")
        if vin is None and ev.kind == "gate_arrival" and ev.data.get("plate"):
            plate = str(ev.data.get("plate", ""))
            vin = s.scalar(
                select(PlateAssignment.vin).where(
                    PlateAssignment.plate == plate, PlateAssignment.valid_to.is_(None)
                )
            )
            if vin is None:
                cid = s.scalar(
                    select(st.CustomerIdentity.customer_id).where(
                        st.CustomerIdentity.kind == "plate", st.CustomerIdentity.value == plate
                    )
                )
                if cid is None:
                    raise Unplaced(f"unknown plate {plate!r}")
                return None, st.resolve(s, cid), None
        if vin is not None:
            if s.get(Vehicle, vin) is None:
                raise Unplaced(f"unknown VIN {vin!r}")
            own = st.ownership_at(s, vin, ev.ts)
            return vin, None if own is None else st.resolve(s, own.customer_id), own
        if ev.customer_id is not None:
            if s.get(Customer, ev.customer_id) is None:
                raise Unplaced(f"unknown customer {ev.customer_id!r}")
            return None, st.resolve(s, ev.customer_id), None
        raise Unplaced("the event names no VIN, device, plate or customer")

    def facts(self, s: Session, ev: CrmEvent, vin: str | None, cid: str | None) -> dict[str, Any]:
        """``event`` now; ``customer`` and ``vehicle`` load on first use, so an event that fails
        its rules' event conditions costs no customer queries."""
        event = {**ev.data, "kind": ev.kind, "id": ev.id, "time": ev.ts.strftime("%Y-%m-%d %H:%M")}
        if ev.kind == "gate_arrival" and vin is not None:
            appts = s.scalars(
                select(Appointment.at).where(
                    Appointment.vin == vin,
                    Appointment.state == "booked",
                    func.date(Appointment.at) == ev.ts.date(),
                )
            ).all()
            event.setdefault("appointments", ", ".join(a.strftime("%H:%M") for a in appts) or "-")
        return {
            "event": event,
            "customer": Lazy(lambda: self._customer(s, cid)),
            "vehicle": Lazy(lambda: self._vehicle(s, vin)),
        }

    def _customer(self, s: Session, cid: str | None) -> dict[str, Any]:
        customer: dict[str, Any] = {"known": cid is not None, "member": False}
        if cid is not None:
            cust = s.get(Customer, cid)
            member = s.get(Member, cid)
            contact = s.get(CustomerContact, cid)
            customer.update(
                id=cid,
                name=cust.display_name if cust else "",
                member=member is not None,
                tier=member.tier if member else "",
                tier_zh=tier_name(member.tier, "zh-CN") if member else "",
                tier_en=tier_name(member.tier, "en") if member else "",
                lang=contact.lang if contact else DEFAULT_LANG,
                # consent in force now: the message is sent now, whatever the event's age
                consent=st.consents_in_force(s, cid, ("marketing", "location", "face")),
            )
        return customer

    def _vehicle(self, s: Session, vin: str | None) -> dict[str, Any]:
        vehicle: dict[str, Any] = {"vin": vin or "", "model": "", "plate": ""}
        if vin is not None:
            veh = s.get(Vehicle, vin)
            vehicle["model"] = veh.model if veh else ""
            vehicle["plate"] = (
                s.scalar(
                    select(PlateAssignment.plate).where(
                        PlateAssignment.vin == vin, PlateAssignment.valid_to.is_(None)
                    )
                )
                or ""
            )
        return vehicle

    # ----- the one entry point --------------------------------------------------------------
    def handle(self, s: Session, ev: CrmEvent, *, park: bool = True) -> Outcome:
        """Apply every rule on ``ev.kind`` within the caller's transaction."""
        out = Outcome()
        self.stats["events"] += 1
        rules = self.by_kind.get(ev.kind)
        if rules is None:
            out.skipped["unknown_kind"] += 1
            return out
        try:
            vin, cid, own = self._place(s, ev)
        except Unplaced as err:
            out.parked = str(err)
            self.stats["parked"] += 1
            if park:
                s.add(
                    ParkedEvent(
                        source=ev.source or "crm",
                        kind=ev.kind,
                        key=(ev.vin or ev.device or str(ev.data.get("plate", "")))[:64],
                        reason=str(err)[:300],
                        event=ev.to_json(),
                    )
                )
            return out
        out.vin, out.customer_id = vin, cid
        if ev.data.get("via") == "face" and (cid is None or not st.has_consent(s, cid, "face")):
            # a face match may only be used for a customer who consented to it
            out.skipped["no_face_consent"] += 1
            self.stats["no_face_consent"] += 1
            return out
        facts = self.facts(s, ev, vin, cid)
        for rule in rules:
            out.evaluated += 1
            self.stats["evaluated"] += 1
            if not rule.when(facts):
                out.skipped["conditions"] += 1
                continue
            try:
                with s.begin_nested():  # a failing rule must not undo the others' effects
                    reason = self._apply(s, rule, ev, facts, vin, cid, own, out)
            except CarpulseError as err:
                log.warning("rule %s failed on event %s: %s", rule.id, ev.id, err)
                reason = "error"
            if reason:
                out.skipped[reason] += 1
                self.stats[reason] += 1
        return out

    def _apply(
        self,
        s: Session,
        rule: Rule,
        ev: CrmEvent,
        facts: dict[str, Any],
        vin: str | None,
        cid: str | None,
        own: Ownership | None,
        out: Outcome,
    ) -> str | None:
        """Fire ``rule`` once; returns why it did not, or None."""
        if rule.subject == "vin":
            subject: Any = vin
        elif rule.subject == "customer":
            subject = cid
        else:
            subject = lookup(facts, rule.subject)
        if subject is None or is_missing(subject):
            return "no_subject"
        subject = _short(str(subject), 64)
        period = _period(rule, ev, facts)
        if period is None:
            return "no_period"
        # the vehicle under this ownership: a sale starts keys and cool-downs afresh
        scope = own if rule.per_owner and vin is not None else None
        owned = subject if scope is None else _short(f"{subject}@o{scope.id}", 64)
        key = st.effect_key(rule.id, owned, period)
        if _taken(s, key, st.effect_key(rule.id, subject, period), scope):
            return "duplicate"
        if rule.cooldown is not None and s.scalar(
            select(RuleFiring.id)
            .where(
                RuleFiring.rule == rule.id,
                RuleFiring.subject.in_([owned, subject]),
                RuleFiring.at > ev.ts - rule.cooldown,
                RuleFiring.at < ev.ts + rule.cooldown,
                *(() if scope is None else _within(RuleFiring.at, scope)),
            )
            .limit(1)
        ):
            return "cooldown"
        if rule.rate_limit is not None and cid is not None:
            rl = rule.rate_limit
            n = s.scalar(
                select(func.count(RuleFiring.id)).where(
                    RuleFiring.customer_id == cid,
                    RuleFiring.rate_group == rl.group,
                    RuleFiring.at > ev.ts - rl.per,
                    RuleFiring.at <= ev.ts,
                )
            )
            if (n or 0) >= rl.max:
                return "rate_limited"
        if "coupon" in rule.effect and cid is None:
            return "no_customer"
        firing = Firing(
            rule.id, key, rule.kind, subject, cid, ev.ts.isoformat(), because=rule.conditions
        )
        if not st.claim_effect(s, rule.id, owned, period, rule.kind, {"event": ev.id}):
            return "duplicate"  # a concurrent worker claimed it first
        s.add(
            RuleFiring(
                effect_key=key,
                rule=rule.id,
                subject=owned,
                customer_id=cid,
                rate_group=rule.rate_limit.group if rule.rate_limit else rule.id,
                at=ev.ts,
            )
        )
        facts = {**facts, "coupon": {}}
        if (spec := rule.effect.get("coupon")) is not None:
            assert cid is not None
            coupon = self._coupon(s, spec, ev, facts, cid, vin, key)
            firing.coupon, firing.valid_until = coupon.id, coupon.valid_until.isoformat()
            facts["coupon"] = {"id": coupon.id, "valid_until": f"{coupon.valid_until:%Y-%m-%d}"}
        if (spec := rule.effect.get("message")) is not None:
            firing.messages = self._messages(s, spec, facts, cid, key, rule)
        if (spec := rule.effect.get("inbox")) is not None:
            title, body = render(spec["template"], self.staff_lang, facts)
            code = ev.data.get("code")
            if ev.kind == "dtc" and vin and isinstance(code, str) and spec["role"] in ADVISOR_ROLES:
                # the dashboard's feed files the same faults: one card per vehicle, code, owner
                file_dtc_card(s, vin=vin, code=code, severity=str(ev.data.get("severity")),
                              text=str(ev.data.get("description") or ""), source=f"rule:{rule.id}",
                              at=ev.ts, role=spec["role"], title=title, body=body,
                              lang=self.staff_lang, data={"rule": rule.id, "event": ev.id,
                                                          "because": list(rule.conditions)})  # fmt: skip
            else:
                s.add(
                    InboxItem(
                        role=spec["role"],
                        priority=int(spec.get("priority", 5)),
                        kind=ev.kind,
                        vin=vin,
                        customer_id=cid,
                        title=title[:200],
                        body=body,
                        lang=self.staff_lang,
                        effect_key=key,
                        data={
                            "rule": rule.id,
                            "event": ev.id,
                            "because": list(rule.conditions),
                            # what the card draws (an anomaly's window), when the event has it
                            **({"evidence": ev.data["evidence"]} if "evidence" in ev.data else {}),
                        },
                    )
                )
            firing.inbox = 1
        # the audit subject stays the vehicle: the dealer scope and the timeline look it up
        st.audit(s, "rules", "rule.fire", subject, rule=rule.id, key=key, event=ev.id)
        out.fired.append(firing)
        self.stats["fired"] += 1
        return None

    def _coupon(
        self,
        s: Session,
        spec: dict[str, Any],
        ev: CrmEvent,
        facts: dict[str, Any],
        cid: str,
        vin: str | None,
        key: str,
    ) -> Coupon:
        template = s.get(CouponTemplate, spec["template"])
        if template is None:
            raise CrmError(f"unknown coupon template {spec['template']!r}")
        until = None
        if "valid_until" in spec:
            until = _as_time(lookup(facts, spec["valid_until"]))
        if until is None:
            until = ev.ts + dt.timedelta(days=int(spec.get("valid_days", template.valid_days)))
        until += dt.timedelta(days=int(spec.get("grace_days", 0)))
        return st.issue_coupon(s, template.code, cid, until, vin=vin, effect=key)

    def _messages(
        self,
        s: Session,
        spec: dict[str, Any],
        facts: dict[str, Any],
        cid: str | None,
        key: str,
        rule: Rule,
    ) -> int:
        contact = s.get(CustomerContact, cid) if cid else None
        lang = contact.lang if contact else DEFAULT_LANG
        subject, body = render(spec["template"], lang, facts)
        n = 0
        for channel in spec.get("channels", ["email"]):
            target = None
            if channel == "email" and contact is not None and contact.email:
                target = contact.email
            elif channel == "webhook":
                target = (contact.webhook if contact and contact.webhook else None) or (
                    self.webhook_url
                )
            if target is None:
                self.stats[f"no_{channel}_target"] += 1
                continue
            s.add(
                OutboxMessage(
                    channel=channel,
                    target=target,
                    effect_key=key,
                    customer_id=cid,
                    subject=subject[:300],
                    body=body,
                    payload={
                        "rule": rule.id,
                        "key": key,
                        "template": spec["template"],
                        "lang": lang,
                        "customer_id": cid,
                        "vin": facts["vehicle"]["vin"],
                        "event": facts["event"],
                        "coupon": facts.get("coupon", {}),
                        "subject": subject,
                        "body": body,
                    },
                )
            )
            n += 1
        return n
