"""Points and tiers from real activity: the append-only points ledger, the earning rules, tiers
computed from the points of a window, closing a service at the counter, and the referral reward.

The rules are ``crm/loyalty.yaml`` (``LoyaltyConfig``; ``[crm] loyalty_file`` replaces it):

- a service (a service record imported or closed by the advisor with an amount) earns
  ``floor(amount / service_cny_per_point)`` points, at the service's date;
- redeeming a coupon earns ``redemption`` points; when the coupon reached its holder through a
  share and this is the holder's first visit, the one who shared it to them earns ``referral``;
- the tier is the highest level whose ``min_points`` the points earned in the last
  ``window_days`` reach; it moves up and down (``review_tier``), each move a ``TierChange``
  effective at the review.

Every grant is keyed by its source (``grant``): the ledger holds, per source, rows whose sum is
what the source earns, so importing the same CSV again or replaying an event writes nothing, and
a corrected amount writes the difference. The ledger is append-only (``crm.store`` refuses
updates and deletes; on PostgreSQL the application role may only SELECT and INSERT it).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import ConfigError, CrmError
from crm import store as st
from crm.schema import (
    Coupon,
    CouponShare,
    Customer,
    Member,
    TierChange,
    Vehicle,
    new_id,
    utcnow,
)
from crm.tables import PointsEntry, ServiceRecord

SHIPPED: Final = Path(__file__).parent / "loyalty.yaml"
KINDS: Final = ("service", "redemption", "referral", "adjustment")
VISIT_KINDS: Final = ("service",)  # what counts as a visit for RFM and inactivity


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Points(_Strict):
    service_cny_per_point: Decimal = Field(Decimal(10), gt=0, le=100_000)
    max_service_amount: Decimal = Field(Decimal(1_000_000), gt=0, le=Decimal("9999999999"))
    redemption: int = Field(20, ge=0, le=100_000)
    referral: int = Field(200, ge=0, le=100_000)


class Level(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    zh: str = Field(min_length=1, max_length=32)
    en: str = Field(min_length=1, max_length=32)
    min_points: int = Field(ge=0)
    aliases: tuple[str, ...] = ()


class Tiers(_Strict):
    window_days: int = Field(365, ge=1, le=3650)
    levels: tuple[Level, ...] = (
        Level(id="standard", zh="普卡", en="Standard", min_points=0, aliases=("普卡",)),
        Level(id="silver", zh="银卡", en="Silver", min_points=300, aliases=("银卡",)),
        Level(id="gold", zh="金卡", en="Gold", min_points=1000, aliases=("金卡",)),
        Level(id="platinum", zh="白金卡", en="Platinum", min_points=3000,
              aliases=("白金卡", "白金")),
    )  # fmt: skip

    @model_validator(mode="after")
    def _ordered(self) -> Tiers:
        mins = [lv.min_points for lv in self.levels]
        if not self.levels or mins[0] != 0 or mins != sorted(set(mins)):
            raise ValueError("levels: the first needs min_points 0, then strictly increasing")
        if len({lv.id for lv in self.levels}) != len(self.levels):
            raise ValueError("levels: ids must be unique")
        return self


class Segment(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    zh: str = Field(min_length=1, max_length=32)
    en: str = Field(min_length=1, max_length=32)
    min_r: int = Field(1, ge=1, le=4)
    min_f: int = Field(1, ge=1, le=4)
    min_m: int = Field(1, ge=1, le=4)
    inactive_months: int = Field(ge=1, le=120)


def _three_ascending(values: tuple[Any, ...], what: str) -> None:
    if len(values) != 3 or list(values) != sorted(set(values)) or values[0] <= 0:
        raise ValueError(f"{what}: three positive thresholds, strictly increasing")


class Rfm(_Strict):
    window_days: int = Field(730, ge=30, le=3650)
    recency_days: tuple[int, int, int] = (90, 180, 365)
    frequency: tuple[int, int, int] = (2, 4, 6)
    monetary: tuple[Decimal, Decimal, Decimal] = (Decimal(2000), Decimal(8000), Decimal(20000))
    segments: tuple[Segment, ...] = (
        Segment(id="champion", zh="核心客户", en="Champion", min_f=3, min_m=3, inactive_months=4),
        Segment(id="loyal", zh="忠诚客户", en="Loyal", min_f=2, inactive_months=6),
        Segment(id="occasional", zh="偶尔到店", en="Occasional", inactive_months=12),
    )

    @model_validator(mode="after")
    def _check(self) -> Rfm:
        _three_ascending(self.recency_days, "recency_days")
        _three_ascending(self.frequency, "frequency")
        _three_ascending(self.monetary, "monetary")
        last = self.segments[-1] if self.segments else None
        if last is None or (last.min_r, last.min_f, last.min_m) != (1, 1, 1):
            raise ValueError("segments: the last one must have no minimum scores (the rest)")
        return self


class Coupons(_Strict):
    remind_days: int = Field(7, ge=1, le=365)


class LoyaltyConfig(_Strict):
    """``crm/loyalty.yaml``: earning rules, tiers, RFM segments, coupon reminders."""

    points: Points = Points()
    tiers: Tiers = Tiers()
    rfm: Rfm = Rfm()
    coupons: Coupons = Coupons()

    @classmethod
    def load(cls, path: Path | str | None = None) -> LoyaltyConfig:
        """The file at ``path`` (default: the shipped ``crm/loyalty.yaml``); a problem is a
        ``ConfigError`` naming the file and the field."""
        p = Path(path) if path is not None else SHIPPED
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{p}: cannot read the loyalty rules: {err}") from err
        try:
            return cls.model_validate(doc)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
            )
            raise ConfigError(f"{p}: {problems}") from None

    # ----- tiers ------------------------------------------------------------------------------
    def level(self, tier: str | None) -> Level | None:
        """The level of a tier id or of one of its aliases (the names stored before 0008)."""
        for lv in self.tiers.levels:
            if tier == lv.id or tier in lv.aliases:
                return lv
        return None

    def rank(self, tier: str | None) -> int:
        """0 for the lowest level... ; -1 for no or an unknown tier."""
        lv = self.level(tier)
        return -1 if lv is None else self.tiers.levels.index(lv)

    def tier_for_points(self, points: int) -> Level:
        best = self.tiers.levels[0]
        for lv in self.tiers.levels:
            if points >= lv.min_points:
                best = lv
        return best

    def service_points(self, amount: Decimal | None) -> int:
        if amount is None or amount <= 0:
            return 0
        return int(amount // self.points.service_cny_per_point)


@functools.cache
def shipped() -> LoyaltyConfig:
    return LoyaltyConfig.load()


_active: list[LoyaltyConfig] = []


def use_config(cfg: LoyaltyConfig | None) -> None:
    """Make ``cfg`` the rules of this process (the worker and the CLI do, from ``[crm]
    loyalty_file``); None goes back to the shipped file."""
    _active[:] = [] if cfg is None else [cfg]


def config() -> LoyaltyConfig:
    return _active[0] if _active else shipped()


def tier_name(tier: str | None, lang: str = "zh-CN", cfg: LoyaltyConfig | None = None) -> str:
    """The member-facing name of a tier id (普卡 / Standard...); an unknown id as it is."""
    lv = (cfg or config()).level(tier)
    if lv is None:
        return tier or ""
    return lv.en if lang == "en" else lv.zh


# ----- amounts ------------------------------------------------------------------------------------
def parse_amount(raw: Any, cfg: LoyaltyConfig | None = None) -> Decimal:
    """A service amount in CNY from a number or a string (``1,234.50``, ``¥300``): refuses what
    is not a finite number in ``0..max_service_amount`` (``CrmError`` saying why)."""
    cfg = cfg or config()
    if isinstance(raw, bool) or raw is None:
        raise CrmError(f"amount {raw!r} is not a number")
    if isinstance(raw, str):
        from core.errors import FieldError
        from crm.fields import check_amount

        try:
            value = check_amount(raw)
        except FieldError as err:
            raise CrmError(str(err)) from None
    else:
        try:
            value = Decimal(str(raw)) if isinstance(raw, float) else Decimal(raw)
        except (InvalidOperation, TypeError, ValueError):
            raise CrmError(f"amount {str(raw)[:40]!r} is not a number") from None
        if not value.is_finite() or value < 0:
            raise CrmError(f"amount {str(raw)[:40]!r} must be a finite number >= 0")
        value = value.quantize(Decimal("0.01"))
    if value > cfg.points.max_service_amount:
        raise CrmError(
            f"amount {value} is over {cfg.points.max_service_amount} CNY, the most one service "
            "may be (crm/loyalty.yaml points.max_service_amount)"
        )
    return value


# ----- the ledger ---------------------------------------------------------------------------------
def aliases(s: Session, customer_id: str) -> list[str]:
    """``customer_id`` and every customer merged into it (their ledger rows stay theirs)."""
    out, todo = [customer_id], [customer_id]
    while todo:
        found = list(s.scalars(select(Customer.id).where(Customer.merged_into.in_(todo))))
        todo = [c for c in found if c not in out]
        out += todo
    return out


def _member(s: Session, cid: str, at: dt.datetime, cfg: LoyaltyConfig) -> Member:
    member = s.get(Member, cid)
    if member is None:
        lowest = cfg.tiers.levels[0].id
        try:
            with s.begin_nested():
                s.add(Member(customer_id=cid, tier=lowest, points=0, visits=0,
                             spend=Decimal(0), tier_since=at))  # fmt: skip
                s.add(TierChange(customer_id=cid, from_tier=None, to_tier=lowest, at=at,
                                 reason="first points"))  # fmt: skip
        except IntegrityError:  # a concurrent first grant made the member: use theirs
            pass
        member = s.get(Member, cid)
        assert member is not None
    return member


def grant(
    s: Session,
    customer_id: str,
    source: str,
    points: int,
    *,
    kind: str,
    at: dt.datetime,
    actor: str,
    amount: Decimal | None = None,
    detail: dict[str, Any] | None = None,
    cfg: LoyaltyConfig | None = None,
) -> int:
    """Make ``source`` have earned ``points`` in all (and ``amount`` CNY for a service): writes
    the difference to what the ledger already holds for it, nothing when there is none (a
    replay), one row with 0 the first time (a visit without points still counts as a visit).
    Returns the points written. The customer of the source's first row keeps its points."""
    cfg = cfg or config()
    if kind not in KINDS:
        raise CrmError(f"unknown points kind {kind!r}; expected one of {KINDS}")
    if not -10_000_000 <= points <= 10_000_000:
        raise CrmError(f"{points} points for {source} is out of range")
    n, have, spent, first = s.execute(
        select(func.count(PointsEntry.id), func.coalesce(func.sum(PointsEntry.delta), 0),
               func.sum(PointsEntry.amount), func.min(PointsEntry.customer_id))
        .where(PointsEntry.source == source)
    ).one()  # fmt: skip
    spent = None if spent is None else Decimal(spent)
    delta = points - int(have)
    d_amount = None if amount is None else amount - (spent or Decimal(0))
    if n and delta == 0 and not d_amount:
        return 0
    cid = st.resolve(s, first if n else customer_id)
    member = _member(s, cid, at, cfg)
    try:
        with s.begin_nested():
            s.add(PointsEntry(customer_id=cid, source=source[:120], seq=int(n), kind=kind,
                              delta=delta, amount=d_amount, at=at, actor=actor[:64],
                              detail=detail or {}))  # fmt: skip
    except IntegrityError:  # a concurrent grant of the same source won: it wrote the same
        return 0
    # UPDATE ... SET points = points + delta: concurrent grants to one member add up
    member.points = Member.points + delta  # type: ignore[assignment]
    if kind in VISIT_KINDS:
        member.visits = Member.visits + (0 if n else 1)  # type: ignore[assignment]
        member.spend = Member.spend + (d_amount or Decimal(0))  # type: ignore[assignment]
    s.flush()
    st.audit(s, actor, "points.grant", cid, source=source, kind=kind, delta=delta,
             balance=member.points, **({"amount": str(amount)} if amount is not None else {}))  # fmt: skip
    return delta


