"""Yearly report arithmetic on synthetic columns: distance, trips, style, fuel, places with and
without consent; ownership windows clipped to the year."""

from __future__ import annotations

import datetime as dt

import numpy as np

from crm.report import FIELDS, FUEL, LAT, LON, ODO, SPEED, Columns, summarise, year_windows

HOME, SHOP = (31.2000, 121.4000), (31.3000, 121.5500)


def drive(start: dt.datetime, minutes: int, kmh: float, odo0: float, dest: tuple[float, float],
          fuel0: float) -> Columns:  # fmt: skip
    """One trip sampled every second at constant speed, ending at ``dest``."""
    n = minutes * 60
    ts = int(start.timestamp() * 1e6) + np.arange(n, dtype=np.int64) * 1_000_000
    km = odo0 + np.arange(n) * kmh / 3600.0
    vals = {f: np.full(n, np.nan) for f in FIELDS}
    vals[SPEED] = np.full(n, kmh)
    vals[ODO] = km
    vals[LAT] = np.full(n, dest[0])
    vals[LON] = np.full(n, dest[1])
    vals[FUEL] = np.linspace(fuel0, fuel0 - 1.0, n)  # 1 % of the tank per trip
    return Columns(ts, vals)


def year_of_driving() -> tuple[Columns, float]:
    parts, odo, fuel = [], 10_000.0, 80.0
    for month, days in ((3, 10), (7, 5)):
        for d in range(days):
            day = dt.datetime(2026, month, 1 + d, 8, tzinfo=dt.UTC)
            for k, dest in enumerate((SHOP, HOME)):
                c = drive(day + dt.timedelta(hours=9 * k), 30, 60.0, odo, dest, fuel)
                odo = float(c.values[ODO][-1]) + 0.1  # parked between trips: no data
                fuel -= 1.0
                parts.append(c)
    return Columns.concat(parts), odo


def test_distance_trips_fuel_and_places() -> None:
    cols, _ = year_of_driving()
    sm = summarise(cols, 2026, with_places=True)
    per_trip = 1799 * 60.0 / 3600.0  # 30 min at 60 km/h sampled each second
    assert sm.trips == 30
    assert abs(sm.distance_km - 30 * per_trip) < 0.5
    assert (
        abs(sm.monthly_km[2] - 20 * per_trip) < 0.5 and abs(sm.monthly_km[6] - 10 * per_trip) < 0.5
    )
    assert sm.monthly_trips[2] == 20 and sum(sm.monthly_trips) == 30
    assert abs(sm.driving_hours - 30 * 0.5) < 0.1
    assert sm.harsh_accel == 0 and sm.harsh_brake == 0 and sm.score == 100.0
    assert sm.fuel_l is not None and abs(sm.fuel_l - 30 * 1.0 * 0.5) < 0.01  # 50 L tank
    assert sm.energy_kwh is None  # no traction battery signal
    assert [(p["lat"], p["lon"], p["visits"]) for p in sm.places] == [(*SHOP, 15), (*HOME, 15)]
    assert summarise(cols, 2026, with_places=False).places == []


def test_harsh_braking_and_speeding_lower_the_score() -> None:
    c = drive(dt.datetime(2026, 5, 1, tzinfo=dt.UTC), 20, 130.0, 0.0, HOME, 50.0)
    c.values[SPEED][600:605] = [130.0, 110.0, 90.0, 70.0, 50.0]  # -5.6 m/s^2 for 4 s
    sm = summarise(c, 2026, with_places=False)
    assert sm.harsh_brake == 1 and sm.speeding_share > 0.9 and sm.score < 10


def test_year_windows_clip_ownership_to_the_year() -> None:
    t = lambda *a: dt.datetime(*a, tzinfo=dt.UTC)  # noqa: E731
    assert year_windows([(t(2025, 6, 1), t(2026, 4, 1)), (t(2026, 9, 1), None)], 2026) == [
        (t(2026, 1, 1), t(2026, 4, 1)),
        (t(2026, 9, 1), t(2027, 1, 1)),
    ]
    assert year_windows([(t(2024, 1, 1), t(2025, 1, 1))], 2026) == []


def test_empty_year() -> None:
    sm = summarise(Columns.empty(), 2026, with_places=True)
    assert (sm.distance_km, sm.trips, sm.places, sm.fuel_l) == (0.0, 0, [], None)
