"""Diagnostic trouble codes (SAE J2012) as an ECU answers them: two bytes -> ``P0301``.

The texts come from the catalogue in :mod:`core.dtc`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from core.dtc import describe

_LETTERS: Final = "PCBU"


@dataclass(frozen=True, slots=True)
class Dtc:
    """One trouble code as read from an ECU."""

    code: str  # "P0301"
    description: str
    ecu: str = ""  # responder address, e.g. "7E8"
    pending: bool = False  # mode 07 (pending) rather than mode 03 (confirmed)

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "description": self.description,
            "ecu": self.ecu,
            "pending": self.pending,
        }


def code_from_bytes(a: int, b: int) -> str:
    """SAE J2012 code of the two DTC bytes ``a b`` (``0x01 0x43`` -> ``P0143``)."""
    letter = _LETTERS[(a >> 6) & 0x03]
    return f"{letter}{(a >> 4) & 0x03}{a & 0x0F:X}{b:02X}"


def decode_dtcs(payload: bytes, ecu: str = "", pending: bool = False) -> list[Dtc]:
    """Codes in a mode 03/07/0A answer body (after the service byte).

    CAN ECUs put a count byte first; legacy protocols do not. ``0000`` pairs are padding.
    A trailing odd byte is dropped (truncated answers are common on cheap adapters).
    """
    body = bytes(payload)
    if len(body) % 2 == 1:
        # An odd length means a count byte first (CAN); only trust it when it fits.
        count, body = body[0], body[1:]
        body = body[: 2 * count] if 2 * count <= len(body) else body
    out: list[Dtc] = []
    for i in range(0, len(body) - 1, 2):
        a, b = body[i], body[i + 1]
        if a == 0 and b == 0:
            continue
        code = code_from_bytes(a, b)
        out.append(Dtc(code, describe(code), ecu, pending))
    return out
