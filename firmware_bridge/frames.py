"""The candump ``-L`` log reader that fills :class:`core.frames.Frames`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import SourceUnavailableError
from core.frames import CAN_EFF_MASK, CAN_ERR_FLAG, Frames

log = logging.getLogger(__name__)

MAX_REPORTED = 5
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass
class ParseReport:
    """What a reader dropped: how many lines and the first few reasons, each with file:line."""

    lines: int = 0
    frames: int = 0
    bad_lines: int = 0
    error_frames: int = 0
    remote_frames: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, where: str, why: str) -> None:
        self.bad_lines += 1
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(f"{where}: {why}")


def _parse_ts_us(text: str) -> int:
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError("timestamp must look like (1584656584.423089)")
    sec, _, frac = text[1:-1].partition(".")
    # 12 digits of seconds reach year 33658; more would overflow int64 microseconds
    if not sec.isdigit() or len(sec) > 12 or (frac and not frac.isdigit()):
        raise ValueError(f"bad timestamp {text!r}")
    return int(sec) * 1_000_000 + int((frac + "000000")[:6])


def parse_candump_lines(
    lines: Iterable[str], source: str = "<lines>"
) -> tuple[Frames, ParseReport]:
    """Parse candump ``-L`` lines (``(ts) iface ID#DATA``, ``ID##F...`` for CAN FD, ``ID#R`` remote).

    Malformed lines are counted in the report (with the first few file:line reasons), never raised.
    Error frames (CAN_ERR_FLAG) and remote frames are counted and left out of the frames.
    """
    rep = ParseReport()
    ts_l: list[int] = []
    id_l: list[int] = []
    ext_l: list[bool] = []
    payloads: list[bytes] = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rep.lines += 1
        where = f"{source}:{lineno}"
        parts = line.split()
        # candump -L may end a line with the direction (R/T) when logging with -x
        if len(parts) == 4 and parts[3] in ("R", "T", "r", "t"):
            parts = parts[:3]
        if len(parts) != 3 or "#" not in parts[2]:
            rep.bad(where, f"expected '(ts) iface ID#DATA', got {line[:60]!r}")
            continue
        try:
            ts = _parse_ts_us(parts[0])
            ident, _, rest = parts[2].partition("#")
            # int(x, 16) also takes signs, underscores and spaces: accept hex digits only
            if not ident or len(ident) > 8 or not _HEX.issuperset(ident):
                raise ValueError(f"bad id {ident[:12]!r}")
            can_id = int(ident, 16)
            extended = len(ident) > 3
            if rest.startswith(("R", "r")):
                rep.remote_frames += 1
                continue
            limit = 16  # hex digits of a classic frame
            if rest.startswith("#"):  # CAN FD: ID##<flags nibble><data>
                if len(rest) < 2 or rest[1] not in _HEX:
                    raise ValueError("CAN FD frame without its flags nibble")
                rest = rest[2:]
                limit = 128
            if len(rest) % 2:
                raise ValueError(f"odd payload length ({len(rest)} hex digits): truncated frame")
            if len(rest) > limit:
                raise ValueError(f"oversized frame: {len(rest) // 2} bytes > {limit // 2}")
            if not _HEX.issuperset(rest):
                raise ValueError("payload is not hex")
            payload = bytes.fromhex(rest)
        except ValueError as err:
            rep.bad(where, str(err))
            continue
        if extended and can_id & CAN_ERR_FLAG:
            rep.error_frames += 1
            continue
        ts_l.append(ts)
        id_l.append(can_id & CAN_EFF_MASK)
        ext_l.append(extended)
        payloads.append(payload)
    rep.frames = len(ts_l)
    width = 8 if all(len(p) <= 8 for p in payloads) else 64
    n = len(payloads)
    data = np.zeros((n, width), dtype=np.uint8)
    dlc = np.fromiter((len(p) for p in payloads), dtype=np.uint8, count=n)
    if n:
        flat = np.frombuffer(b"".join(p.ljust(width, b"\0") for p in payloads), dtype=np.uint8)
        data[:] = flat.reshape(n, width)
    frames = Frames(
        np.asarray(ts_l, dtype=np.int64),
        np.asarray(id_l, dtype=np.uint32),
        np.asarray(ext_l, dtype=bool),
        dlc,
        data,
    )
    if rep.bad_lines:
        log.warning(
            "%s: dropped %d malformed line(s) of %d, e.g. %s",
            source,
            rep.bad_lines,
            rep.lines,
            "; ".join(rep.examples[:2]),
        )
    return frames, rep


def read_candump(path: Path | str) -> tuple[Frames, ParseReport]:
    """Read a candump ``-L`` log file."""
    p = Path(path)
    try:
        with open(p, encoding="ascii", errors="replace") as fh:
            return parse_candump_lines(fh, str(p))
    except FileNotFoundError as err:
        raise SourceUnavailableError(f"CAN log {p} does not exist") from err
    except IsADirectoryError as err:
        raise SourceUnavailableError(f"CAN log {p} is a directory") from err
