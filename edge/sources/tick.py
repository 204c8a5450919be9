"""Tick source: deterministic samples on a wall-clock grid, each one knowable after the fact.

Signal ``s`` of tick ``k`` is stamped ``k * period_us + s`` (so no two samples of a device share
a timestamp, and each is one InfluxDB point) with the value :func:`tick_value` ``(k, s)``. With
``journal = "file"`` every block's tick range is appended to that file before the block is
returned, so an evaluation knows exactly what the source produced, even across ``kill -9``
(``carpulse eval faults``). Ticks while the agent is not running are never produced.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from core.wire import Samples
from edge.sources.base import Source


def tick_names(signals: int) -> list[str]:
    return [f"Vehicle.Eval.Tick{i}" for i in range(signals)]


def tick_value(k: np.ndarray | int, sig: np.ndarray | int) -> np.ndarray:
    """The value of signal ``sig`` at tick ``k``: exact in a float64 and in line protocol."""
    return np.asarray((np.asarray(k) % 1_000_003) + np.asarray(sig) / 8.0, dtype=np.float64)


def read_journal(path: Path) -> list[tuple[int, int]]:
    """The ``(first, last)`` tick ranges a tick source wrote (inclusive); a torn last line is
    ignored (the source writes a line with one ``write``, so it only tears on a power cut)."""
    out: list[tuple[int, int]] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    lines = text.split("\n")[:-1]  # whatever follows the last newline is torn
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            out.append((int(parts[0]), int(parts[1])))
    return out


class TickSource(Source):
    """``signals`` signals at ``hz`` ticks per second, aligned to the wall clock."""

    kind = "tick"

    def __init__(
        self,
        name: str,
        *,
        signals: int = 4,
        hz: float = 20.0,
        journal: str | None = None,
        min_block_s: float = 0.05,
    ) -> None:
        super().__init__(name)
        if signals < 1 or hz <= 0:
            raise ValueError("tick source: signals must be >= 1 and hz > 0")
        self.signals, self.period_us = signals, round(1e6 / hz)
        if self.period_us < signals:
            raise ValueError("tick source: hz too high for that many signals")
        self.journal, self.min_block_s = journal, min_block_s
        self._names = tick_names(signals)
        self._fd: int | None = None
        self._next_k = 0

    def _open_internal(self) -> None:
        if self.journal is not None:
            self._fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._next_k = time.time_ns() // 1000 // self.period_us + 1

    def _read_internal(self, timeout: float) -> Samples | None:
        last_k = time.time_ns() // 1000 // self.period_us
        if last_k < self._next_k:
            time.sleep(min(timeout, self.min_block_s))
            return None
        k = np.arange(self._next_k, last_k + 1, dtype=np.int64)
        if self._fd is not None:  # before the block leaves the source: the journal is a superset
            os.write(self._fd, f"{self._next_k} {last_k}\n".encode())
        self._next_k = last_k + 1
        kk = np.repeat(k, self.signals)
        sig = np.tile(np.arange(self.signals, dtype=np.int32), len(k))
        return Samples.from_columns(
            self._names, sig, kk * self.period_us + sig, tick_value(kk, sig)
        )

    def _close_internal(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
