"""Usage-based oil life in the spirit of GM's oil-life monitor: engine revolutions weighted by oil temperature.

Each revolution wears the oil; a cold engine (fuel and water in the oil) and a very hot one wear it
faster. Life starts at 1.0 after an oil change and falls by ``weight(T) * revolutions / budget``;
a time limit (one year by default) caps it as GM's does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from core import kernel_flags
from models.maintenance.soa import SlotState, as_f64, check_slots

REV_BUDGET = 30e6  # ~15,000 km at 2,000 rpm and 60 km/h in normal use
MAX_GAP_S = 10.0  # longer gaps between samples are outages, not running time
COLD_C, HOT_C = 60.0, 110.0
COLD_WEIGHT = 2.0  # below COLD_C
HOT_SLOPE = 0.1  # per degC above HOT_C


@dataclass
class OilState(SlotState):
    life: np.ndarray  # float64 remaining share (1.0 after a change)
    revs: np.ndarray  # float64 revolutions since the change
    last_ts: np.ndarray  # float64 seconds (nan: no sample yet)
    changed_ts: np.ndarray  # float64 seconds of the last change

    @classmethod
    def empty(cls, n_slots: int, changed_ts: float = 0.0) -> OilState:
        return cls(
            np.ones(n_slots),
            np.zeros(n_slots),
            np.full(n_slots, np.nan),
            np.full(n_slots, changed_ts),
        )

    def reset(self, slots: np.ndarray, ts: float) -> None:
        """An oil change on these slots at ``ts``."""
        self.life[slots] = 1.0
        self.revs[slots] = 0.0
        self.changed_ts[slots] = ts


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _temp_weight(t: float) -> float:  # pragma: no cover
    if t < COLD_C:
        return COLD_WEIGHT
    if t > HOT_C:
        return 1.0 + HOT_SLOPE * (t - HOT_C)
    return 1.0


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _update_oil(
    slot: np.ndarray,
    ts: np.ndarray,
    rpm: np.ndarray,
    oil_c: np.ndarray,
    budget: float,
    max_gap: float,
    life: np.ndarray,
    revs: np.ndarray,
    last_ts: np.ndarray,
    out: np.ndarray,
) -> int:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    bad = 0
    for i in range(len(slot)):
        k = slot[i]
        if np.isnan(ts[i]) or (not np.isnan(last_ts[k]) and ts[i] < last_ts[k]):
            bad += 1
            out[i] = life[k]
            continue
        if not np.isnan(last_ts[k]) and not np.isnan(rpm[i]) and rpm[i] > 0.0:
            dt = min(ts[i] - last_ts[k], max_gap)
            r = rpm[i] / 60.0 * dt  # revolutions over the interval ending at this sample
            w = 1.0 if np.isnan(oil_c[i]) else _temp_weight(oil_c[i])
            revs[k] += r
            life[k] = max(life[k] - w * r / budget, 0.0)
        last_ts[k] = ts[i]
        out[i] = life[k]
    return bad


def update_oil(
    state: OilState,
    slot: np.ndarray,
    ts_s: np.ndarray,
    rpm: np.ndarray,
    oil_temp_c: np.ndarray,
    budget: float = REV_BUDGET,
) -> tuple[np.ndarray, int]:
    """Feed engine samples (time order per slot); returns oil life after each sample and the drop count."""
    s = check_slots(slot, len(state.life))
    n = len(s)
    out = np.empty(n, dtype=np.float64)
    bad = _update_oil(
        s,
        as_f64(ts_s, n, "ts_s"),
        as_f64(rpm, n, "rpm"),
        as_f64(oil_temp_c, n, "oil_temp_c"),
        float(budget),
        MAX_GAP_S,
        state.life,
        state.revs,
        state.last_ts,
        out,
    )
    return out, int(bad)


def oil_life(state: OilState, now_s: float, max_days: float = 365.0) -> np.ndarray:
    """Remaining life per slot: the usage estimate, capped by the calendar limit."""
    by_time = 1.0 - (now_s - state.changed_ts) / (max_days * 86400.0)
    return np.clip(np.minimum(state.life, by_time), 0.0, 1.0)  # type: ignore[no-any-return]
