"""Trips (ignition and motion segmentation) and daily aggregates per vehicle slot: one numba pass.

A trip starts at the first sample with the engine turning (rpm > 0) or the vehicle moving
(speed > 1 km/h) and ends once both have stayed off for ``END_S`` seconds (it ends when they
went off), or at a data gap longer than ``GAP_S``. Between samples the last speed holds (step
interpolation, capped at ``STEP_CAP_S``): distance is its integral, idle time is engine on and
not moving, driving time is moving. Harsh braking/acceleration is a speed change faster than
``HARSH_BRAKE_MS2``/``HARSH_ACCEL_MS2`` between samples at most ``HARSH_DT_S`` apart (at most one
per ``HARSH_REFRACTORY_S``). Fuel and traction-battery energy used are the sums of drops of the
level signals in percent (a refuel or a charge rises and is not counted). Days are UTC calendar
days of source time; a day closes with the first sample of a later day.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from numba import njit

from core import kernel_flags
from models.state import SlotState

K_SPEED, K_RPM, K_FUEL, K_ENERGY = 0, 1, 2, 3
SIGNAL_KIND: Final[dict[str, int]] = {
    "Vehicle.Speed": K_SPEED,
    "Vehicle.Powertrain.CombustionEngine.Speed": K_RPM,
    "Vehicle.Powertrain.FuelSystem.RelativeLevel": K_FUEL,
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": K_ENERGY,
}
END_S: Final = 60.0
GAP_S: Final = 300.0
STEP_CAP_S: Final = 10.0
MOVING_KMH: Final = 1.0
HARSH_BRAKE_MS2: Final = -3.5
HARSH_ACCEL_MS2: Final = 3.0
HARSH_DT_S: Final = 3.0
HARSH_REFRACTORY_S: Final = 3.0
DAY_US: Final = 86_400_000_000

# per-slot accumulators: trip (T_*) and day (D_*) share the layout of ACC
ACC: Final = (
    "dist_km",
    "drive_s",
    "idle_s",
    "fuel_pct",
    "energy_pct",
    "harsh_brake",
    "harsh_accel",
)
N_ACC: Final = len(ACC)
TRIP_FIELDS: Final = ("start_us", "end_us", *ACC)
DAY_FIELDS: Final = ("day", "trips", *ACC)


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _trip_loop(
    slot: np.ndarray,
    ts: np.ndarray,
    kind: np.ndarray,
    value: np.ndarray,
    ints: np.ndarray,  # (n_slots, 6) int64: in_trip, start, last_ts, stop_since, day, last_harsh
    last: np.ndarray,  # (n_slots, 4) float64: last speed, rpm, fuel, energy (NaN: none yet)
    trip_acc: np.ndarray,  # (n_slots, N_ACC)
    day_acc: np.ndarray,  # (n_slots, N_ACC)
    day_trips: np.ndarray,  # (n_slots,) int64
    out_trip_slot: np.ndarray,
    out_trip: np.ndarray,  # (n, 2 + N_ACC)
    out_day_slot: np.ndarray,
    out_day: np.ndarray,  # (n, 2 + N_ACC)
    counts: np.ndarray,  # [trips, days, dropped]
) -> None:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    for i in range(slot.shape[0]):
        k = slot[i]
        t = ts[i]
        v = value[i]
        if t < ints[k, 2] or not np.isfinite(v):
            counts[2] += 1  # out of order or not a number: dropped and counted
            continue
        d = t // DAY_US
        if ints[k, 4] >= 0 and d > ints[k, 4]:
            j = counts[1]
            out_day_slot[j] = k
            out_day[j, 0] = ints[k, 4]
            out_day[j, 1] = day_trips[k]
            for a in range(N_ACC):
                out_day[j, 2 + a] = day_acc[k, a]
                day_acc[k, a] = 0.0
            day_trips[k] = 0
            counts[1] = j + 1
        ints[k, 4] = d
        dt = (t - ints[k, 2]) / 1e6 if ints[k, 2] >= 0 else 0.0
        if ints[k, 0] == 1 and dt > GAP_S:
            end = ints[k, 3] if ints[k, 3] >= 0 else ints[k, 2]
            j = counts[0]
            out_trip_slot[j] = k
            out_trip[j, 0] = ints[k, 1]
            out_trip[j, 1] = end
            for a in range(N_ACC):
                out_trip[j, 2 + a] = trip_acc[k, a]
            counts[0] = j + 1
            ints[k, 0] = 0
            last[k, 0] = np.nan
            last[k, 1] = np.nan
        if ints[k, 0] == 1 and dt <= GAP_S:
            step = min(dt, STEP_CAP_S)
            sp = last[k, 0]
            rpm = last[k, 1]
            moving = sp > MOVING_KMH
            add_dist = sp * step / 3600.0 if moving else 0.0
            add_drive = step if moving else 0.0
            add_idle = step if (not moving and rpm > 0.0) else 0.0
            trip_acc[k, 0] += add_dist
            day_acc[k, 0] += add_dist
            trip_acc[k, 1] += add_drive
            day_acc[k, 1] += add_drive
            trip_acc[k, 2] += add_idle
            day_acc[k, 2] += add_idle
        c = kind[i]
        if c == K_SPEED:
            prev = last[k, 0]
            if np.isfinite(prev) and 0.0 < dt <= HARSH_DT_S:
                acc = (v - prev) / 3.6 / dt
                if t - ints[k, 5] >= HARSH_REFRACTORY_S * 1e6:
                    if acc <= HARSH_BRAKE_MS2:
                        trip_acc[k, 5] += ints[k, 0]
                        day_acc[k, 5] += 1.0
                        ints[k, 5] = t
                    elif acc >= HARSH_ACCEL_MS2:
                        trip_acc[k, 6] += ints[k, 0]
                        day_acc[k, 6] += 1.0
                        ints[k, 5] = t
            last[k, 0] = v
        elif c == K_RPM:
            last[k, 1] = v
        else:
            col = 2 if c == K_FUEL else 3
            prev = last[k, col]
            if np.isfinite(prev) and v < prev:
                trip_acc[k, 1 + col] += prev - v
                day_acc[k, 1 + col] += prev - v
            last[k, col] = v
        active = last[k, 1] > 0.0 or last[k, 0] > MOVING_KMH
        if ints[k, 0] == 0 and active:
            ints[k, 0] = 1
            ints[k, 1] = t
            ints[k, 3] = -1
            for a in range(N_ACC):
                trip_acc[k, a] = 0.0
            day_trips[k] += 1
        elif ints[k, 0] == 1 and not active:
            if ints[k, 3] < 0:
                ints[k, 3] = t
            elif (t - ints[k, 3]) / 1e6 >= END_S:
                j = counts[0]
                out_trip_slot[j] = k
                out_trip[j, 0] = ints[k, 1]
                out_trip[j, 1] = ints[k, 3]
                for a in range(N_ACC):
                    out_trip[j, 2 + a] = trip_acc[k, a]
                counts[0] = j + 1
                ints[k, 0] = 0
        elif ints[k, 0] == 1:
            ints[k, 3] = -1
        ints[k, 2] = t


def empty_state(n_slots: int = 0) -> SlotState:
    ints = np.zeros((n_slots, 6), np.int64)
    ints[:, 2:6] = -1
    return SlotState(
        "trips",
        {"end_s": END_S, "gap_s": GAP_S},
        {
            "ints": ints,
            "last": np.full((n_slots, 4), np.nan),
            "trip_acc": np.zeros((n_slots, N_ACC)),
            "day_acc": np.zeros((n_slots, N_ACC)),
            "day_trips": np.zeros(n_slots, np.int64),
        },
        # fill is per array; ints' -1 columns are fixed up in ensure_slots
        fill={"last": np.nan},
    )


def ensure_slots(state: SlotState, n_slots: int) -> None:
    have = state.n_slots
    if n_slots > have:
        state.ensure(n_slots)
        state["ints"][have:, 2:6] = -1


def update_trips(
    state: SlotState, slot: Any, ts_us: Any, kind: Any, value: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Feed samples (any order: sorted here by slot and time).

    Returns ``(trip_slots, trips, day_slots, days, dropped)``: closed trips as rows of
    ``TRIP_FIELDS`` and closed days as rows of ``DAY_FIELDS``.
    """
    s = np.ascontiguousarray(slot, dtype=np.int64)
    t = np.ascontiguousarray(ts_us, dtype=np.int64)
    c = np.ascontiguousarray(kind, dtype=np.int64)
    v = np.ascontiguousarray(value, dtype=np.float64)
    n = len(s)
    if not (len(t) == len(c) == len(v) == n):
        raise ValueError("update_trips: slot, ts_us, kind and value differ in length")
    if n and s.min() < 0:
        raise ValueError(f"update_trips: negative slot {int(s.min())}")
    if n:
        ensure_slots(state, int(s.max()) + 1)
    order = np.lexsort((t, s))
    out_ts = np.zeros(n, np.int64)
    out_t = np.zeros((n, 2 + N_ACC))
    out_ds = np.zeros(n, np.int64)
    out_d = np.zeros((n, 2 + N_ACC))
    counts = np.zeros(3, np.int64)
    _trip_loop(
        s[order], t[order], c[order], v[order],
        state["ints"], state["last"], state["trip_acc"], state["day_acc"], state["day_trips"],
        out_ts, out_t, out_ds, out_d, counts,
    )  # fmt: skip
    nt, nd = int(counts[0]), int(counts[1])
    return out_ts[:nt], out_t[:nt], out_ds[:nd], out_d[:nd], int(counts[2])
