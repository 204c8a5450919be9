"""The CAN intrusion detector's numba kernels, with explicit signatures (compiled when imported).

``_slots`` maps id keys to profile slots, ``_score`` flags each frame of a block with a reason
bitmask (``models.ids.detector`` documents the bits and wraps both). Explicit signatures so the
edge agent's ahead-of-time list can name them as they are; the arrays are any layout (``A``).
``core.jit.njit``: with a current ``carpulse edge build-kernels`` build loaded, the agent runs
these two compiled ahead of time (``edge.aot.AOT_KERNELS``, same signatures) and never imports
numba; everywhere else (``carpulse ids``, the evaluation) numba compiles them. No fastmath
(``kernel_flags.EXACT_MATH``): pycc compiles without it for a generic CPU, and the leaky rate counter
(``count * exp(..) + 1``) fused into an FMA by the JIT would differ from the build in its last bits
(the learned ``rate_max`` and the state, not the flags, on the gt350 logs); exact math gives both
the same bits.
"""

from __future__ import annotations

import numpy as np

from core import kernel_flags
from core.jit import njit

SLOTS_SIG = "void(uint64[:], uint64[:], int64[:])"
SCORE_SIG = (
    "void(int64[:], int64[:], uint8[:], uint8[:, :], uint64[:], uint8[:, :], uint8[:, :], "
    "int64[:], float64[:], float64[:], float64[:], float64, int64[:], float64[:], int64[:], "
    "int64, boolean, uint8[:])"
)


@njit(SLOTS_SIG, cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _slots(keys: np.ndarray, known: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    k = len(known)
    for i in range(len(keys)):
        j = np.searchsorted(known, keys[i])
        out[i] = j if j < k and known[j] == keys[i] else -1


@njit(SCORE_SIG, cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _score(
    ts: np.ndarray,
    slot: np.ndarray,
    dlc: np.ndarray,
    data: np.ndarray,
    dlc_mask: np.ndarray,
    frozen_mask: np.ndarray,
    frozen_val: np.ndarray,
    gap_min: np.ndarray,
    tau: np.ndarray,
    rate_max: np.ndarray,
    period: np.ndarray,
    rate_gap: float,
    last_ts: np.ndarray,
    count: np.ndarray,
    count_ts: np.ndarray,
    min_flips: int,
    learn: bool,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    nb = data.shape[1]
    for i in range(len(ts)):
        s = slot[i]
        if s < 0:
            out[i] = 1  # UNKNOWN_ID
            continue
        f = 0
        if (dlc_mask[s] >> np.uint64(min(dlc[i], 63))) & np.uint64(1) == 0:
            f |= 2
        flips = 0
        for b in range(min(nb, 8)):
            v = np.int64((data[i, b] ^ frozen_val[s, b]) & frozen_mask[s, b])
            while v:  # popcount
                v &= v - 1
                flips += 1
        if flips >= min_flips:
            f |= 4
        t = ts[i]
        # leaky counter: ~ tau / period in steady state, doubles when frames are injected
        c = count[s] * np.exp(-(t - count_ts[s]) / tau[s]) + 1.0 if count_ts[s] >= 0 else 1.0
        count[s] = c
        count_ts[s] = t
        early = last_ts[s] >= 0 and t - last_ts[s] < rate_gap * period[s]
        if learn:
            if c > rate_max[s]:
                rate_max[s] = c
        elif c > rate_max[s] and early:
            # too many frames lately, and this one is off its sender's schedule: once the
            # attack stops, the real sender's on-time frames are not flagged any more
            f |= 16
        if not learn and last_ts[s] >= 0 and t - last_ts[s] < gap_min[s]:
            f |= 8
        if f == 0 or learn:
            last_ts[s] = t  # a flagged frame does not move the schedule of the real sender
        out[i] = f
