"""Type and range checks for untrusted fields: int64, finite numbers, bounded strings and trees, DTCs.

Everything a device sends is checked with these before it reaches NumPy, msgpack, JSON, a
database or a table: an integer beyond int64, a NaN, a list where a scalar belongs or a string of
a megabyte raises :class:`~core.errors.WireError` with a reason code (the dead-letter reason),
never ``OverflowError``/``TypeError`` further down.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from core.errors import WireError

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_ID_LEN: Final = 64  # boot ids, command ids, member ids
MAX_TEXT_LEN: Final = 4096  # one string field of an event or a text sample
MAX_TREE_DEPTH: Final = 6  # nesting of an event's data
MAX_TREE_ITEMS: Final = 1024  # keys and items of an event's data, all levels together
MAX_DTCS: Final = 64  # an OBD-II ECU reports a handful; 64 covers every ECU of a car
# SAE J2012: P/C/B/U, then four hex digits (manufacturer codes included).
DTC_RE: Final = re.compile(r"[PCBU][0-9A-F]{4}")


def is_int64(value: Any) -> bool:
    """``value`` is an ``int`` (not a ``bool``) that fits a signed 64-bit integer."""
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def int64(value: Any, reason: str, what: str, *, minimum: int = INT64_MIN) -> int:
    """``value`` if it is an int64 at least ``minimum``, else raise ``WireError(reason)``."""
    if not is_int64(value) or value < minimum:
        raise WireError(
            reason, f"{what} must be an integer in [{minimum}, 2**63-1], got {_short(value)}"
        )
    return int(value)


def finite(value: Any, reason: str, what: str) -> float:
    """``value`` as a finite float (an int within float range is accepted), else ``WireError``."""
    if type(value) is float:
        if math.isfinite(value):
            return value
    elif type(value) is int:
        try:
            return float(value)
        except OverflowError:
            pass
    raise WireError(reason, f"{what} must be a finite number, got {_short(value)}")


def bounded_str(
    value: Any, reason: str, what: str, *, max_len: int = MAX_TEXT_LEN, min_len: int = 0
) -> str:
    """``value`` if it is a ``str`` of ``min_len`` to ``max_len`` characters without NUL (which
    PostgreSQL refuses in text and JSON) or lone surrogates (which UTF-8 cannot encode)."""
    if type(value) is not str or not min_len <= len(value) <= max_len or not is_clean_text(value):
        raise WireError(
            reason,
            f"{what} must be a string of {min_len}-{max_len} characters, got {_short(value)}",
        )
    return value


def is_clean_text(text: str) -> bool:
    """No NUL and valid UTF-8 (no lone surrogates)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_tree(value: Any, reason: str, what: str) -> Any:
    """``value`` if it is a bounded JSON-like tree: dict (str keys), list, str, int64, finite
    float, bool or None, at most ``MAX_TREE_DEPTH`` deep and ``MAX_TREE_ITEMS`` items."""
    budget = [MAX_TREE_ITEMS]

    def walk(v: Any, depth: int) -> None:
        if depth > MAX_TREE_DEPTH:
            raise WireError(reason, f"{what} nests deeper than {MAX_TREE_DEPTH}")
        if v is None or type(v) is bool:
            return
        if type(v) is int:
            if not is_int64(v):
                raise WireError(reason, f"{what}: integer beyond int64: {_short(v)}")
            return
        if type(v) is float:
            if not math.isfinite(v):
                raise WireError(reason, f"{what}: non-finite number {v!r}")
            return
        if type(v) is str:
            if len(v) > MAX_TEXT_LEN or not is_clean_text(v):
                raise WireError(reason, f"{what}: a string too long, with NUL or not UTF-8")
            return
        if type(v) is dict:
            items: Any = v.items()
        elif type(v) is list:
            items = ((None, x) for x in v)
        else:
            raise WireError(reason, f"{what}: unsupported type {type(v).__name__}")
        for k, x in items:
            budget[0] -= 1
            if budget[0] < 0:
                raise WireError(reason, f"{what} has more than {MAX_TREE_ITEMS} items")
            if k is not None and (
                type(k) is not str or len(k) > MAX_ID_LEN or not is_clean_text(k)
            ):
                raise WireError(reason, f"{what}: bad key {_short(k)}")
            walk(x, depth + 1)

    walk(value, 0)
    return value


def check_dtcs(codes: Any, what: str = "codes") -> list[str]:
    """A DTC list: a list of at most ``MAX_DTCS`` SAE J2012 codes (upper case accepted as is,
    lower case folded); returns them sorted without duplicates, else raises ``WireError('bad_dtc')``."""
    if type(codes) is not list:
        raise WireError("bad_dtc", f"{what} must be a list, got {type(codes).__name__}")
    if len(codes) > MAX_DTCS:
        raise WireError("bad_dtc", f"{what}: {len(codes)} codes > {MAX_DTCS}")
    out: set[str] = set()
    for code in codes:
        if type(code) is not str or len(code) != 5 or not DTC_RE.fullmatch(code.upper()):
            raise WireError("bad_dtc", f"{what}: {_short(code)} is not a DTC like P0301")
        out.add(code.upper())
    return sorted(out)


def valid_dtcs(codes: Any) -> list[str]:
    """The valid DTCs of a list read back from a store or topic (the rest dropped), capped."""
    if type(codes) is not list:
        return []
    ok = {
        c.upper()
        for c in codes[: MAX_DTCS * 4]
        if type(c) is str and len(c) == 5 and DTC_RE.fullmatch(c.upper())
    }
    return sorted(ok)[:MAX_DTCS]


def _short(value: Any) -> str:
    """A short, safe description of a hostile value for an error detail."""
    if type(value) is int:
        bits = value.bit_length()
        return repr(value) if bits <= 64 else f"an integer of {bits} bits"
    if isinstance(value, str | bytes):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, list | dict | tuple | set):
        return f"a {type(value).__name__} of length {len(value)}"
    if value is None or isinstance(value, bool | float):
        return repr(value)
    return f"a {type(value).__name__}"
