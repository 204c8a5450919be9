"""Replay and write CAN logs (candump ``-L``, Vector ASC and BLF...) through python-can's readers.

``can.LogReader`` picks the format from the suffix. Its readers stop at the first line they cannot
parse; :func:`iter_log_messages` resumes text logs on the next line, so a corrupt line costs one
record (counted, with file:line) instead of the rest of the file. A corrupt binary (BLF) log is read
up to the damage and the tail is reported. Timestamps are kept: ASC logs are read with absolute
timestamps (the ``Begin Triggerblock`` date) and every reader's float seconds become int64 us.
The fast candump reader :func:`firmware_bridge.frames.read_candump` gives the same frames for
candump logs and is what hot paths use.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import numpy as np

from core.errors import SourceUnavailableError
from core.frames import CAN_EFF_MASK, CAN_ERR_FLAG, Frames
from firmware_bridge.can_source import CLASSIC_MAX, FD_MAX, BlockBuilder, BusCounters

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".log", ".asc", ".csv", ".trc"}
# State an ASC reader learns from the header, copied into a reader that resumes after a bad line.
_ASC_STATE = ("base", "_converted_base", "start_time", "date", "timestamps_format")
MAX_LINE = 4096  # a CAN FD line is < 300 characters; a longer one is garbage, not read whole
MAX_TS_S = 1e10  # year 2286; logs with relative time start near 0


class _Lines:
    """A text file as an iterator of lines that remembers the current line number; a line
    longer than ``MAX_LINE`` is skipped (counted) without being held in memory."""

    def __init__(self, fh: Any, where: str = "", counters: BusCounters | None = None) -> None:
        self._fh = fh
        self._where = where
        self._counters = counters
        self.lineno = 0
        self.line = ""

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        while True:
            line = self._fh.readline(MAX_LINE + 1)
            if not line:
                raise StopIteration
            self.lineno += 1
            if len(line) <= MAX_LINE or line.endswith("\n"):
                self.line = line
                return line
            while line and not line.endswith("\n"):  # the rest of the overlong line
                line = self._fh.readline(1 << 16)
            if self._counters is not None:
                self._counters.bad_records += 1
                self._counters.note(
                    f"{self._where}:{self.lineno}: line longer than {MAX_LINE} characters"
                )

    def read(self, size: int = -1) -> str:  # python-can only checks that it exists
        return str(self._fh.read(size))

    def close(self) -> None:
        self._fh.close()


def _reader_kwargs(suffix: str) -> dict[str, Any]:
    # Absolute ASC timestamps: the log's own start date plus the relative time of each event.
    return {"relative_timestamp": False} if suffix == ".asc" else {}


def iter_log_messages(path: Path | str, counters: BusCounters) -> Iterator[can.Message]:
    """python-can messages of a log file; unparsable records are counted in ``counters``."""
    p = Path(path)
    if not p.is_file():
        raise SourceUnavailableError(f"CAN log {p} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        yield from _iter_text(p, suffix, counters)
    else:
        yield from _iter_binary(p, counters)


def _iter_text(p: Path, suffix: str, counters: BusCounters) -> Iterator[can.Message]:
    with open(p, encoding="ascii", errors="replace", newline=None) as fh:
        lines = _Lines(fh, str(p), counters)
        state: dict[str, Any] | None = None
        while True:
            reader = _open_reader(p, suffix, lines)
            if state is not None:
                # Resume: the header was consumed by the first reader; do not read it again.
                for name, value in state.items():
                    setattr(reader, name, value)
                reader._extract_header = lambda: None  # type: ignore[attr-defined]
            try:
                for msg in reader:
                    if _refused(msg, lines.line if suffix == ".log" else None, counters,
                                f"{p}:{lines.lineno}"):  # fmt: skip
                        continue
                    yield msg
                return
            except (ValueError, IndexError, KeyError, TypeError, OverflowError) as err:
                counters.bad_records += 1
                counters.note(f"{p}:{lines.lineno}: {err} in {lines.line.strip()[:60]!r}")
                if suffix == ".asc":
                    state = {k: getattr(reader, k) for k in _ASC_STATE if hasattr(reader, k)}
                else:
                    state = {}


def _refused(msg: can.Message, candump: str | None, counters: BusCounters, where: str) -> bool:
    """Count and note (file:line) a record no bus could carry; python-can's readers pass them on
    (candump ids are masked to 29 bits, ASC lengths are not checked)."""
    ts = msg.timestamp
    if not (math.isfinite(ts) and 0 <= ts < MAX_TS_S):
        counters.bad_records += 1
        counters.note(f"{where}: timestamp {ts!r} is not a time")
        return True
    can_id = msg.arbitration_id
    if candump is not None:  # the id as written: the reader keeps only its low 29 bits
        end = candump.find("#")
        ident = candump[candump.rfind(" ", 0, end) + 1 : end]
        if len(ident) >= 8:  # shorter ids cannot be wider than 29 bits
            with contextlib.suppress(ValueError):
                can_id = int(ident, 16)
            if len(ident) == 8 and can_id & ~CAN_EFF_MASK == CAN_ERR_FLAG:
                can_id = msg.arbitration_id  # an error-class id, as candump writes error frames
    elif msg.is_error_frame:
        return False
    if can_id > (CAN_EFF_MASK if msg.is_extended_id else 0x7FF):
        counters.bad_id += 1
        bits = "29" if msg.is_extended_id else "11"
        counters.note(f"{where}: id 0x{can_id:x} is wider than {bits} bits")
        return True
    if msg.is_error_frame:
        return False
    size = max(len(msg.data), msg.dlc)
    limit = FD_MAX if msg.is_fd else CLASSIC_MAX
    if size > limit:
        counters.oversized += 1
        counters.note(f"{where}: id 0x{can_id:x}: {size} bytes > {limit}")
        return True
    return False


def _open_reader(p: Path, suffix: str, lines: _Lines) -> Any:
    kwargs = _reader_kwargs(suffix)
    if suffix == ".log":
        return can.CanutilsLogReader(lines, **kwargs)  # type: ignore[arg-type]
    if suffix == ".asc":
        return can.ASCReader(lines, **kwargs)  # type: ignore[arg-type]
    if suffix == ".trc":
        return can.TRCReader(lines, **kwargs)  # type: ignore[arg-type]
    return can.CSVReader(lines, **kwargs)  # type: ignore[arg-type]


def _iter_binary(p: Path, counters: BusCounters) -> Iterator[can.Message]:
    fh = None
    reader: Any
    try:
        if p.suffix.lower() == ".blf":
            # our own handle: python-can leaks the file when the header is bad
            fh = open(p, "rb")  # noqa: SIM115
            reader = can.BLFReader(fh)
        else:
            reader = can.LogReader(p)
    except (ValueError, struct.error, can.io.blf.BLFParseError, OSError) as err:
        if fh is not None:
            fh.close()
        counters.bad_records += 1
        counters.note(f"{p}: cannot read: {err}")
        log.warning("%s: not a readable CAN log: %s", p, err)
        return
    expected = getattr(reader, "file_size", 0)
    actual = p.stat().st_size
    if expected and actual < expected:
        # python-can quietly stops at a cut-off container; say so, the caller lost frames
        counters.bad_records += 1
        counters.note(f"{p}: truncated, {actual} of {expected} bytes")
        log.warning(
            "%s: truncated BLF (%d of %d bytes), reading what is there", p, actual, expected
        )
    try:
        for n, msg in enumerate(reader, 1):
            if not _refused(msg, None, counters, f"{p}: object {n}"):
                yield msg
    except (ValueError, struct.error, zlib.error, can.io.blf.BLFParseError, EOFError) as err:
        # Binary logs cannot be resynchronised reliably: keep what was read, report the rest.
        counters.bad_records += 1
        counters.note(f"{p}: corrupt after {counters.frames} frame(s): {err!r}")
        log.warning("%s: corrupt log, stopped reading: %r", p, err)
    finally:
        reader.stop()


def replay_log(
    path: Path | str,
    *,
    block_frames: int = 4096,
    block_ms: float | None = None,
    counters: BusCounters | None = None,
) -> Iterator[Frames]:
    """``Frames`` blocks of at most ``block_frames`` frames (and ``block_ms`` of log time if given)."""
    if block_frames < 1:
        raise ValueError("block_frames must be >= 1")
    c = counters if counters is not None else BusCounters()
    builder = BlockBuilder(c)
    span_us = None if block_ms is None else round(block_ms * 1000)
    for msg in iter_log_messages(path, c):
        if span_us is not None and len(builder):
            first = builder.first_ts_us()
            if first is not None and round(msg.timestamp * 1e6) - first >= span_us:
                yield builder.flush()
        builder.add(msg)
        if len(builder) >= block_frames:
            yield builder.flush()
    if len(builder):
        yield builder.flush()
    if c.bad_records:
        log.warning(
            "%s: dropped %d corrupt record(s), e.g. %s", path, c.bad_records, c.examples[:2]
        )


def read_log(path: Path | str) -> tuple[Frames, BusCounters]:
    """A whole log as one ``Frames`` block, with what was dropped."""
    counters = BusCounters()
    blocks = list(replay_log(path, block_frames=1 << 62, counters=counters))
    return concat_frames(blocks), counters


def concat_frames(blocks: list[Frames]) -> Frames:
    """Blocks joined in order; classic blocks are widened when any block carries CAN FD payloads."""
    if not blocks:
        return Frames(
            np.zeros(0, np.int64),
            np.zeros(0, np.uint32),
            np.zeros(0, bool),
            np.zeros(0, np.uint8),
            np.zeros((0, 8), np.uint8),
        )
    width = max(b.data.shape[1] for b in blocks)
    data = [np.pad(b.data, ((0, 0), (0, width - b.data.shape[1]))) for b in blocks]
    return Frames(
        np.concatenate([b.ts_us for b in blocks]),
        np.concatenate([b.can_id for b in blocks]),
        np.concatenate([b.extended for b in blocks]),
        np.concatenate([b.dlc for b in blocks]),
        np.concatenate(data),
    )


def frames_to_messages(frames: Frames, channel: int | str = 0) -> Iterator[can.Message]:
    """python-can messages for a block (tools and tests; not for hot paths)."""
    for ts, can_id, ext, dlc, row in zip(
        frames.ts_us.tolist(),
        frames.can_id.tolist(),
        frames.extended.tolist(),
        frames.dlc.tolist(),
        frames.data,
        strict=True,
    ):
        yield can.Message(
            timestamp=ts / 1e6,
            arbitration_id=can_id,
            is_extended_id=ext,
            is_fd=dlc > 8,
            dlc=dlc,
            data=bytes(row[:dlc]),
            channel=channel,
        )


def write_log(path: Path | str, frames: Frames, channel: int = 0) -> int:
    """Write frames to a log whose format follows the suffix (``.log``, ``.asc``, ``.blf``...).

    ASC keeps the start date only to the millisecond, so the first event is anchored on a whole
    millisecond: every frame's absolute time then survives the round trip to the microsecond.
    """
    p = Path(path)
    writer = can.Logger(p)
    try:
        if p.suffix.lower() == ".asc" and len(frames):
            writer.log_event("carpulse export", timestamp=int(frames.ts_us[0]) // 1000 / 1000)  # type: ignore[attr-defined]
        n = 0
        for msg in frames_to_messages(frames, channel):
            writer.on_message_received(msg)
            n += 1
    finally:
        writer.stop()
    return n
