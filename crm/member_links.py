"""The member's side of the CRM: signed sign-in and share links, coupon short codes, claiming a
shared coupon, redeeming at the counter, and what one member may see of themselves.

Links are HMAC-SHA256 signed with a key the caller passes (``dashboards.member`` reads it from
``[dashboard] member_key_file`` or keeps one in the CRM database), carry their expiry, and name
exactly one member (a sign-in) or one coupon and its holder (a share)::

    sign-in:  i1.<customer id>.<expires, unix s>.<nonce>.<hmac>
    share:    s1.<coupon id>.<sharer id>.<shares in the chain so far>.<expires>.<hmac>

A share link is good for one claim: the claim passes the coupon on with ``crm.store.share_coupon``
(one conditional UPDATE: still held by the sharer, still live) and only while the chain is as
long as when the link was made, so the link is dead once claimed, even if the coupon comes back.
A coupon's short code is the first 12 hex digits of its id, shown ``1A2B-3C4D-5E6F``; the counter
accepts it typed with spaces, dashes or lower case, or as a scanned QR code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.errors import ClaimError, CounterError, CouponStateError, CrmError, LinkError
from crm import loyalty
from crm import store as st
from crm.schema import (
    Coupon,
    CouponShare,
    CouponTemplate,
    Customer,
    Member,
    Ownership,
    PlateAssignment,
    Vehicle,
    utcnow,
)
from crm.tables import InboxItem, ServiceRecord

SIGNIN_TTL: Final = dt.timedelta(hours=24)
SHARE_TTL: Final = dt.timedelta(days=7)
CODE_DIGITS: Final = 12  # 48 bits of the coupon's random id
_ID = re.compile(r"[0-9a-f]{32}")
_PHONE = re.compile(r"\+?[0-9]{6,20}")


def _sig(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def _ts(at: dt.datetime) -> int:
    return int(at.timestamp())


def _check(key: bytes, token: str, prefix: str, parts: int) -> list[str]:
    fields = token.split(".") if isinstance(token, str) and len(token) <= 300 else []
    if len(fields) != parts or fields[0] != prefix:
        raise LinkError("this link is not complete; copy the whole link", "malformed")
    body, sig = ".".join(fields[:-1]), fields[-1]
    if not hmac.compare_digest(_sig(key, body), sig):
        raise LinkError("this link was changed or is not ours", "tampered")
    return fields


# ----- sign-in links -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SignIn:
    customer_id: str
    expires: dt.datetime
    nonce: str


def sign_in_token(
    key: bytes, customer_id: str, ttl: dt.timedelta = SIGNIN_TTL, now: dt.datetime | None = None
) -> str:
    """A sign-in token for one member, good until ``now + ttl``."""
    if not _ID.fullmatch(customer_id):
        raise CrmError(f"not a customer id: {customer_id!r}")
    exp = _ts((now or utcnow()) + ttl)
    body = f"i1.{customer_id}.{exp}.{secrets.token_hex(12)}"
    return f"{body}.{_sig(key, body)}"


def read_sign_in(key: bytes, token: str, now: dt.datetime | None = None) -> SignIn:
    """The member a sign-in token names; ``LinkError`` if malformed, tampered or expired."""
    _, cid, exp, nonce, _ = _check(key, token, "i1", 5)
    if not (_ID.fullmatch(cid) and exp.isdigit()):
        raise LinkError("this link is not complete; copy the whole link", "malformed")
    expires = dt.datetime.fromtimestamp(int(exp), dt.UTC)
    if (now or utcnow()) >= expires:
        raise LinkError("this sign-in link has expired; ask for a new one", "expired")
    return SignIn(cid, expires, nonce)


def issue_sign_in(
    s: Session, key: bytes, customer_id: str, base_url: str, ttl: dt.timedelta = SIGNIN_TTL
) -> str:
    """The sign-in URL for a (resolved, not erased) customer; audited."""
    cid = st.resolve(s, customer_id)
    cust = s.get(Customer, cid)
    if cust is None or cust.erased_at is not None:
        raise CrmError(f"customer {customer_id} cannot sign in (erased)")
    url = f"{base_url.rstrip('/')}/m/signin?t={sign_in_token(key, cid, ttl)}"
    st.audit(s, "crm", "member.link", cid, "member-page", dealer_id=cust.dealer_id,
             ttl_s=int(ttl.total_seconds()))  # fmt: skip
    return url


# ----- share links -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShareOffer:
    coupon_id: str
    from_id: str
    chain: int
    expires: dt.datetime


def _chain_len(s: Session, coupon_id: str) -> int:
    return int(
        s.scalar(select(func.count(CouponShare.id)).where(CouponShare.coupon_id == coupon_id)) or 0
    )


def _live(c: Coupon, now: dt.datetime) -> bool:
    return c.state in st.LIVE and c.valid_until >= now


def share_token(
    s: Session, key: bytes, coupon_id: str, from_id: str, now: dt.datetime | None = None
) -> str:
    """A one-claim share link for a live, shareable coupon that ``from_id`` holds (else
    ``CouponStateError``; a coupon of someone else is "unknown", as if it did not exist)."""
    now = now or utcnow()
    from_id = st.resolve(s, from_id)
    c = s.get(Coupon, coupon_id)
    if c is None or c.holder_id != from_id:
        raise CrmError(f"unknown coupon {coupon_id!r}")
    t = s.get(CouponTemplate, c.template_code)
    if t is not None and not t.shareable:
        raise CouponStateError(f"coupon {coupon_id} ({c.template_code}) cannot be shared")
    if not _live(c, now):
        raise CouponStateError(f"coupon {coupon_id} cannot be shared: it is {c.state}")
    exp = _ts(min(now + SHARE_TTL, c.valid_until))
    body = f"s1.{coupon_id}.{from_id}.{_chain_len(s, coupon_id)}.{exp}"
    st.audit(s, from_id, "coupon.share.link", coupon_id, "member-page")
    return f"{body}.{_sig(key, body)}"


def read_share(key: bytes, token: str, now: dt.datetime | None = None) -> ShareOffer:
    _, coupon_id, from_id, chain, exp, _ = _check(key, token, "s1", 6)
    if not (_ID.fullmatch(coupon_id) and _ID.fullmatch(from_id) and chain.isdigit()
            and exp.isdigit()):  # fmt: skip
        raise LinkError("this link is not complete; copy the whole link", "malformed")
    expires = dt.datetime.fromtimestamp(int(exp), dt.UTC)
    if (now or utcnow()) >= expires:
        raise LinkError("this share link has expired", "expired")
    return ShareOffer(coupon_id, from_id, int(chain), expires)


def normalize_phone(raw: str) -> str:
    """``+86 139-0000-0001`` -> ``+8613900000001``; ``ClaimError`` if it is not a phone number."""
    phone = re.sub(r"[\s\-().]", "", raw or "")
    if not _PHONE.fullmatch(phone):
        raise ClaimError("enter a phone number (digits, optionally starting with +)", "phone")
    return phone


def claim_share(
    s: Session,
    key: bytes,
    token: str,
    phone: str,
    name: str,
    *,
    terms: bool,
    marketing: bool,
    now: dt.datetime | None = None,
) -> tuple[str, str, bool]:
    """The friend claims a shared coupon: (coupon id, the friend's customer id, new prospect?).

    The friend is found by phone or recorded as a new customer (a prospect: no vehicle, no
    membership) of the sharer's dealer; the terms (keeping the phone number to hold the coupon)
    must be accepted; the marketing consent is recorded either way. Refused: a link claimed
    before, the sharer's own number, a coupon no longer live."""
    now = now or utcnow()
    offer = read_share(key, token, now)
    if not terms:
        raise ClaimError("accept the terms to claim the coupon", "terms")
    phone = normalize_phone(phone)
    coupon = s.get(Coupon, offer.coupon_id)
    if coupon is None:
        raise LinkError("this coupon no longer exists", "used")
    if _chain_len(s, offer.coupon_id) != offer.chain or coupon.holder_id != offer.from_id:
        raise LinkError("this share link was already claimed", "used")
    sharer = s.get(Customer, st.resolve(s, offer.from_id))
    friend = st.find_or_create_customer(s, {"phone": phone}, name.strip()[:200], "coupon-claim")
    if friend == st.resolve(s, offer.from_id):
        raise ClaimError("you cannot claim your own coupon", "own")
    cust = s.get(Customer, friend)
    assert cust is not None and sharer is not None
    new = (
        s.get(Member, friend) is None
        and s.scalar(select(Ownership.id).where(Ownership.customer_id == friend).limit(1)) is None
    )
    if new and cust.dealer_id == "default":
        cust.dealer_id = sharer.dealer_id  # the sharer's dealer's prospect
    st.share_coupon(s, offer.coupon_id, offer.from_id, friend, now)
    st.set_consent(s, friend, "marketing", marketing, source="coupon-claim")
    st.audit(s, friend, "coupon.claim", offer.coupon_id, "member-page", dealer_id=sharer.dealer_id,
             sharer=sharer.id, prospect=new, terms=True, marketing=marketing)  # fmt: skip
    return offer.coupon_id, friend, new


# ----- the counter ---------------------------------------------------------------------------------
def short_code(coupon_id: str) -> str:
    """``1A2B-3C4D-5E6F``: what the member reads out or the QR code carries."""
    head = coupon_id[:CODE_DIGITS].upper()
    return "-".join(head[i : i + 4] for i in range(0, CODE_DIGITS, 4))


def parse_code(raw: str) -> str:
    """The lower-case hex prefix of a typed or scanned code (spaces, dashes, case ignored)."""
    text = (raw or "").strip()
    if "code=" in text:  # a scanned URL form
        text = text.rsplit("code=", 1)[1]
    text = re.sub(r"[\s\-]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{12,32}", text):
        raise CounterError(
            "not a coupon code: 12 characters 0-9 and A-F, like 1A2B-3C4D-5E6F", "bad"
        )
    return text


def find_by_code(s: Session, raw: str) -> Coupon:
    prefix = parse_code(raw)
    # a range on the primary key, not LIKE: the index serves it on SQLite and PostgreSQL alike
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    rows = list(s.scalars(select(Coupon).where(Coupon.id >= prefix, Coupon.id < upper).limit(2)))
    if not rows:
        raise CounterError(f"no coupon has the code {short_code(prefix.ljust(12, '0'))}", "unknown")
    if len(rows) > 1:
        raise CounterError("two coupons start with this code: type the full code", "ambiguous")
    return rows[0]


def coupon_dealer(s: Session, c: Coupon) -> str:
    owner = s.get(Customer, c.owner_id)
    return owner.dealer_id if owner else ""


def redeem_at_counter(
    s: Session, raw: str, actor: str, dealer_id: str, now: dt.datetime | None = None
) -> Coupon:
    """Redeem the coupon of a code for whoever holds it: one conditional UPDATE
    (``crm.loyalty.redeem_coupon``), so of N parallel scans exactly one succeeds; audited.
    ``CounterError`` says why not (unknown, another dealer's, used, expired, voided)."""
    now = now or utcnow()
    c = find_by_code(s, raw)
    if coupon_dealer(s, c) != dealer_id:
        raise CounterError(f"coupon {short_code(c.id)} is not one of this dealer's", "other_dealer")
    _refuse_dead(c, now)
    try:
        loyalty.redeem_coupon(s, c.id, c.holder_id, now)
    except CouponStateError as err:  # lost the race to a parallel scan (or a void)
        s.refresh(c)
        _refuse_dead(c, now)
        raise CounterError(str(err), "redeemed") from err
    st.audit(s, actor, "coupon.redeem.counter", c.id, "service", dealer_id=dealer_id,
             holder=c.holder_id, template=c.template_code)  # fmt: skip
    return c


def redeem_code(
    store: st.CrmStore, raw: str, actor: str, dealer_id: str, attempts: int = 5
) -> dict[str, Any]:
    """``redeem_at_counter`` in its own transaction, what the counter page calls: a refusal is
    audited too (``coupon.redeem.refused``), and on SQLite a scan that lost the write lock to a
    parallel one reads again (and then sees the coupon used). Returns the redeemed coupon's
    code, template titles and value."""
    for attempt in range(attempts):
        try:
            with store.tx() as s:
                c = redeem_at_counter(s, raw, actor, dealer_id)
                t = s.get(CouponTemplate, c.template_code)
                return {"id": c.id, "code": short_code(c.id), "holder": c.holder_id,
                        "title_en": t.title_en if t else c.template_code,
                        "title_zh": t.title_zh if t else c.template_code,
                        "value": t.value if t else None}  # fmt: skip
        except CounterError as err:
            with store.tx() as s:
                st.audit(s, actor, "coupon.redeem.refused", (raw or "").strip()[:64], "service",
                         dealer_id=dealer_id, reason=err.reason)  # fmt: skip
            raise
        except OperationalError:  # SQLite: a parallel scan holds (or just took) the write lock
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
    raise AssertionError("unreachable")


def _refuse_dead(c: Coupon, now: dt.datetime) -> None:
    code = short_code(c.id)
    if c.state == "redeemed":
        when = f" on {c.redeemed_at:%Y-%m-%d %H:%M} UTC" if c.redeemed_at else ""
        raise CounterError(f"coupon {code} was already used{when}", "redeemed")
    if c.state == "voided":
        raise CounterError(f"coupon {code} was voided", "voided")
    if c.state == "expired" or c.valid_until < now:
        raise CounterError(f"coupon {code} expired on {c.valid_until:%Y-%m-%d}", "expired")


# ----- what a member sees ---------------------------------------------------------------------
def points_of(s: Session, customer_id: str) -> int | None:
    """The member's points: the balance of the points ledger (``crm.loyalty.balance``, merged
    customers' rows included); None for a customer who is no member and never earned any."""
    pts = loyalty.balance(s, customer_id)
    return None if pts == 0 and s.get(Member, st.resolve(s, customer_id)) is None else pts


def next_tier(
    s: Session, customer_id: str, tier: str | None, now: dt.datetime
) -> dict[str, Any] | None:
    """The next tier up and the points still missing for it in the tier window
    (``crm.loyalty``: tiers count the points of the last ``window_days``); None at the top or
    for a tier the rules do not know."""
    cfg = loyalty.config()
    levels = cfg.tiers.levels
    rank = cfg.rank(tier)
    if rank < 0 or rank + 1 >= len(levels):  # an unknown tier: no promise
        return None
    up = levels[rank + 1]
    have = loyalty.window_points(s, customer_id, now, cfg)
    return {"tier": up.id, "points": max(up.min_points - have, 0)}


@dataclass
class MemberView:
    customer_id: str
    name: str
    tier: str | None  # a tier id of crm/loyalty.yaml (``crm.loyalty.tier_name`` names it)
    points: int | None
    vehicles: list[dict[str, Any]] = field(default_factory=list)
    coupons: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    next_tier: dict[str, Any] | None = None  # {"tier": id, "points": missing}


def _next_service(s: Session, vin: str, cid: str, since: dt.datetime) -> dict[str, Any] | None:
    """The newest service-due prediction filed for this owner (the advisor inbox's maintenance
    card), else a year after the last service record of this ownership."""
    item = s.scalars(
        select(InboxItem)
        .where(
            InboxItem.vin == vin,
            InboxItem.customer_id == cid,
            InboxItem.kind == "maintenance",
            InboxItem.created_at >= since,
        )
        .order_by(InboxItem.created_at.desc())
    ).first()
    pred = ((item.data or {}).get("parts") or {}).get("service_due") if item else None
    if isinstance(pred, dict):
        ts_us, days = pred.get("ts_us"), pred.get("days")
        km, odo = pred.get("km"), pred.get("odo")
        if isinstance(ts_us, int) and isinstance(days, int | float) and abs(days) < 3650:
            at = dt.datetime.fromtimestamp(ts_us / 1e6, dt.UTC) + dt.timedelta(days=float(days))
            left = float(km) - float(odo) if isinstance(km, int | float) and isinstance(
                odo, int | float) else None  # fmt: skip
            return {"date": at.date(), "km": None if left is None else round(left),
                    "source": "prediction"}  # fmt: skip
    last = s.scalar(
        select(ServiceRecord)
        .where(ServiceRecord.vin == vin, ServiceRecord.service_date >= since.date())
        .order_by(ServiceRecord.service_date.desc())
        .limit(1)
    )
    if last is not None:
        return {"date": last.service_date + dt.timedelta(days=365), "km": None,
                "source": "schedule"}  # fmt: skip
    return None


def member_view(s: Session, customer_id: str, now: dt.datetime | None = None) -> MemberView:
    """Everything the member page shows, for this member only: the vehicles they own now
    (their history from the day they bought them, never the previous owner's), their coupons,
    and the coupons they passed on (state only, nothing of the friend)."""
    now = now or utcnow()
    cid = st.resolve(s, customer_id)
    cust = s.get(Customer, cid)
    if cust is None or cust.erased_at is not None:
        raise CrmError(f"unknown customer {customer_id!r}")
    m = s.get(Member, cid)
    level = loyalty.config().level(m.tier) if m else None  # a legacy name (银卡) -> its id
    tier = level.id if level else (m.tier if m else None)
    view = MemberView(cid, cust.display_name, tier, points_of(s, cid))
    if m is not None:
        view.next_tier = next_tier(s, cid, tier, now)
    for own in s.scalars(
        select(Ownership)
        .where(Ownership.customer_id == cid, Ownership.valid_to.is_(None))
        .order_by(Ownership.valid_from)
    ):
        v = s.get(Vehicle, own.vin)
        plate = s.scalar(
            select(PlateAssignment.plate).where(
                PlateAssignment.vin == own.vin, PlateAssignment.valid_to.is_(None)
            )
        )
        services = [
            {"date": r.service_date, "work": r.work, "km": r.odometer_km}
            for r in s.scalars(
                select(ServiceRecord)
                .where(
                    ServiceRecord.vin == own.vin,
                    ServiceRecord.service_date >= own.valid_from.date(),
                )
                .order_by(ServiceRecord.service_date.desc())
                .limit(5)
            )
        ]
        view.vehicles.append({"vin": own.vin, "model": v.model if v else "", "plate": plate,
                              "since": own.valid_from.date(), "services": services,
                              "next": _next_service(s, own.vin, cid, own.valid_from)})  # fmt: skip
    groups: dict[str, list[dict[str, Any]]] = {"valid": [], "used": [], "expired": [], "shared": []}
    held = s.scalars(select(Coupon).where(Coupon.holder_id == cid).order_by(Coupon.valid_until))
    passed = s.scalars(
        select(Coupon)
        .where(
            Coupon.id.in_(select(CouponShare.coupon_id).where(CouponShare.from_id == cid)),
            Coupon.holder_id != cid,
        )
        .order_by(Coupon.issued_at.desc())
    )
    for c, mine in [(c, True) for c in held] + [(c, False) for c in passed]:
        t = s.get(CouponTemplate, c.template_code)
        live = _live(c, now)
        group = (
            "shared" if not mine
            else "valid" if live
            else "used" if c.state == "redeemed"
            else "expired"
        )  # fmt: skip
        groups[group].append({
            "id": c.id, "code": short_code(c.id), "state": c.state, "title_zh": t.title_zh if t else c.template_code,
            "title_en": t.title_en if t else c.template_code,
            "value": t.value if t else None, "valid_until": c.valid_until.date(),
            "redeemed_at": c.redeemed_at, "shareable": bool(t is None or t.shareable) and live,
            "received": c.owner_id != cid,
        })  # fmt: skip
    view.coupons = groups
    return view
