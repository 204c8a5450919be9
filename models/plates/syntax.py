"""Chinese licence-plate syntax: every kind of GA 36-2018, plus armed-police and emergency plates.

Each kind is a list of templates (one allowed-character set per position); the same templates drive
``is_valid`` and the constrained CTC decoding, so the reader can only print what a kind allows.

Covered (GA 36-2018 unless said otherwise):

- ordinary small (blue) and large (yellow) plates, motorcycles: province, issuing-office letter,
  five letters/digits;
- new-energy (green) small: ``D``/``F`` first, then a letter or digit, then four digits; large:
  five digits, then ``D``/``F`` (``D`` battery electric, ``F`` other new energy);
- four letters/digits and a last Chinese character: trailer 挂 (yellow), coach 学 (yellow),
  police 警 (white), consulate 领 (black), test 试, over-size 超, Hong Kong 港 / Macau 澳 entry
  (black, issued in Guangdong as 粤Z only);
- embassy (black): 使 and six digits (three of the mission, three of the vehicle);
- emergency rescue (white, from 2018; State Council notice 国办发〔2018〕114号, not GA 36 itself):
  cars are province, team letter, four digits, 应急; motorcycles 应急, province, three digits, team
  letter;
- armed police (white, the armed police's own standard, not GA 36): ``WJ``, a province, four
  digits and a fifth digit or a service character (消 fire, 边 border, 通 traffic, 森 forest,
  金 gold, 警 guard, 电 hydropower); older plates have a two-digit region code instead of the
  province.

Not covered: military plates (the PLA's own standard, red-letter unit codes; not GA 36), civil
aviation 民航 airside plates, agricultural machinery (the agriculture ministry's NY/T standard), and
paper temporary plates (GA 36 gives them a printed, not embossed, layout that this reader does not
target).
"""

from __future__ import annotations

from typing import Final

import numpy as np

PROVINCES: Final = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
# I and O are never issued (they look like 1 and 0).
LETTERS: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS: Final = "0123456789"
ALNUM: Final = LETTERS + DIGITS
NEV_LETTERS: Final = "DF"  # D = battery electric, F = other new-energy
# Last character of the seven-character special plates, with their kind.
SUFFIX_KINDS: Final = {
    "挂": "trailer",
    "学": "coach",
    "警": "police",
    "领": "consulate",
    "试": "test",
    "超": "oversize",
    "港": "hong-kong",
    "澳": "macau",
}
SPECIAL_SUFFIX: Final = "".join(SUFFIX_KINDS)
WJ_SERVICES: Final = "消边通森金警电"

Template = tuple[str, ...]

_ORDINARY: Final[Template] = (PROVINCES, LETTERS, ALNUM, ALNUM, ALNUM, ALNUM, ALNUM)
_SUFFIX_COLOUR: Final = {
    "police": "white",
    "consulate": "black",
    "hong-kong": "black",
    "macau": "black",
}


def _suffixed(last: str, kind: str) -> Template:
    """Four letters/digits and a Chinese last character; Hong Kong/Macau plates are 粤Z only."""
    head = ("粤", "Z") if kind in ("hong-kong", "macau") else (PROVINCES, LETTERS)
    return (*head, ALNUM, ALNUM, ALNUM, ALNUM, last)


# (kind, colour, templates); order matters only for ``kind_of`` (first match wins).
KINDS: Final[tuple[tuple[str, str, tuple[Template, ...]], ...]] = (
    ("ordinary", "blue", (_ORDINARY,)),
    ("new-energy-small", "green", ((PROVINCES, LETTERS, NEV_LETTERS, ALNUM, *[DIGITS] * 4),)),
    ("new-energy-large", "green", ((PROVINCES, LETTERS, *[DIGITS] * 5, NEV_LETTERS),)),
    *(
        (kind, _SUFFIX_COLOUR.get(kind, "yellow"), (_suffixed(ch, kind),))
        for ch, kind in SUFFIX_KINDS.items()
    ),
    ("embassy", "black", (("使", *[DIGITS] * 6),)),
    ("emergency", "white", ((PROVINCES, LETTERS, *[DIGITS] * 4, "应", "急"),)),
    ("emergency-motorcycle", "white", (("应", "急", PROVINCES, *[DIGITS] * 3, LETTERS),)),
    (
        "armed-police",
        "white",
        (
            ("W", "J", PROVINCES, *[DIGITS] * 4, DIGITS + WJ_SERVICES),
            ("W", "J", DIGITS, DIGITS, *[DIGITS] * 4, DIGITS + WJ_SERVICES),
        ),
    ),
)
KIND_COLOUR: Final = {kind: colour for kind, colour, _ in KINDS}

