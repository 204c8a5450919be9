"""Service due: date and distance of the next service from odometer series and usage severity.

Daily distance statistics (mean, variance over calendar days, parked days count as zero) come
from a numba kernel over odometer samples; trip summaries give a severity share (short trips,
cold starts, idling, high load) that shortens the distance interval as makers' "severe service"
schedules do. The distance limit and the time limit are both applied: whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from core import kernel_flags
from models.maintenance.soa import SlotState, as_f64, check_slots

SHORT_TRIP_KM = 8.0  # trips under ~8 km never warm the oil up (most makers' severe-use wording)
Z90 = 1.6448536269514722  # two-sided 90 % band


@dataclass
class UsageState(SlotState):
    day: np.ndarray  # int64 current calendar day (-1: no sample yet)
    day_start_odo: np.ndarray  # float64 odometer at the first sample of the current day
    last_odo: np.ndarray  # float64
    last_hours: np.ndarray  # float64 engine hours at the last sample
    n_days: np.ndarray  # int64 closed days (Welford)
    mean_km: np.ndarray  # float64 mean daily distance over closed days
    m2_km: np.ndarray  # float64 Welford sum of squares
    trips: np.ndarray  # float64 counts and sums from trip summaries
    short_trips: np.ndarray
    cold_starts: np.ndarray
    engine_min: np.ndarray
    idle_min: np.ndarray
    high_load_min: np.ndarray

    @classmethod
    def empty(cls, n_slots: int) -> UsageState:
        z = np.zeros(n_slots, dtype=np.float64)
        return cls(
            np.full(n_slots, -1, np.int64),
            z.copy(),
            z.copy(),
            z.copy(),
            np.zeros(n_slots, np.int64),
            *(z.copy() for _ in range(8)),
        )


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _welford(
    k: int, x: float, n: np.ndarray, mean: np.ndarray, m2: np.ndarray
) -> None:  # pragma: no cover
    n[k] += 1
    d = x - mean[k]
    mean[k] += d / n[k]
    m2[k] += d * (x - mean[k])


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _update_usage(
    slot: np.ndarray,
    day: np.ndarray,
    odo: np.ndarray,
    hours: np.ndarray,
    cur_day: np.ndarray,
    day_start: np.ndarray,
    last_odo: np.ndarray,
    last_hours: np.ndarray,
    n: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
) -> int:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    bad = 0
    for i in range(len(slot)):
        k = slot[i]
        if np.isnan(odo[i]) or (cur_day[k] >= 0 and (day[i] < cur_day[k] or odo[i] < last_odo[k])):
            bad += 1  # out of order, or an odometer going backwards: dropped and counted
            continue
        if cur_day[k] < 0:
            cur_day[k] = day[i]
            day_start[k] = odo[i]
        elif day[i] > cur_day[k]:
            # the day closes with the distance up to this first reading of a later day;
            # days without any reading in between were parked days: zero distance
            _welford(k, odo[i] - day_start[k], n, mean, m2)
            for _ in range(day[i] - cur_day[k] - 1):
                _welford(k, 0.0, n, mean, m2)
            cur_day[k] = day[i]
            day_start[k] = odo[i]
        last_odo[k] = odo[i]
        if not np.isnan(hours[i]):
            last_hours[k] = hours[i]
    return bad


def update_usage(
    state: UsageState,
    slot: np.ndarray,
    day: np.ndarray,
    odo_km: np.ndarray,
    engine_hours: np.ndarray,
) -> int:
    """Feed odometer/engine-hours readings (time order per slot); returns how many were dropped."""
    s = check_slots(slot, len(state.day))
    n = len(s)
    d = np.ascontiguousarray(day, dtype=np.int64)
    if d.shape != (n,):
        raise ValueError(f"day must have shape ({n},), got {d.shape}")
    bad: int = _update_usage(
        s,
        d,
        as_f64(odo_km, n, "odo_km"),
        as_f64(engine_hours, n, "engine_hours"),
        state.day,
        state.day_start_odo,
        state.last_odo,
        state.last_hours,
        state.n_days,
        state.mean_km,
        state.m2_km,
    )
    return bad


def add_trips(
    state: UsageState,
    slot: np.ndarray,
    km: np.ndarray,
    minutes: np.ndarray,
    idle_minutes: np.ndarray,
    high_load_minutes: np.ndarray,
    cold_start: np.ndarray,
) -> None:
    """Add trip summaries (one row per trip) to the severity counters."""
    s = check_slots(slot, len(state.day))
    n = len(s)
    np.add.at(state.trips, s, 1.0)
    np.add.at(state.short_trips, s, (as_f64(km, n, "km") < SHORT_TRIP_KM).astype(np.float64))
    np.add.at(state.cold_starts, s, np.asarray(cold_start, dtype=bool).astype(np.float64))
    np.add.at(state.engine_min, s, as_f64(minutes, n, "minutes"))
    np.add.at(state.idle_min, s, as_f64(idle_minutes, n, "idle_minutes"))
    np.add.at(state.high_load_min, s, as_f64(high_load_minutes, n, "high_load_minutes"))


def severity(state: UsageState) -> np.ndarray:
    """Share of severe use in [0, 1]: the mean of the short-trip, cold-start, idle and high-load shares."""
    trips = np.maximum(state.trips, 1.0)
    eng = np.maximum(state.engine_min, 1e-9)
    shares = np.stack(
        [
            state.short_trips / trips,
            state.cold_starts / trips,
            np.where(state.engine_min > 0, state.idle_min / eng, 0.0),
            np.where(state.engine_min > 0, state.high_load_min / eng, 0.0),
        ]
    )
    return np.clip(shares.mean(axis=0), 0.0, 1.0)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Schedule:
    """Service every ``km`` or ``days``, whichever first; fully severe use shortens ``km`` by ``severe_factor``."""

    km: float = 15_000.0
    days: float = 365.0
    severe_factor: float = 0.5
    engine_hours: float = np.inf  # e.g. 500 h for vehicles serviced by engine hours


@dataclass
class ServiceDue:
    days: np.ndarray  # days from ``today`` to the service (central estimate)
    days_lo: np.ndarray  # 90 % band
    days_hi: np.ndarray
    km: np.ndarray  # odometer at the service (central estimate)
    km_lo: np.ndarray
    km_hi: np.ndarray
    limit: np.ndarray  # "km", "days" or "hours": which limit comes first
    severity: np.ndarray


def predict_service(
    state: UsageState,
    schedule: Schedule,
    today: np.ndarray | int,
    last_service_day: np.ndarray,
    last_service_odo: np.ndarray,
    last_service_hours: np.ndarray | None = None,
) -> ServiceDue:
    """Next service per slot. Daily distance is treated as independent days with the observed
    mean and variance, so covering R km takes about R/mean days with a standard deviation of
    sqrt(R/mean) * sd / mean days (normal approximation); the band is two-sided 90 %.
    """
    n = len(state.day)
    today_a = np.broadcast_to(np.asarray(today, dtype=np.float64), (n,))
    sev = severity(state)
    eff_km = schedule.km * (1.0 - sev * (1.0 - schedule.severe_factor))
    mu = np.maximum(state.mean_km, 1e-9)
    var = np.where(state.n_days > 1, state.m2_km / np.maximum(state.n_days - 1, 1), 0.0)
    sd = np.sqrt(var)
    remaining_km = np.maximum(eff_km - (state.last_odo - last_service_odo), 0.0)
    d_km = remaining_km / mu
    d_km_sd = np.sqrt(d_km) * sd / mu
    d_time = np.maximum(last_service_day + schedule.days - today_a, 0.0)
    d_hours = np.full(n, np.inf)
    if last_service_hours is not None and np.isfinite(schedule.engine_hours):
        # engine hours accrue at the same pace as distance in this model (hours per km so far)
        used_h = state.last_hours - last_service_hours
        used_km = np.maximum(state.last_odo - last_service_odo, 1e-9)
        d_hours = (
            np.maximum(schedule.engine_hours - used_h, 0.0)
            * (used_km / np.maximum(used_h, 1e-9))
            / mu
        )
    days = np.minimum(np.minimum(d_km, d_time), d_hours)
    by_km = (d_km <= d_time) & (d_km <= d_hours)
    limit = np.where(by_km, "km", np.where(d_time <= d_hours, "days", "hours"))
    lo = np.where(by_km, np.maximum(d_km - Z90 * d_km_sd, 0.0), days)
    hi = np.where(by_km, np.minimum(d_km + Z90 * d_km_sd, d_time), days)
    km_sd = np.sqrt(days) * sd
    km = state.last_odo + mu * days
    km_lo = np.where(by_km, last_service_odo + eff_km, np.maximum(km - Z90 * km_sd, state.last_odo))
    km_hi = np.where(by_km, last_service_odo + eff_km, km + Z90 * km_sd)
    km = np.where(by_km, last_service_odo + eff_km, km)
    return ServiceDue(days, lo, hi, km, km_lo, km_hi, limit, sev)
