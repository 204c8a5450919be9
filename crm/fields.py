"""Field checks for data from dealer systems: VINs, phone numbers, dates, amounts, free text.

Each ``check_*`` returns the normalised value or raises ``FieldError`` whose message says what
is wrong with the value (the importer adds file, line and column).

VIN (ISO 3779): 17 characters of ``0-9`` and ``A-Z`` without ``I``, ``O`` and ``Q`` (lower case
and surrounding spaces are normalised). Position 9 is a check digit where the law of the market
requires one, and only there (a European VIN may carry any character in position 9):

- North America (WMI first character ``1``-``5``): 49 CFR 565.15, mandatory since 1981;
- China (WMI first character ``L``): GB 16735 (2004 and its 2019 revision) makes position 9 a
  check digit computed the same way for every vehicle made or sold in China.

The check digit: each character is transliterated (digits as themselves; ``A``-``H`` 1-8,
``J``-``N`` 1-5, ``P`` 7, ``R`` 9, ``S``-``Z`` 2-9), multiplied by the weight of its position
(8 7 6 5 4 3 2 10 0 9 8 7 6 5 4 3 2), the products summed; the sum modulo 11 is the check digit,
10 written as ``X``. Verified against the published examples ``1M8GDM9AXKP042788`` (``X``) and
``11111111111111111`` (``1``) in the tests.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Final

from core.errors import FieldError

VIN_RE: Final = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
_TRANSLIT: Final = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS: Final = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
CHECK_DIGIT_REGIONS: Final = frozenset("12345L")  # North America (49 CFR 565), China (GB 16735)


def vin_check_digit(vin: str) -> str:
    """The ISO 3779 / 49 CFR 565 check digit of a 17-character VIN (``0``-``9`` or ``X``)."""
    total = sum(_TRANSLIT[c] * w for c, w in zip(vin, _WEIGHTS, strict=True))
    r = total % 11
    return "X" if r == 10 else str(r)


def check_vin(raw: str, check_digit: bool = True) -> str:
    """The VIN upper-cased; its check digit verified where the market requires one (and
    ``check_digit`` is on: off for fleets whose records are known to carry other VINs)."""
    vin = raw.strip().upper()
    if len(vin) != 17:
        raise FieldError(f"a VIN has 17 characters, this one {len(vin)}")
    if not VIN_RE.match(vin):
        bad = sorted({c for c in vin if not re.match(r"[A-HJ-NPR-Z0-9]", c)})
        raise FieldError(
            f"VIN has characters a VIN never contains ({''.join(bad)!r}; I, O and Q are not used)"
        )
    if check_digit and vin[0] in CHECK_DIGIT_REGIONS:
        want = vin_check_digit(vin)
        if vin[8] != want:
            where = "China, GB 16735" if vin[0] == "L" else "North America, 49 CFR 565"
            raise FieldError(
                f"VIN check digit (position 9) is {vin[8]!r}, the VIN's characters give {want!r} "
                f"({where}): a typing error in the VIN?"
            )
    return vin


def check_phone(raw: str, region: str = "CN") -> str:
    """E.164 (``+8613812345678``) from national or international notation; ``region`` is the
    country of numbers written without a country code."""
    import phonenumbers

    text = raw.strip()
    if len(text) > 40:
        raise FieldError("phone number longer than 40 characters")
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise FieldError(f"not a phone number: {text!r}") from None
    if not phonenumbers.is_valid_number(num):
        raise FieldError(f"not a valid phone number for its country ({text!r})")
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def check_date(raw: str, *, not_after: dt.date | None = None) -> dt.date:
    """``YYYY-MM-DD`` (also ``YYYY/MM/DD`` and ``YYYY.MM.DD``, as DMS exports write them)."""
    text = raw.strip().replace("/", "-").replace(".", "-")
    if not DATE_RE.match(text):
        raise FieldError(f"not a date YYYY-MM-DD: {raw[:40]!r}")
    try:
        day = dt.date.fromisoformat(text)
    except ValueError as err:
        raise FieldError(f"not a calendar date: {raw!r} ({err})") from None
    if day.year < 1950:
        raise FieldError(f"date {day} is before 1950")
    if not_after is not None and day > not_after:
        raise FieldError(f"date {day} is in the future")
    return day


def check_time(raw: str) -> dt.datetime:
    """A date (midnight UTC) or an ISO 8601 time with an offset (``2026-03-01T08:00:00+08:00``)."""
    text = raw.strip()
    if DATE_RE.match(text.replace("/", "-")):
        return dt.datetime.combine(check_date(text), dt.time(), dt.UTC)
    if len(text) > 40:
        raise FieldError("time longer than 40 characters")
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(f"not an ISO 8601 time: {text!r}") from None
    if at.tzinfo is None:
        raise FieldError(f"time {text!r} has no UTC offset (write +08:00 or Z)")
    return at.astimezone(dt.UTC)


def check_number(raw: str, what: str, lo: float, hi: float) -> float:
    text = raw.strip().replace(",", "")
    try:
        value = float(text)
    except ValueError:
        raise FieldError(f"{what} is not a number: {raw[:40]!r}") from None
    if not lo <= value <= hi:  # also NaN
        raise FieldError(f"{what} {value:g} is outside {lo:g}..{hi:g}")
    return value


AMOUNT_GROUPED_RE: Final = re.compile(r"^\d{1,3}(,\d{3})+(\.\d*)?$")


def check_amount(raw: str) -> Decimal:
    """CNY, ``0..9999999999.99``: ``1280.5``, ``1,280.50``, ``¥300``. A comma only separates
    thousands: ``1.234,50`` or ``12,34`` is refused rather than read as another number."""
    text = raw.strip().removeprefix("¥").removeprefix("￥").strip()
    if "," in text:
        if not AMOUNT_GROUPED_RE.match(text):
            raise FieldError(f"amount {raw[:40]!r}: a comma may only separate thousands (1,280.50)")
        text = text.replace(",", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise FieldError(f"amount is not a number: {raw[:40]!r}") from None
    if not value.is_finite() or value < 0 or value >= Decimal("1e10"):
        raise FieldError(f"amount {raw[:40]!r} must be 0..9999999999.99")
    return value.quantize(Decimal("0.01"))


TRUE: Final = frozenset({"1", "true", "yes", "y", "granted", "是", "同意"})
FALSE: Final = frozenset({"0", "false", "no", "n", "revoked", "denied", "否", "不同意"})


def check_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise FieldError(f"not yes/no: {raw[:20]!r} (true/false, yes/no, 1/0)")


# A cell a spreadsheet would run as a formula when the data is exported again (CSV injection).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def check_text(raw: str, what: str, max_len: int, *, multiline: bool = False) -> str:
    """Free text: at most ``max_len`` characters, no control characters (new lines only when
    ``multiline``), and not starting like a spreadsheet formula."""
    text = raw.strip()
    if len(text) > max_len:
        raise FieldError(f"{what} is longer than {max_len} characters ({len(text)})")
    probe = text.replace("\n", "") if multiline else text
    if _CONTROL.search(probe):
        raise FieldError(f"{what} contains control characters")
    if text.startswith(_FORMULA_START):
        raise FieldError(f"{what} starts with {text[0]!r} like a spreadsheet formula")
    return text


EMAIL_RE: Final = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")


def check_email(raw: str) -> str:
    text = raw.strip()
    if len(text) > 254 or not EMAIL_RE.match(text):
        raise FieldError(f"not an e-mail address: {text[:60]!r}")
    check_text(text, "e-mail", 254)
    return text