def balance(s: Session, customer_id: str) -> int:
    cid = st.resolve(s, customer_id)
    return int(
        s.scalar(
            select(func.coalesce(func.sum(PointsEntry.delta), 0)).where(
                PointsEntry.customer_id.in_(aliases(s, cid))
            )
        )
        or 0
    )


def window_points(
    s: Session, customer_id: str, now: dt.datetime, cfg: LoyaltyConfig | None = None
) -> int:
    """The points earned in the tier window ``(now - window_days, now]``."""
    cfg = cfg or config()
    since = now - dt.timedelta(days=cfg.tiers.window_days)
    return int(
        s.scalar(
            select(func.coalesce(func.sum(PointsEntry.delta), 0)).where(
                PointsEntry.customer_id.in_(aliases(s, customer_id)),
                PointsEntry.at > since,
                PointsEntry.at <= now,
            )
        )
        or 0
    )


def review_tier(
    s: Session,
    customer_id: str,
    now: dt.datetime | None = None,
    reason: str = "review",
    cfg: LoyaltyConfig | None = None,
) -> tuple[str | None, str]:
    """Move a member to the tier their window's points give (up or down), effective ``now``;
    returns ``(old, new)`` tier ids (equal: no change). A stored legacy name (银卡) becomes its
    id without a change."""
    cfg = cfg or config()
    now = now or utcnow()
    cid = st.resolve(s, customer_id)
    member = _member(s, cid, now, cfg)
    old_level = cfg.level(member.tier)
    old = old_level.id if old_level else member.tier
    pts = window_points(s, cid, now, cfg)
    new = cfg.tier_for_points(pts).id
    if new != old:
        member.tier, member.tier_since = new, now
        why = f"{reason}: {pts} points in {cfg.tiers.window_days} days"
        s.add(TierChange(customer_id=cid, from_tier=old, to_tier=new, at=now, reason=why[:200]))
        st.audit(s, "crm", "tier.change", cid, from_tier=old, to_tier=new, points=pts)
    elif member.tier != new:
        member.tier = new
    return old, new


