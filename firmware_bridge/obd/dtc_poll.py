"""One read-only DTC poll: MIL and count (01 01), stored (03) and pending (07) codes, freeze frame (02).

``poll_dtcs(client)`` returns a :class:`DtcSnapshot` or raises :class:`DtcReadError` when the car
gave no usable answer. An unusable answer (garbage, ``NO DATA``, a negative response, a frame that
does not reassemble) is never read as "no codes": that would tell the cloud the faults were
cleared. Multi-ECU answers are merged; more than ``MAX_CODES`` codes are cut and counted. Mode 04
(clear) is never sent from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from core.errors import DtcReadError
from firmware_bridge.obd.client import ObdClient
from firmware_bridge.obd.dtc import code_from_bytes, decode_dtcs
from firmware_bridge.obd.pids import PIDS, decode_pid
from firmware_bridge.obd.responses import Status

MAX_CODES: Final = 64  # core.checks.MAX_DTCS: what a dtc event may carry
# Freeze-frame PIDs asked for (mode 02, frame 0): load, coolant, RPM, speed, throttle.
FREEZE_PIDS: Final = (0x04, 0x05, 0x0C, 0x0D, 0x11)


@dataclass(frozen=True, slots=True)
class DtcSnapshot:
    """The fault state of the car at one poll."""

    stored: tuple[str, ...]  # confirmed (mode 03), sorted, unique
    pending: tuple[str, ...]  # mode 07
    mil: bool | None  # None: PID 01 01 not answered
    count: int | None  # the ECUs' own count of confirmed codes (PID 01 01)
    truncated: int = 0  # codes beyond MAX_CODES, dropped
    freeze_dtc: str | None = None
    freeze_frame: dict[str, float] = field(default_factory=dict)  # VSS path -> value


def _service_answers(client: ObdClient, service: int, payload: bytes) -> list[tuple[str, bytes]]:
    resp = client.transport.request(payload)
    if resp.status is not Status.OK:
        raise DtcReadError(f"mode {service:02X}: {resp.status.value}")
    out = [
        (ecu, msg[1:])
        for ecu, msg in sorted(resp.messages.items())
        if msg[:1] == bytes((service + 0x40,))
    ]
    if not out:
        raise DtcReadError(f"mode {service:02X}: no positive answer ({resp.raw[:40]!r})")
    return out


def _codes(client: ObdClient, service: int) -> tuple[tuple[str, ...], int]:
    codes: set[str] = set()
    for ecu, body in _service_answers(client, service, bytes((service,))):
        codes.update(d.code for d in decode_dtcs(body, ecu, service == 0x07))
    ordered = sorted(codes)
    return tuple(ordered[:MAX_CODES]), max(0, len(ordered) - MAX_CODES)


def read_mil(client: ObdClient) -> tuple[bool, int] | None:
    """MIL on/off and the confirmed-code count from PID 01 01 (any ECU with the MIL on wins)."""
    try:
        answers = _service_answers(client, 0x01, b"\x01\x01")
    except DtcReadError:
        return None
    mil, count, seen = False, 0, False
    for _ecu, body in answers:
        if len(body) >= 2 and body[0] == 0x01:
            seen = True
            mil = mil or bool(body[1] & 0x80)
            count += body[1] & 0x7F
    return (mil, count) if seen else None


def read_freeze_frame(
    client: ObdClient, pids: Sequence[int] = FREEZE_PIDS
) -> tuple[str | None, dict[str, float]]:
    """Mode 02 frame 0: the code that stored it (PID 02) and the values the ECU kept."""
    dtc: str | None = None
    values: dict[str, float] = {}
    for pid in (0x02, *pids):
        try:
            answers = _service_answers(client, 0x02, bytes((0x02, pid, 0x00)))
        except DtcReadError:
            continue  # "12" (sub-function not supported) and NO DATA: the ECU keeps no such value
        for _ecu, body in answers:
            if len(body) < 3 or body[0] != pid or body[1] != 0x00:
                continue
            if pid == 0x02:
                if body[2:4] != b"\x00\x00" and len(body) >= 4:
                    dtc = dtc or code_from_bytes(body[2], body[3])
            elif pid in PIDS:
                value = decode_pid(pid, body[2:])
                if value is not None:
                    values.setdefault(PIDS[pid].vss, value)
    return dtc, values


def poll_dtcs(client: ObdClient, *, freeze_frame: bool = True) -> DtcSnapshot:
    """Read the car's fault state; raises ``DtcReadError`` when mode 03 or 07 gave nothing usable."""
    stored, cut_s = _codes(client, 0x03)
    pending, cut_p = _codes(client, 0x07)
    mil = read_mil(client)
    ff_dtc, ff = read_freeze_frame(client) if freeze_frame and stored else (None, {})
    return DtcSnapshot(
        stored=stored,
        pending=pending,
        mil=None if mil is None else mil[0],
        count=None if mil is None else mil[1],
        truncated=cut_s + cut_p,
        freeze_dtc=ff_dtc,
        freeze_frame=ff,
    )
