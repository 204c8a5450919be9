"""Trip segmentation and daily aggregates kernel: scenarios, batch = one-at-a-time, compiled."""

from __future__ import annotations

import os

import numba
import numpy as np
import pytest

from stream import trips as tm

pytestmark = pytest.mark.kernel
DAY = tm.DAY_US


def drive(t0: int, moving_s: int, stop_s: int, kmh: float, slot: int = 0, hz: int = 1):  # type: ignore[no-untyped-def]
    """Speed and rpm rows: ``moving_s`` at ``kmh``, then stopped with the engine off."""
    n = (moving_s + stop_s) * hz
    t = t0 + (np.arange(n) * 1_000_000 // hz)
    moving = np.arange(n) < moving_s * hz
    speed = np.where(moving, kmh, 0.0)
    rpm = np.where(moving, 1800.0, 0.0)
    ts = np.r_[t, t]
    kind = np.r_[np.full(n, tm.K_SPEED), np.full(n, tm.K_RPM)]
    return np.full(2 * n, slot), ts, kind, np.r_[speed, rpm]


def test_one_trip_distance_and_end_after_stop() -> None:
    state = tm.empty_state()
    t0 = 5 * DAY + 3600 * 1_000_000
    _, trips, _, days, dropped = tm.update_trips(state, *drive(t0, 600, 120, 60.0))
    assert dropped == 0 and len(days) == 0
    assert len(trips) == 1
    rec = dict(zip(tm.TRIP_FIELDS, trips[0], strict=True))
    assert rec["start_us"] == t0
    assert rec["end_us"] == t0 + 600 * 1_000_000  # when both went off, not when the trip closed
    assert rec["dist_km"] == pytest.approx(10.0, rel=1e-3)  # 600 s at 60 km/h
    assert rec["drive_s"] == pytest.approx(600.0, abs=1.0)


def test_idle_harsh_braking_fuel_and_day_close() -> None:
    state = tm.empty_state()
    t0 = 7 * DAY - 3_600_000_000  # an hour before midnight
    t = t0 + np.arange(40) * 1_000_000
    speed = np.r_[np.zeros(10), np.full(20, 50.0), [30.0, 10.0, 0.0], np.zeros(7)]  # -20 km/h/s
    rpm = np.r_[np.full(33, 900.0), np.zeros(7)]
    fuel = np.linspace(50.0, 49.0, 40)
    n = len(t)
    slot = np.zeros(3 * n, np.int64)
    ts = np.r_[t, t, t]
    kind = np.r_[np.full(n, tm.K_SPEED), np.full(n, tm.K_RPM), np.full(n, tm.K_FUEL)]
    tm.update_trips(state, slot, ts, kind, np.r_[speed, rpm, fuel])
    # the next day's first sample closes the day
    _, _, d_slot, days, _ = tm.update_trips(state, [0], [7 * DAY + 10], [tm.K_SPEED], [0.0])
    assert list(d_slot) == [0]
    rec = dict(zip(tm.DAY_FIELDS, days[0], strict=True))
    assert rec["day"] == 6 and rec["trips"] == 1
    assert rec["harsh_brake"] == 1  # 50->30->10: two -5.6 m/s2 steps 1 s apart, one event (3 s)
    assert rec["idle_s"] == pytest.approx(10.0, abs=1.0)
    assert rec["fuel_pct"] == pytest.approx(1.0, abs=0.03)


def test_data_gap_closes_a_trip() -> None:
    state = tm.empty_state()
    tm.update_trips(state, *drive(DAY, 60, 0, 30.0))
    _, trips, _, _, _ = tm.update_trips(state, [0], [DAY + 3600 * 1_000_000], [tm.K_SPEED], [30.0])
    assert len(trips) == 1 and trips[0][1] == DAY + 59 * 1_000_000


def test_out_of_order_and_nan_are_dropped_and_counted() -> None:
    state = tm.empty_state()
    tm.update_trips(state, [0], [100], [tm.K_SPEED], [10.0])
    *_, dropped = tm.update_trips(state, [0, 0], [50, 200], [tm.K_SPEED, tm.K_RPM], [5.0, np.nan])
    assert dropped == 2


def test_batches_equal_one_at_a_time_and_state_round_trips() -> None:
    rng = np.random.default_rng(3)
    slot, ts, kind, value = (
        np.r_[a, b]
        for a, b in zip(
            drive(DAY, 300, 90, 45.0, 0), drive(DAY + 7, 100, 200, 20.0, 1), strict=True
        )
    )
    value = value + rng.normal(0, 3, len(value)).clip(-3, 3) * ((kind == tm.K_SPEED) & (value > 0))
    whole = tm.empty_state()
    t_all = tm.update_trips(whole, slot, ts, kind, value)
    parts = tm.empty_state()
    got_trips: list[np.ndarray] = []
    order = np.lexsort((ts, slot))
    for chunk in np.array_split(np.argsort(ts[order], kind="stable"), 37):
        idx = order[chunk]
        parts = type(parts).from_bytes(parts.to_bytes())  # a rebalance between every chunk
        got_trips.extend(tm.update_trips(parts, slot[idx], ts[idx], kind[idx], value[idx])[1])
    assert len(got_trips) == len(t_all[1]) == 2
    assert sorted(map(tuple, got_trips)) == sorted(map(tuple, t_all[1]))
    assert parts.equals(whole)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="JIT disabled")
def test_kernel_is_compiled() -> None:
    tm.update_trips(tm.empty_state(), [0], [1], [tm.K_SPEED], [1.0])
    assert isinstance(tm._trip_loop, numba.core.registry.CPUDispatcher)
    assert tm._trip_loop.signatures