def review_all(s: Session, now: dt.datetime | None = None, cfg: LoyaltyConfig | None = None) -> int:
    """``review_tier`` for every member (points leave the window, so tiers go down); returns
    how many changed."""
    now = now or utcnow()
    changed = 0
    for cid in list(s.scalars(select(Member.customer_id).order_by(Member.customer_id))):
        old, new = review_tier(s, cid, now, "periodic review", cfg)
        changed += old != new
    return changed


# ----- services -----------------------------------------------------------------------------------
def _noon(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(12), dt.UTC)


def grant_service_record(
    s: Session, record: ServiceRecord, actor: str, cfg: LoyaltyConfig | None = None
) -> tuple[str | None, int]:
    """The points of a service record for the vehicle's owner on its date: ``(customer, points
    written)``; ``(None, 0)`` when nobody owned the vehicle then."""
    cfg = cfg or config()
    at = _noon(record.service_date)
    owner = st.owner_at(s, record.vin, at)
    if owner is None:
        return None, 0
    amount = None if record.amount is None else Decimal(record.amount)
    if amount is not None and amount > cfg.points.max_service_amount:
        raise CrmError(
            f"amount {amount} is over {cfg.points.max_service_amount} CNY, the most one service "
            "may be (crm/loyalty.yaml points.max_service_amount)"
        )
    written = grant(s, owner, f"service:{record.id}", cfg.service_points(amount), kind="service",
                    at=at, actor=actor, amount=amount or Decimal(0),
                    detail={"vin": record.vin, "date": record.service_date.isoformat()}, cfg=cfg)  # fmt: skip
    return owner, written


