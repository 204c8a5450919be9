"""Service-due predictions from the live odometer, per vehicle slot of one partition.

The maintenance model (``models.maintenance.service``) keeps daily-distance statistics in a
``UsageState``; ``ServiceTracker`` feeds it the odometer readings of a micro-batch in one kernel
call and publishes a ``service_due`` record (shape: ``core.crm_events``) for a vehicle when its
prediction moved materially (due date by ``DAYS_STEP`` days or due odometer by ``KM_STEP`` km)
or at most once per source day otherwise, never once per batch.

A vehicle's interval starts at its last workshop service when the registry carries one (the
CRM's service records, exported by ``carpulse registry export``; ``seed``; ``interval_start:
"service_record"`` in the record), else at the first odometer reading the stream sees
(``interval_start: "first_seen"``). The oil model's last oil change is not seeded yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from typing import Final

import numpy as np

from models.maintenance.service import (
    Schedule,
    UsageState,
    add_trips,
    predict_service,
    update_usage,
)
from models.maintenance.soa import SlotState
from stream.trips import TRIP_FIELDS

ODOMETER: Final = "Vehicle.TraveledDistance"  # metres (VSS; see firmware_bridge/vss_catalog.csv)
ENGINE_HOURS: Final = "Vehicle.Powertrain.CombustionEngine.EngineHours"  # h
DAY_US: Final = 86_400_000_000
MIN_DAYS: Final = 2  # closed days of driving before the first prediction (a mean needs them)
DAYS_STEP: Final = 2.0  # a due date moved by this many days is a material change
KM_STEP: Final = 250.0  # so is a due odometer moved by this many km


@dataclass
class ServiceTrack(SlotState):
    """Where each vehicle's service interval started and what was last published."""

    start_day: np.ndarray  # float64 day number (UTC) of the interval start; NaN: not yet
    start_odo: np.ndarray  # float64 km at the interval start
    start_hours: np.ndarray  # float64 engine hours at the interval start (NaN: unknown)
    sent_day: np.ndarray  # int64 source day of the last published prediction (-1: none)
    sent_due_day: np.ndarray  # float64 due day (absolute) last published
    sent_km: np.ndarray  # float64 due odometer last published

    @classmethod
    def empty(cls, n: int) -> ServiceTrack:
        nan = np.full(n, np.nan)
        return cls(nan, nan.copy(), nan.copy(), np.full(n, -1, np.int64), nan.copy(), nan.copy())


def _grow(state: SlotState, empty: SlotState, n: int) -> None:
    """Copy ``state`` into the first rows of ``empty`` (which has ``n`` >= rows)."""
    for f in dataclasses.fields(state):  # type: ignore[arg-type]
        old = getattr(state, f.name)
        getattr(empty, f.name)[: len(old)] = old


def schedule_from(km: float, days: float, engine_hours: float = 0.0) -> Schedule:
    return Schedule(km=km, days=days, engine_hours=engine_hours if engine_hours > 0 else np.inf)


