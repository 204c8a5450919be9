"""C-MAPSS text files (train, test, RUL) read into arrays; bad rows are counted and named, never raised."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import SourceUnavailableError

log = logging.getLogger(__name__)

N_COLUMNS = 26
# Sensors that move in FD001 (the others are constant or nearly so at one operating condition).
SENSORS = (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)
SENSOR_COLUMNS = [4 + s for s in SENSORS]  # 1-based sensor k is 0-based column 4 + k
MAX_REPORTED = 5


@dataclass
class Series:
    """Rows of run-to-failure (train) or truncated (test) series, sorted by unit then cycle."""

    unit: np.ndarray  # int64 (n,)
    cycle: np.ndarray  # int64 (n,)
    sensors: np.ndarray  # float64 (n, len(SENSORS))
    bad_rows: int = 0
    examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.unit)

    def units(self) -> np.ndarray:
        return np.unique(self.unit)

    def select(self, mask: np.ndarray) -> Series:
        return Series(self.unit[mask], self.cycle[mask], self.sensors[mask])


def read_series(path: Path | str) -> Series:
    """Read a ``train_FD00x.txt``/``test_FD00x.txt`` file (26 space-separated numbers a row)."""
    p = Path(path)
    if not p.is_file():
        raise SourceUnavailableError(f"C-MAPSS file {p} does not exist")
    rows: list[list[float]] = []
    bad: list[str] = []
    nbad = 0
    with open(p, encoding="ascii", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            why = ""
            if len(parts) != N_COLUMNS:
                why = f"expected {N_COLUMNS} columns, got {len(parts)}"
            else:
                try:
                    vals = [float(v) for v in parts]
                except ValueError as err:
                    why = f"not a number ({err})"
                else:
                    if not all(np.isfinite(vals)):
                        why = "non-finite value"
            if why:
                nbad += 1
                if len(bad) < MAX_REPORTED:
                    bad.append(f"{p}:{lineno}: {why}")
                continue
            rows.append(vals)
    if nbad:
        log.warning("%s: dropped %d bad row(s), e.g. %s", p, nbad, "; ".join(bad[:2]))
    a = np.asarray(rows, dtype=np.float64).reshape(-1, N_COLUMNS)
    order = np.lexsort((a[:, 1], a[:, 0]))
    a = a[order]
    return Series(
        a[:, 0].astype(np.int64),
        a[:, 1].astype(np.int64),
        np.ascontiguousarray(a[:, SENSOR_COLUMNS]),
        nbad,
        bad,
    )


def read_rul(path: Path | str) -> np.ndarray:
    """Read ``RUL_FD00x.txt``: one true remaining life per test unit, in unit order."""
    p = Path(path)
    if not p.is_file():
        raise SourceUnavailableError(f"C-MAPSS RUL file {p} does not exist")
    out: list[float] = []
    with open(p, encoding="ascii", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            try:
                out.append(float(text.split()[0]))
            except ValueError as err:
                raise SourceUnavailableError(f"{p}:{lineno}: RUL is not a number ({err})") from err
    return np.asarray(out, dtype=np.float64)


def rul_targets(series: Series, cap: float) -> np.ndarray:
    """Run-to-failure RUL of every row (last cycle of a unit = 0), capped at ``cap``."""
    last = np.zeros(int(series.unit.max()) + 1 if len(series) else 1, dtype=np.int64)
    np.maximum.at(last, series.unit, series.cycle)
    return np.minimum(last[series.unit] - series.cycle, cap).astype(np.float64)


def last_rows(unit: np.ndarray) -> np.ndarray:
    """Index of the last row of each unit (rows contiguous per unit)."""
    if len(unit) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[unit[1:] != unit[:-1], True])