@dataclass(frozen=True)
class ServiceClosed:
    """What ``close_service`` did."""

    customer_id: str
    vin: str | None
    service_record_id: int | None
    source: str
    amount: Decimal
    points: int  # what this service earns in all
    written: int  # points written by this call (0: the same close again)
    balance: int
    tier: str
    tier_change: tuple[str | None, str] | None  # (old, new) when the tier moved


def close_service(
    s: Session,
    *,
    amount: Any,
    advisor: str,
    vin: str | None = None,
    customer_id: str | None = None,
    at: dt.datetime | None = None,
    work: str = "",
    odometer_km: float | None = None,
    cfg: LoyaltyConfig | None = None,
) -> ServiceClosed:
    """The advisor closes a visit with its amount: the vehicle's service record of that day is
    written (or corrected), its owner earns the points, the tier is reviewed.

    ``vin`` (the owner at ``at`` earns) or, for a visit without a known vehicle, ``customer_id``;
    both: they must agree. ``amount``: CNY as a number or a string (``"1,280.00"``). ``at``:
    default now; not in the future. ``odometer_km``: default the vehicle's last recorded
    reading (required for its first record). Closing the same vehicle again on the same day
    corrects the amount (the points follow); closing it twice with the same amount earns once.
    Raises ``CrmError`` with the reason for anything refused.
    """
    cfg = cfg or config()
    now = utcnow()
    at = at or now
    if at.tzinfo is None:
        raise CrmError("at: pass a timezone-aware time")
    if at > now + dt.timedelta(minutes=5) or at.year < 1950:
        raise CrmError(f"at {at:%Y-%m-%d %H:%M} is in the future or before 1950")
    value = parse_amount(amount, cfg)
    if not advisor or len(advisor) > 64:
        raise CrmError("advisor: 1..64 characters")
    from core.errors import FieldError
    from crm.fields import check_text

    try:
        work = check_text(work, "work", 2000, multiline=True)
    except FieldError as err:
        raise CrmError(str(err)) from None
    record: ServiceRecord | None = None
    if vin is not None:
        vin = vin.strip().upper()
        if s.get(Vehicle, vin) is None:
            raise CrmError(f"unknown vehicle {vin!r}")
        owner = st.owner_at(s, vin, at)
        if owner is None:
            raise CrmError(f"vehicle {vin} has no owner on {at:%Y-%m-%d}")
        if customer_id is not None and st.resolve(s, customer_id) != owner:
            raise CrmError(f"customer {customer_id} is not the owner of {vin} on {at:%Y-%m-%d}")
        cid = owner
        record = _service_record(s, vin, at.date(), value, work, odometer_km)
        source = f"service:{record.id}"
    elif customer_id is not None:
        cid = st.resolve(s, customer_id)
        source = f"service:{cid}:{at:%Y-%m-%d}"
    else:
        raise CrmError("close_service needs a vin or a customer_id")
    points = cfg.service_points(value)
    written = grant(s, cid, source, points, kind="service", at=at, actor=advisor, amount=value,
                    detail={"vin": vin, "closed_by": advisor}, cfg=cfg)  # fmt: skip
    st.audit(s, advisor, "service.close", vin or cid, customer=cid, amount=str(value),
             points=points, written=written)  # fmt: skip
    old, new = review_tier(s, cid, now, "service", cfg)
    member = s.get(Member, cid)
    assert member is not None
    return ServiceClosed(cid, vin, record.id if record else None, source, value, points, written,
                         member.points, new, (old, new) if old != new else None)  # fmt: skip


