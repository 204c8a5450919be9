"""Sequence numbers that survive restarts, and a boot id per process start.

The counter reserves blocks on disk (fsync'd) so a crash never reuses a number: after a restart
the agent continues above the last reserved block, leaving a gap, never a repeat.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from core.topics import check_device_id

BLOCK = 1024


class SequenceCounter:
    """``next()`` returns strictly increasing numbers across restarts of the same device."""

    def __init__(self, state_dir: Path, device_id: str) -> None:
        self.path = Path(state_dir) / f"{check_device_id(device_id)}.seq"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._next = int(self.path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            self._next = 0
        self._reserved = self._next
        self.boot_id = uuid.uuid4().hex[:16]

    def _reserve(self) -> None:
        self._reserved = self._next + BLOCK
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(str(self._reserved))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        # The rename itself lives in the directory: without this a power cut may bring back the
        # previous block's file and the next start would hand out numbers again.
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def next(self) -> int:
        if self._next >= self._reserved:
            self._reserve()
        value = self._next
        self._next += 1
        return value
