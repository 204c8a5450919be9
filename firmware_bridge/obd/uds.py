"""UDS ReadDTCInformation (0x19, ISO 14229-1) reportDTCByStatusMask (0x02): the same DTC snapshot
as modes 03/07, for ECUs that answer UDS on CAN (through ``IsoTpObd``, or an ELM327).

Answer: ``59 02 <availability mask>`` then 4-byte records ``DTC high, DTC middle, failure type,
status``. The first two bytes are the SAE J2012 code (``P0217``); the failure-type byte is kept
out of the code (the wire carries 5-character codes). Status bits used: 0x04 pending, 0x08
confirmed, 0x80 warning indicator (MIL) requested.
"""

from __future__ import annotations

from typing import Final

from core.errors import DtcReadError
from firmware_bridge.obd.base import ObdTransport
from firmware_bridge.obd.dtc import code_from_bytes
from firmware_bridge.obd.dtc_poll import MAX_CODES, DtcSnapshot
from firmware_bridge.obd.responses import Status

READ_DTC_INFORMATION: Final = 0x19
BY_STATUS_MASK: Final = 0x02
PENDING: Final = 0x04
CONFIRMED: Final = 0x08
WARNING_INDICATOR: Final = 0x80


def parse_by_status_mask(body: bytes) -> list[tuple[str, int]]:
    """``(code, status)`` records of a positive answer body (after ``0x59``); a body that is not
    a reportDTCByStatusMask answer raises ``DtcReadError``. A trailing partial record is dropped."""
    if len(body) < 2 or body[0] != BY_STATUS_MASK:
        raise DtcReadError(f"UDS 19 02: answer {body[:8].hex()} is not a DTC-by-status report")
    out = []
    for i in range(2, len(body) - 3, 4):
        hi, mid, status = body[i], body[i + 1], body[i + 3]
        if hi == mid == 0:
            continue
        out.append((code_from_bytes(hi, mid), status))
    return out


def poll_uds_dtcs(transport: ObdTransport, mask: int = 0xFF) -> DtcSnapshot:
    """Confirmed and pending codes and the MIL of every answering ECU, by UDS 19 02."""
    resp = transport.request(bytes((READ_DTC_INFORMATION, BY_STATUS_MASK, mask & 0xFF)))
    if resp.status is not Status.OK:
        raise DtcReadError(f"UDS 19 02: {resp.status.value}")
    records: list[tuple[str, int]] = []
    answered = False
    for _ecu, msg in sorted(resp.messages.items()):
        if msg[:1] == b"\x59":
            answered = True
            records += parse_by_status_mask(msg[1:])
    if not answered:
        raise DtcReadError(f"UDS 19 02: no positive answer ({resp.raw[:40]!r})")
    stored = sorted({c for c, st in records if st & CONFIRMED})
    pending = sorted({c for c, st in records if st & PENDING})
    mil = any(st & WARNING_INDICATOR for _c, st in records)
    cut = max(0, len(stored) - MAX_CODES) + max(0, len(pending) - MAX_CODES)
    return DtcSnapshot(
        stored=tuple(stored[:MAX_CODES]),
        pending=tuple(pending[:MAX_CODES]),
        mil=mil,
        count=len(stored),
        truncated=cut,
    )