def _service_record(
    s: Session, vin: str, day: dt.date, amount: Decimal, work: str, odometer_km: float | None
) -> ServiceRecord:
    rows = list(s.scalars(select(ServiceRecord).where(ServiceRecord.vin == vin)))
    if odometer_km is not None and not (
        isinstance(odometer_km, int | float) and math.isfinite(odometer_km)
        and 0 <= odometer_km <= 2_000_000
    ):  # fmt: skip
        raise CrmError(f"odometer_km {odometer_km!r} must be 0..2000000")
    same = next((r for r in rows if r.service_date == day), None)
    if odometer_km is None:
        earlier = [r for r in rows if r.service_date <= day]
        if same is not None:
            odometer_km = same.odometer_km
        elif earlier:
            odometer_km = max(earlier, key=lambda r: r.service_date).odometer_km
        else:
            raise CrmError(f"odometer_km is needed for the first service record of {vin}")
    for r in rows:
        if r.service_date != day and (
            (r.service_date < day and r.odometer_km > odometer_km)
            or (r.service_date > day and r.odometer_km < odometer_km)
        ):
            raise CrmError(
                f"odometer_km {odometer_km:g} on {day} does not fit {r.odometer_km:g} km on "
                f"{r.service_date} (an odometer never goes backwards)"
            )
    if same is None:
        try:
            with s.begin_nested():
                s.add(ServiceRecord(vin=vin, service_date=day, odometer_km=float(odometer_km),
                                    work=work, amount=amount, source="advisor"))  # fmt: skip
        except IntegrityError:  # a concurrent close of the same visit wrote it: correct that one
            pass
        same = s.scalar(
            select(ServiceRecord).where(ServiceRecord.vin == vin, ServiceRecord.service_date == day)
        )
        assert same is not None
    if (
        same.amount != amount
        or same.odometer_km != float(odometer_km)
        or (work and work != same.work)
    ):
        same.amount, same.odometer_km = amount, float(odometer_km)
        same.work = work or same.work
    return same


