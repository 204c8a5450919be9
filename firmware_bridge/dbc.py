"""DBC loading with clear errors, and the reference decoder built on cantools.

Decoded signals are named by VSS path: a mapping (DBC message, signal) -> VSS path where one is
known, otherwise ``Vehicle.Private.Dbc.<Message>.<Signal>`` (VSS's place for non-standard data).
The compiled batch decoder that replaces this one on hot paths must agree with it exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cantools
import cantools.database

from core.errors import ConfigError
from core.frames import Frames
from core.wire import Samples

log = logging.getLogger(__name__)

PRIVATE_PREFIX = "Vehicle.Private.Dbc"


def load_dbc(path: Path | str, *, strict: bool = True) -> cantools.database.can.Database:
    """Load a DBC file; a file that fails to parse raises ``ConfigError`` naming the file and why.

    With ``strict=False`` cantools keeps what is valid (overlapping signals, bad lengths...).
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"DBC file {p} does not exist")
    try:
        db = cantools.database.load_file(str(p), strict=strict)
    except Exception as err:  # cantools raises many unrelated types for bad files
        hint = ""
        if strict:
            try:
                cantools.database.load_file(str(p), strict=False)
            except Exception:
                hint = " (cantools cannot load it even with strict=False)"
            else:
                hint = " (strict=False / --no-strict loads what is valid)"
        raise ConfigError(f"DBC file {p} cannot be loaded: {err}{hint}") from err
    if not isinstance(db, cantools.database.can.Database):
        raise ConfigError(f"{p} is not a CAN database")
    return db


def private_path(message: str, signal: str) -> str:
    return f"{PRIVATE_PREFIX}.{message}.{signal}"


@dataclass
class DecodeStats:
    frames: int = 0
    decoded: int = 0
    unknown_id: int = 0
    short_dlc: int = 0
    failed: int = 0


class CantoolsDecoder:
    """Decode frames one by one with cantools (the reference; slow but obviously right)."""

    def __init__(
        self,
        db: cantools.database.can.Database,
        mapping: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.db = db
        self.mapping = dict(mapping or {})
        self._names: dict[str, int] = {}
        self._by_id = {(m.frame_id, bool(m.is_extended_frame)): m for m in db.messages}

    def signal_path(self, message: str, signal: str) -> str:
        return self.mapping.get((message, signal)) or private_path(message, signal)

    def decode(self, frames: Frames) -> tuple[Samples, DecodeStats]:
        stats = DecodeStats(frames=len(frames))
        index = self._names
        sig_l: list[int] = []
        ts_l: list[int] = []
        val_l: list[float] = []
        cache: dict[tuple[str, str], int] = {}
        for ts, can_id, ext, dlc, row in zip(
            frames.ts_us.tolist(),
            frames.can_id.tolist(),
            frames.extended.tolist(),
            frames.dlc.tolist(),
            frames.data,
            strict=True,
        ):
            msg = self._by_id.get((can_id, ext))
            if msg is None:
                stats.unknown_id += 1
                continue
            if dlc < msg.length:
                stats.short_dlc += 1
                continue
            try:
                values = msg.decode(bytes(row[:dlc]), decode_choices=False, scaling=True)
            except (cantools.database.DecodeError, ValueError, KeyError) as err:
                stats.failed += 1
                log.debug("frame 0x%x at %d: %s", can_id, ts, err)
                continue
            stats.decoded += 1
            for name, value in values.items():  # type: ignore[union-attr]
                key = (msg.name, name)
                idx = cache.get(key)
                if idx is None:
                    idx = index.setdefault(self.signal_path(msg.name, name), len(index))
                    cache[key] = idx
                sig_l.append(idx)
                ts_l.append(ts)
                val_l.append(float(value))  # type: ignore[arg-type]  # choices off: numbers only
        samples = Samples.from_columns(list(index), sig_l, ts_l, val_l)
        return samples, stats
