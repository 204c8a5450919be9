"""12 V battery health from cranking dips and resting voltage; EV pack cell spread and state-of-health trend.

12 V: a sample below ``CRANK_V`` starts a cranking dip whose minimum is kept (a healthy battery
stays above ~10 V while cranking; the classic load test fails below 9.6 V); resting voltage is
read once the engine has been off for ``REST_S`` and mapped to state of charge with the usual
flooded lead-acid table (12.65 V full, 11.9 V flat).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from core import kernel_flags
from models.maintenance.soa import SlotState, as_f64, check_slots

CRANK_V = 11.0
RUNNING_V = 13.2  # the alternator is charging: the engine runs
REST_S = 1800.0
CRANK_GOOD_V, CRANK_BAD_V = 10.5, 9.6
SOC_V = np.array([11.89, 12.06, 12.24, 12.45, 12.65])
SOC_PCT = np.array([0.0, 25.0, 50.0, 75.0, 100.0])
STEADY_V = 0.05  # a resting reading within this of the previous one
EWMA = 0.3  # weight of the newest crank dip / resting reading


@dataclass
class BatteryState(SlotState):
    in_crank: np.ndarray  # bool
    crank_min: np.ndarray  # float64 minimum of the dip in progress
    crank_ewma: np.ndarray  # float64 smoothed dip minimum (nan: none yet)
    cranks: np.ndarray  # int64
    off_since: np.ndarray  # float64 seconds the engine was last seen stopping (nan: unknown)
    rest_ewma: np.ndarray  # float64 smoothed resting voltage (nan: none yet)
    last_v: np.ndarray  # float64 previous reading (a resting reading must be steady)

    @classmethod
    def empty(cls, n_slots: int) -> BatteryState:
        nan = np.full(n_slots, np.nan)
        return cls(
            np.zeros(n_slots, bool),
            nan.copy(),
            nan.copy(),
            np.zeros(n_slots, np.int64),
            nan.copy(),
            nan.copy(),
            nan.copy(),
        )


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _ewma(old: float, new: float, a: float) -> float:  # pragma: no cover
    return new if np.isnan(old) else (1.0 - a) * old + a * new


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _update_battery(
    slot: np.ndarray,
    ts: np.ndarray,
    volts: np.ndarray,
    crank_v: float,
    running_v: float,
    rest_s: float,
    a: float,
    in_crank: np.ndarray,
    crank_min: np.ndarray,
    crank_ewma: np.ndarray,
    cranks: np.ndarray,
    off_since: np.ndarray,
    rest_ewma: np.ndarray,
    last_v: np.ndarray,
) -> int:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    bad = 0
    for i in range(len(slot)):
        k = slot[i]
        v = volts[i]
        if np.isnan(v) or v < 0.0 or v > 20.0:
            bad += 1
            continue
        prev = last_v[k]
        last_v[k] = v
        if v < crank_v:
            if not in_crank[k]:
                in_crank[k] = True
                crank_min[k] = v
            elif v < crank_min[k]:
                crank_min[k] = v
            continue
        if in_crank[k]:  # the dip is over: keep its minimum
            in_crank[k] = False
            crank_ewma[k] = _ewma(crank_ewma[k], crank_min[k], a)
            cranks[k] += 1
        if v >= running_v:
            off_since[k] = np.nan
        else:
            if np.isnan(off_since[k]):
                off_since[k] = ts[i]
            elif ts[i] - off_since[k] >= rest_s and abs(v - prev) <= STEADY_V:
                # steady only: the key turning on loads the battery just before a crank
                rest_ewma[k] = _ewma(rest_ewma[k], v, a)
    return bad


def update_battery(
    state: BatteryState, slot: np.ndarray, ts_s: np.ndarray, volts: np.ndarray
) -> int:
    """Feed 12 V readings (time order per slot, fast enough to see a crank: >= 10 Hz); returns drops."""
    s = check_slots(slot, len(state.cranks))
    n = len(s)
    bad: int = _update_battery(
        s,
        as_f64(ts_s, n, "ts_s"),
        as_f64(volts, n, "volts"),
        CRANK_V,
        RUNNING_V,
        REST_S,
        EWMA,
        state.in_crank,
        state.crank_min,
        state.crank_ewma,
        state.cranks,
        state.off_since,
        state.rest_ewma,
        state.last_v,
    )
    return bad


def battery_health(state: BatteryState) -> dict[str, np.ndarray]:
    """Per slot: state of charge (%) from resting voltage, crank score and health in [0, 1] (nan: unknown)."""
    soc = np.where(np.isnan(state.rest_ewma), np.nan, np.interp(state.rest_ewma, SOC_V, SOC_PCT))
    crank = np.clip((state.crank_ewma - CRANK_BAD_V) / (CRANK_GOOD_V - CRANK_BAD_V), 0.0, 1.0)
    health = np.fmin(crank, soc / 100.0)  # fmin ignores whichever is unknown
    return {"soc_pct": soc, "crank_score": crank, "health": health, "replace": health < 0.25}


# ----- EV pack -------------------------------------------------------------------------------


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _cell_spread(cells: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    for i in range(cells.shape[0]):
        lo = np.inf
        hi = -np.inf
        for j in range(cells.shape[1]):
            v = cells[i, j]
            if np.isnan(v):
                continue  # a cell not reported in this frame
            lo = min(lo, v)
            hi = max(hi, v)
        out[i] = hi - lo if hi >= lo else np.nan


def cell_spread(cell_volts: np.ndarray) -> np.ndarray:
    """Max minus min cell voltage of each row (nan cells ignored; nan if the row has none)."""
    c = np.ascontiguousarray(cell_volts, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"cell_volts must be (samples, cells), got shape {c.shape}")
    out = np.empty(c.shape[0], dtype=np.float64)
    _cell_spread(c, out)
    return out


@dataclass
class PackState(SlotState):
    spread_ewma: np.ndarray  # float64 volts
    n: np.ndarray  # float64 SoH readings: running sums for a least-squares line
    st: np.ndarray
    sy: np.ndarray
    stt: np.ndarray
    sty: np.ndarray

    @classmethod
    def empty(cls, n_slots: int) -> PackState:
        z = np.zeros(n_slots)
        return cls(np.full(n_slots, np.nan), z.copy(), z.copy(), z.copy(), z.copy(), z.copy())


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _update_pack(
    slot: np.ndarray,
    spread: np.ndarray,
    day: np.ndarray,
    soh: np.ndarray,
    a: float,
    spread_ewma: np.ndarray,
    n: np.ndarray,
    st: np.ndarray,
    sy: np.ndarray,
    stt: np.ndarray,
    sty: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    for i in range(len(slot)):
        k = slot[i]
        if not np.isnan(spread[i]):
            spread_ewma[k] = _ewma(spread_ewma[k], spread[i], a)
        if not np.isnan(soh[i]):
            n[k] += 1.0
            st[k] += day[i]
            sy[k] += soh[i]
            stt[k] += day[i] * day[i]
            sty[k] += day[i] * soh[i]


def update_pack(
    state: PackState,
    slot: np.ndarray,
    cell_volts: np.ndarray,
    day: np.ndarray,
    soh_pct: np.ndarray,
    alpha: float = 0.1,
) -> np.ndarray:
    """Feed pack samples (cell voltages, and SoH % where the BMS reports it, else nan); returns spreads."""
    s = check_slots(slot, len(state.n))
    k = len(s)
    spread = cell_spread(cell_volts)
    if spread.shape != (k,):
        raise ValueError(f"cell_volts has {spread.shape[0]} rows for {k} slots")
    _update_pack(
        s,
        spread,
        as_f64(day, k, "day"),
        as_f64(soh_pct, k, "soh_pct"),
        float(alpha),
        state.spread_ewma,
        state.n,
        state.st,
        state.sy,
        state.stt,
        state.sty,
    )
    return spread


def soh_trend(state: PackState, end_of_life_pct: float = 70.0) -> dict[str, np.ndarray]:
    """Least-squares SoH line per slot: slope (%/year), and the day it reaches ``end_of_life_pct``."""
    n = state.n
    den = n * state.stt - state.st**2
    ok = (n >= 2) & (den > 0)
    slope = np.where(ok, (n * state.sty - state.st * state.sy) / np.where(ok, den, 1.0), np.nan)
    icpt = np.where(ok, (state.sy - slope * state.st) / np.where(ok, n, 1.0), np.nan)
    eol = np.where(
        ok & (slope < 0), (end_of_life_pct - icpt) / np.where(slope < 0, slope, -1.0), np.inf
    )
    return {"slope_pct_per_year": slope * 365.25, "intercept_pct": icpt, "end_of_life_day": eol}