# ----- redemptions and referrals -----------------------------------------------------------------
def redeem_coupon(s: Session, coupon_id: str, by_id: str, now: dt.datetime | None = None) -> None:
    """Redeem atomically (``crm.store.mark_redeemed``: of two concurrent redemptions exactly one
    succeeds), then the points for the redemption and the referral reward (``after_redeem``)."""
    now = now or utcnow()
    after_redeem(s, st.mark_redeemed(s, coupon_id, by_id, now), now)


def record_visit(
    s: Session, customer_id: str, spend: float, points: int = 0, actor: str = "crm"
) -> tuple[str | None, str]:
    """A visit without a service record (a walk-in, a test, a demo): the spend earns points by
    these rules (plus ``points``) and the tier is reviewed; returns ``(old_tier,
    new_tier)`` (old is None for a new member). Not idempotent: a visit with a record goes
    through ``close_service`` or the import instead."""
    cfg = config()
    customer_id = st.resolve(s, customer_id)
    member = s.get(Member, customer_id)
    old = None if member is None else (cfg.level(member.tier) or cfg.tiers.levels[0]).id
    amount = parse_amount(spend, cfg)
    now = utcnow()
    grant(s, customer_id, f"visit:{new_id()}", cfg.service_points(amount) + points,
                  kind="service", at=now, actor=actor, amount=amount, cfg=cfg)  # fmt: skip
    _, new = review_tier(s, customer_id, now, "visit", cfg)
    return old, new


def after_redeem(
    s: Session, coupon: Coupon, now: dt.datetime, cfg: LoyaltyConfig | None = None
) -> None:
    """Called by ``redeem_coupon`` once a redemption succeeded: the holder earns the
    redemption points; a coupon that came through a share, redeemed at the holder's first
    visit, earns the sharer the referral points (once per coupon)."""
    cfg = cfg or config()
    by = coupon.redeemed_by or coupon.holder_id
    first_visit = not s.scalar(
        select(func.count(PointsEntry.id)).where(
            PointsEntry.customer_id.in_(aliases(s, by)),
            PointsEntry.kind.in_(("service", "redemption")),
        )
    )
    grant(s, by, f"redeem:{coupon.id}", cfg.points.redemption, kind="redemption", at=now,
          actor=by, detail={"coupon": coupon.id, "template": coupon.template_code}, cfg=cfg)  # fmt: skip
    review_tier(s, by, now, "redemption", cfg)
    share = s.scalar(
        select(CouponShare)
        .where(CouponShare.coupon_id == coupon.id, CouponShare.to_id.in_(aliases(s, by)))
        .order_by(CouponShare.id.desc())
        .limit(1)
    )
    if share is None or not first_visit or not cfg.points.referral:
        return
    sharer = st.resolve(s, share.from_id)
    if sharer == by:
        return
    grant(s, sharer, f"referral:{coupon.id}", cfg.points.referral, kind="referral", at=now,
          actor="crm", detail={"coupon": coupon.id, "friend": by}, cfg=cfg)  # fmt: skip
    review_tier(s, sharer, now, "referral", cfg)
