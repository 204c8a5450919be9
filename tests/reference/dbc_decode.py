"""Plain cantools, frame by frame: what ``CompiledDecoder`` must return (deliberately obvious, slow)."""

from __future__ import annotations

import math
from typing import Any

import cantools
import cantools.database

from core.frames import Frames
from firmware_bridge.dbc import DecodeStats, private_path

Record = tuple[str, int, float]


def reference_decode(
    db: cantools.database.can.Database,
    frames: Frames,
    *,
    allow_truncated: bool = False,
    mapping: dict[tuple[str, str], str] | None = None,
) -> tuple[list[Record], DecodeStats]:
    """``(path, ts_us, float(value))`` per decoded signal, in frame order and cantools' order."""
    by_key = {(m.frame_id, bool(m.is_extended_frame)): m for m in db.messages}
    stats = DecodeStats(frames=len(frames))
    out: list[Record] = []
    for i in range(len(frames)):
        msg = by_key.get((int(frames.can_id[i]), bool(frames.extended[i])))
        if msg is None:
            stats.unknown_id += 1
            continue
        dlc = int(frames.dlc[i])
        if dlc < msg.length:
            stats.short_dlc += 1
            if not allow_truncated:
                continue
        try:
            values: Any = msg.decode(
                bytes(frames.data[i, :dlc]),
                decode_choices=False,
                scaling=True,
                allow_truncated=allow_truncated,
            )
        except (cantools.database.DecodeError, ValueError, KeyError, OverflowError):
            stats.failed += 1
            continue
        stats.decoded += 1
        for name, value in values.items():
            path = (mapping or {}).get((msg.name, name)) or private_path(msg.name, name)
            out.append((path, int(frames.ts_us[i]), float(value)))
    return out, stats


def same_record(a: Record, b: Record) -> bool:
    """Equal names and timestamps, and values equal to the bit (any NaN equals any NaN)."""
    if a[0] != b[0] or a[1] != b[1]:
        return False
    if math.isnan(a[2]) and math.isnan(b[2]):
        return True
    return a[2] == b[2] and math.copysign(1.0, a[2]) == math.copysign(1.0, b[2])