class ServiceTracker:
    """Usage statistics and service-due publication state of every vehicle slot."""

    def __init__(self, schedule: Schedule | None = None, n: int = 0) -> None:
        self.schedule = schedule or Schedule()
        self.usage = UsageState.empty(n)
        self.track = ServiceTrack.empty(n)
        self.seeded: set[int] = set()  # slots whose interval starts at a service record

    def grow(self, n: int) -> None:
        if n <= len(self.usage.day):
            return
        usage, track = UsageState.empty(n), ServiceTrack.empty(n)
        _grow(self.usage, usage, n)
        _grow(self.track, track, n)
        self.usage, self.track = usage, track

    def seed(self, slot: int, day: float, odo_km: float, hours: float = np.nan) -> None:
        """Start a vehicle's interval at a known service (day number, odometer in km)."""
        self.grow(slot + 1)
        tr = self.track
        tr.start_day[slot], tr.start_odo[slot], tr.start_hours[slot] = day, odo_km, hours
        tr.sent_day[slot] = -1
        self.seeded.add(slot)

    def add_trips(self, slot: np.ndarray, rows: np.ndarray, n: int) -> None:
        """Closed trips (rows of ``stream.trips.TRIP_FIELDS``) into the severity counters: short
        trips and the idle share count; cold starts and high load are not measured (zero)."""
        self.grow(n)
        col = {name: rows[:, i] for i, name in enumerate(TRIP_FIELDS)}
        zero = np.zeros(len(slot))
        add_trips(
            self.usage, slot, col["dist_km"], (col["end_us"] - col["start_us"]) / 60e6,
            col["idle_s"] / 60.0, zero, zero.astype(bool),
        )  # fmt: skip

    def update(
        self,
        slot: np.ndarray,
        ts_us: np.ndarray,
        odo_m: np.ndarray,
        hours: np.ndarray,
        names: dict[int, str],
    ) -> tuple[list[tuple[str, bytes]], int]:
        """Feed odometer readings (any order) with the engine hours known at each (NaN if not);
        returns the ``service_due`` records to publish and how many readings were dropped."""
        if not len(slot):
            return [], 0
        self.grow(len(names))
        order = np.lexsort((ts_us, slot))  # time order per slot, as the kernel requires
        s, t = slot[order], ts_us[order]
        km, h = odo_m[order] / 1000.0, hours[order]
        day = t // DAY_US
        tr = self.track
        first = np.r_[True, s[1:] != s[:-1]]
        fresh = first & np.isnan(tr.start_day[s])
        # the interval of a vehicle seen for the first time starts at its first reading
        tr.start_day[s[fresh]] = day[fresh]
        tr.start_odo[s[fresh]] = km[fresh]
        tr.start_hours[s[fresh]] = h[fresh]
        dropped = update_usage(self.usage, s, day, km, h)
        last = np.r_[s[1:] != s[:-1], True]
        ls, lt, lday = s[last], t[last], day[last]
        ready = self.usage.n_days[ls] >= MIN_DAYS
        if not ready.any():
            return [], dropped
        ls, lt, lday = ls[ready], lt[ready], lday[ready]
        sub = UsageState(*(getattr(self.usage, f.name)[ls] for f in dataclasses.fields(UsageState)))
        today = lt / DAY_US
        by_hours = np.isfinite(self.schedule.engine_hours)
        due = predict_service(
            sub, self.schedule, today, tr.start_day[ls], tr.start_odo[ls],
            np.nan_to_num(tr.start_hours[ls]) if by_hours else None,
        )  # fmt: skip
        due_day = today + due.days
        emit = (lday > tr.sent_day[ls]) | (np.abs(due_day - tr.sent_due_day[ls]) >= DAYS_STEP)
        emit |= np.abs(due.km - tr.sent_km[ls]) >= KM_STEP
        idx = np.flatnonzero(emit)
        if not len(idx):
            return [], dropped
        es = ls[idx]
        tr.sent_day[es], tr.sent_due_day[es], tr.sent_km[es] = lday[idx], due_day[idx], due.km[idx]
        out = []
        for i, s_ in zip(idx.tolist(), es.tolist(), strict=True):
            start = dt.datetime.fromtimestamp(tr.start_day[s_] * 86_400, dt.UTC)
            rec = {
                "vin": names[s_],
                "kind": "service_due",
                "ts_us": int(lt[i]),
                "days": round(float(due.days[i]), 2),
                "days_lo": round(float(due.days_lo[i]), 2),
                "days_hi": round(float(due.days_hi[i]), 2),
                "km": round(float(due.km[i]), 1),
                "odo": round(float(self.usage.last_odo[s_]), 1),
                "limit": str(due.limit[i]),
                "severity": round(float(due.severity[i]), 3),
                # one service interval; the CRM issues at most one coupon per cycle
                "cycle": f"{start:%Y-%m-%d}@{tr.start_odo[s_]:.0f}km",
                "interval_start": "service_record" if s_ in self.seeded else "first_seen",
            }
            out.append((names[s_], json.dumps(rec).encode()))
        return out, dropped