# Templates for constrained decoding: every kind's, in KINDS order.
TEMPLATES: Final[tuple[Template, ...]] = tuple(t for _, _, ts in KINDS for t in ts)
TEMPLATE_KINDS: Final = tuple(kind for kind, _, ts in KINDS for _ in ts)
# The kinds a plate of a background colour the reader has seen may be, from ``KINDS``: GA 36 gives
# green to the new-energy plates alone and blue to ordinary small cars and light motorcycles alone.
# Yellow is not narrowed: ordinary large vehicles' plates are yellow too, and a large new-energy
# plate's yellow-green may look yellow. White and black plates are not told apart from a crop.
COLOUR_KINDS: Final[dict[str, frozenset[str]]] = {
    colour: frozenset(kind for kind, c, _ in KINDS if c == colour) for colour in ("green", "blue")
}
# Characters GA 36 prints in red, by position in the plate's text (negative: from the end): the
# police's 警, the armed police's WJ, the emergency plates' 应急, the embassies' 使.
RED_CHARS: Final[dict[str, tuple[int, ...]]] = {
    "police": (-1,),
    "armed-police": (0, 1),
    "emergency": (-2, -1),
    "embassy": (0,),
}
# A red glyph at one end of a plate (``locate.red_mark``) leaves only the kinds with a red
# character there: a faded red 警 is often missed by the recognisers, and the six black
# characters left are no valid plate.
RED_MARK_KINDS: Final[dict[str, frozenset[str]]] = {
    "red-last": frozenset(k for k, pos in RED_CHARS.items() if -1 in pos),
    "red-first": frozenset(k for k, pos in RED_CHARS.items() if 0 in pos),
}


def red_positions(text: str) -> frozenset[int]:
    """The positions of ``text`` GA 36 prints in red (empty unless it is a valid plate of a kind
    with red characters)."""
    kind = kind_of(text)
    return frozenset(p % len(text) for p in RED_CHARS.get(kind, ())) if kind else frozenset()


def kinds_for_colour(colour: str) -> frozenset[str] | None:
    """The kinds a plate of background ``colour``, or with a red mark (``RED_MARK_KINDS``), may
    be (``None``: not known to narrow them)."""
    return COLOUR_KINDS.get(colour) or RED_MARK_KINDS.get(colour)


_SEPARATORS: Final = str.maketrans("", "", " \t\r\n·•.-_:：'\"|。,，")
# Excluded letters are read where a digit is meant.
_FOLD: Final = str.maketrans({"O": "0", "I": "1", "o": "0", "i": "1"})


def normalise(text: str) -> str:
    """Upper-case, drop separators, fold the letters I/O that plates never use into 1/0."""
    return text.translate(_SEPARATORS).upper().translate(_FOLD)


def _fits(text: str, template: Template) -> bool:
    return len(text) == len(template) and all(
        c in allowed for c, allowed in zip(text, template, strict=True)
    )


def kind_of(text: str) -> str | None:
    """The plate kind (``"ordinary"``, ``"coach"``, ``"armed-police"``...) or ``None`` if invalid."""
    for template, kind in zip(TEMPLATES, TEMPLATE_KINDS, strict=True):
        if _fits(text, template):
            return kind
    return None


def is_valid(text: str) -> bool:
    """True if ``text`` (already normalised) is a well-formed plate number of a covered kind."""
    return kind_of(text) is not None


def plate_kind(text: str) -> str:
    """Coarse kind for gate events: ``"new-energy"``, ``"special"`` or ``"standard"``."""
    kind = kind_of(text)
    if kind is not None and kind.startswith("new-energy"):
        return "new-energy"
    if kind in (None, "ordinary"):
        return "standard"
    return "special"


def template_masks(
    alphabet: list[str], templates: tuple[Template, ...] = TEMPLATES
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
