"""The live state's compiled scan: each signal's newest finite row of a batch in one pass.

``stream.state.latest_per_signal`` calls it; the plain loop it must equal is in
``tests/unit/stream/test_state.py`` (hypothesis). Imported at the first batch, not with
``stream.state``: numba loads then (``stream.partition_models.warm_up`` compiles it first).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from core import kernel_flags


@njit(cache=kernel_flags.CACHE, nogil=True)
def _latest_rows(
    sig: np.ndarray, ts: np.ndarray, value: np.ndarray, last: np.ndarray
) -> int:  # pragma: no cover - compiled
    n = len(last)
    for r in range(len(sig)):
        if not np.isfinite(value[r]):
            continue
        s = sig[r]
        if s < 0 or s >= n:  # no bounds checks in compiled code: refuse, never write past
            return r
        b = last[s]
        if b < 0 or ts[r] >= ts[b]:  # ties: the later row wins
            last[s] = r
    return -1


def latest_rows(sig: np.ndarray, ts: np.ndarray, value: np.ndarray, n_signals: int) -> np.ndarray:
    """Per signal ``0..n_signals - 1``, the row of its newest finite value (ties: the later
    row), or -1 where it has none. A signal index out of that range raises IndexError."""
    last = np.full(n_signals, -1, np.int64)
    bad = _latest_rows(
        np.ascontiguousarray(sig, np.int64),
        np.ascontiguousarray(ts, np.int64),
        np.ascontiguousarray(value, np.float64),
        last,
    )
    if bad >= 0:
        raise IndexError(f"row {bad}: signal index {int(sig[bad])} not in 0..{n_signals - 1}")
    return last
