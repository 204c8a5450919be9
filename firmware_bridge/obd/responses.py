"""Parse what an ELM327 prints for one request: status words, header lines, ISO-TP frames per ECU."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class Status(StrEnum):
    """How a request ended. Everything but ``OK`` carries no data."""

    OK = "ok"
    NO_DATA = "no_data"  # the ECU did not answer: ignition off, or PID not supported
    UNABLE_TO_CONNECT = "unable_to_connect"  # no protocol found: ignition off or no car
    STOPPED = "stopped"  # a byte arrived while the adapter was waiting: request aborted
    CAN_ERROR = "can_error"
    BUS_INIT_ERROR = "bus_init_error"
    BUS_BUSY = "bus_busy"
    BUFFER_FULL = "buffer_full"
    DATA_ERROR = "data_error"
    UNKNOWN_COMMAND = "unknown_command"  # "?"
    ADAPTER_ERROR = "adapter_error"  # ERRxx, LV RESET, FB ERROR ...
    GARBAGE = "garbage"  # nothing parseable


# Statuses that mean "the car is not talking" (ignition off), which is a normal state.
QUIET: Final = frozenset({Status.NO_DATA, Status.UNABLE_TO_CONNECT, Status.BUS_INIT_ERROR})

_STATUS_WORDS: Final = (
    ("NODATA", Status.NO_DATA),
    ("UNABLETOCONNECT", Status.UNABLE_TO_CONNECT),
    ("STOPPED", Status.STOPPED),
    ("CANERROR", Status.CAN_ERROR),
    ("BUSINIT:ERROR", Status.BUS_INIT_ERROR),
    ("BUSINIT:...ERROR", Status.BUS_INIT_ERROR),
    ("BUSERROR", Status.BUS_INIT_ERROR),
    ("BUSBUSY", Status.BUS_BUSY),
    ("BUFFERFULL", Status.BUFFER_FULL),
    ("DATAERROR", Status.DATA_ERROR),
    ("<DATAERROR", Status.DATA_ERROR),
    ("<RXERROR", Status.DATA_ERROR),
    ("FBERROR", Status.ADAPTER_ERROR),
    ("LVRESET", Status.ADAPTER_ERROR),
    ("ACTALERT", Status.ADAPTER_ERROR),
)
_NOISE: Final = ("SEARCHING...", "BUSINIT:...", "BUSINIT:...OK", "BUSINIT:OK", "OK")
_HEX: Final = re.compile(r"^[0-9A-F]+$")
_ERR: Final = re.compile(r"^ERR\d\d$")
_FRAME_INDEX: Final = re.compile(r"^[0-9A-F]:")  # CAN, headers off: "0: 49 02 01 ..."

# Protocol families (ATDPN digit) decide how wide the header is.
CAN_11: Final = "can11"  # protocols 6, 8 (and B with 11-bit ids)
CAN_29: Final = "can29"  # protocols 7, 9
LEGACY: Final = "legacy"  # J1850 / ISO 9141 / KWP: 3 header bytes + data + checksum


def family_of(protocol_digit: str) -> str:
    """Header family of an ELM protocol number (``6``, ``A6``, ``7``...)."""
    digit = protocol_digit.strip().upper()[-1:] or "6"
    if digit in ("6", "8", "B"):
        return CAN_11
    if digit in ("7", "9", "C"):
        return CAN_29
    return LEGACY


@dataclass(slots=True)
class ElmResponse:
    """The messages of one request, reassembled per responding ECU."""

    status: Status
    messages: dict[str, bytes] = field(default_factory=dict)  # ECU address -> payload
    dropped: list[str] = field(default_factory=list)  # lines or frames that made no sense
    raw: str = ""


def clean(raw: str) -> list[str]:
    """Split adapter output into upper-case lines without spaces, prompt, NULs or echo noise."""
    text = raw.replace("\x00", "").replace(">", "")
    lines = (ln.replace(" ", "").replace("\t", "").upper() for ln in re.split(r"[\r\n]+", text))
    return [ln for ln in lines if ln]


@dataclass(slots=True)
class _Isotp:
    """ISO-TP reassembly state for one ECU."""

    size: int = -1
    data: bytearray = field(default_factory=bytearray)
    seq: int = 0


def _feed_isotp(state: _Isotp, frame: bytes) -> tuple[bytes | None, str | None]:
    """Feed one CAN frame (PCI + data); return ``(message, error)``."""
    if not frame:
        return None, "empty frame"
    kind = frame[0] >> 4
    if kind == 0:  # single frame
        size = frame[0] & 0x0F
        if size == 0 or size > len(frame) - 1:
            return None, f"single frame length {size} > {len(frame) - 1}"
        state.size = -1
        return bytes(frame[1 : 1 + size]), None
    if kind == 1:  # first frame
        if len(frame) < 2:
            return None, "truncated first frame"
        state.size = ((frame[0] & 0x0F) << 8) | frame[1]
        state.data = bytearray(frame[2:])
        state.seq = 1
        if state.size < 7:
            state.size = -1
            return None, "first frame announces a single-frame size"
        return None, None
    if kind == 2:  # consecutive frame
        if state.size < 0:
            return None, "consecutive frame without first frame"
        if frame[0] & 0x0F != state.seq & 0x0F:
            state.size = -1
            return None, f"consecutive frame {frame[0] & 0x0F} out of order"
        state.seq += 1
        state.data += frame[1:]
        if len(state.data) >= state.size:
            out = bytes(state.data[: state.size])
            state.size = -1
            return out, None
        return None, None
    return None, f"PCI type {kind} in an answer"


def _hex_bytes(s: str) -> bytes | None:
    if len(s) % 2 or not _HEX.match(s):
        return None
    return bytes.fromhex(s)


def parse_response(raw: str, family: str = CAN_11, command: str = "") -> ElmResponse:
    """Parse the output of one request (headers on, ``ATH1``; spaces on or off).

    Never raises: lines that make no sense are listed in ``dropped`` and the status says what
    the adapter meant. ``command`` lets an echoed request line be skipped.
    """
    lines = clean(raw)
    echo = command.replace(" ", "").upper()
    resp = ElmResponse(Status.GARBAGE, raw=raw[:512])
    states: dict[str, _Isotp] = {}
    pending: dict[str, bytearray] = {}  # headers-off multi-line answers: "0:" "1:" ...
    status: Status | None = None
    for line in lines:
        if (echo and line == echo) or line in _NOISE or line.startswith("SEARCHING"):
            continue
        word = next((st for w, st in _STATUS_WORDS if line.startswith(w)), None)
        if word is not None:
            status = status or word
            continue
        if line == "?":
            status = status or Status.UNKNOWN_COMMAND
            continue
        if _ERR.match(line):
            status = status or Status.ADAPTER_ERROR
            continue
        if _FRAME_INDEX.match(line):
            data = _hex_bytes(line[2:])
            if data is None:
                resp.dropped.append(line[:64])
                continue
            pending.setdefault("", bytearray()).extend(data)
            continue
        data = _hex_bytes(line) if family != CAN_11 else _hex_bytes("0" + line)
        if data is None or len(data) < 3:
            resp.dropped.append(line[:64])
            continue
        if family == CAN_11:
            # "7E8 06 41 0C ..." -> pad the 3-digit header to 2 bytes for hex decoding.
            ecu, frame = f"{((data[0] << 8) | data[1]):03X}", data[2:]
        elif family == CAN_29:
            if len(data) < 5:
                resp.dropped.append(line[:64])
                continue
            ecu, frame = data[:4].hex().upper(), data[4:]
        else:
            if len(data) < 5:
                resp.dropped.append(line[:64])
                continue
            # Legacy: 3 header bytes, data, checksum. Several lines from one ECU concatenate.
            ecu = f"{data[2]:02X}"
            body = data[3:-1]
            if ecu in resp.messages:
                body = body[1:] if body[:1] == resp.messages[ecu][:1] else body
                resp.messages[ecu] += body
            else:
                resp.messages[ecu] = bytes(body)
            continue
        msg, err = _feed_isotp(states.setdefault(ecu, _Isotp()), frame)
        if err:
            resp.dropped.append(f"{ecu}: {err}")
        if msg is not None:
            # Two answers from one ECU to one request: keep the first (the ELM may repeat).
            resp.messages.setdefault(ecu, msg)
    for buf in pending.values():
        # Headers off: "014" (size) then indexed lines; we cannot know the ECU.
        resp.messages.setdefault("", bytes(buf))
    for ecu, st in states.items():
        if st.size >= 0:
            resp.dropped.append(f"{ecu}: truncated multi-frame ({len(st.data)}/{st.size} bytes)")
    if resp.messages:
        resp.status = Status.OK
    elif status is not None:
        resp.status = status
    return resp
