"""Chinese licence-plate syntax (GA 36-2018): provinces, letters without I/O, new-energy and special plates."""

from __future__ import annotations

import re
from typing import Final

import numpy as np

PROVINCES: Final = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
# I and O are never issued (they look like 1 and 0).
LETTERS: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS: Final = "0123456789"
ALNUM: Final = LETTERS + DIGITS
# A last character that replaces the fifth serial character on special plates.
SPECIAL_SUFFIX: Final = "警学挂领试超港澳"
NEV_LETTERS: Final = "DF"  # D = battery electric, F = other new-energy

_P, _L, _A = f"[{PROVINCES}]", f"[{LETTERS}]", f"[{ALNUM}]"
PLATE_RE: Final = re.compile(
    rf"^{_P}{_L}(?:{_A}{{5}}|{_A}{{4}}[{SPECIAL_SUFFIX}]"
    rf"|[{NEV_LETTERS}]{_A}\d{{4}}|\d{{5}}[{NEV_LETTERS}])$"
)

# Characters a recogniser prints around or inside plates that are not part of the number.
_SEPARATORS: Final = re.compile(r"[\s·•.\-_:：'\"|。,，]")
# Excluded letters are read where a digit is meant.
_FOLD: Final = str.maketrans({"O": "0", "I": "1", "o": "0", "i": "1"})


def normalise(text: str) -> str:
    """Upper-case, drop separators, fold the letters I/O that plates never use into 1/0."""
    return _SEPARATORS.sub("", text).upper().translate(_FOLD)


def is_valid(text: str) -> bool:
    """True if ``text`` (already normalised) is a well-formed civil plate number."""
    return PLATE_RE.match(text) is not None


def plate_kind(text: str) -> str:
    """``"new-energy"``, ``"special"`` or ``"standard"`` for a valid plate."""
    if len(text) == 8:
        return "new-energy"
    if text[-1] in SPECIAL_SUFFIX:
        return "special"
    return "standard"


# Templates for constrained decoding: one allowed-character set per position.
TEMPLATES: Final[tuple[tuple[str, ...], ...]] = (
    (PROVINCES, LETTERS, ALNUM, ALNUM, ALNUM, ALNUM, ALNUM),
    (PROVINCES, LETTERS, ALNUM, ALNUM, ALNUM, ALNUM, SPECIAL_SUFFIX),
    (PROVINCES, LETTERS, NEV_LETTERS, ALNUM, DIGITS, DIGITS, DIGITS, DIGITS),
    (PROVINCES, LETTERS, DIGITS, DIGITS, DIGITS, DIGITS, DIGITS, NEV_LETTERS),
)


def template_masks(
    alphabet: list[str], templates: tuple[tuple[str, ...], ...] = TEMPLATES
) -> tuple[np.ndarray, list[int]]:
    """``(mask[template, position, class], lengths)`` over a CTC alphabet (class 0 = blank).

    Positions past a template's length are all-False.
    """
    index = {ch: i for i, ch in enumerate(alphabet)}
    width = max(len(t) for t in templates)
    mask = np.zeros((len(templates), width, len(alphabet)), dtype=np.bool_)
    for t, template in enumerate(templates):
        for p, allowed in enumerate(template):
            for ch in allowed:
                if ch in index:
                    mask[t, p, index[ch]] = True
    return mask, [len(t) for t in templates]
