"""Service-due predictions from the live odometer, through ``PartitionModels``: right days and km,
published at most once a day unless the prediction moves, and the state survives a checkpoint."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgpack
import numpy as np
import pytest

from core.crm_events import CrmEvent
from core.wire import Samples
from crm.normalize import from_prediction
from stream.partition_models import PartitionModels
from stream.service_due import ENGINE_HOURS, ODOMETER, schedule_from
from stream.state import SPEED

DAY_US = 86_400_000_000
DAY0 = 20_500  # 2026-02-16 as a day number
START_KM = 20_000.0


def day_batch(
    day: int, odo_km: float, km: float, hours: float | None = None, speed: bool = False
) -> Samples:
    """One day of driving from 08:00 to 18:00: ``km`` km, hourly odometer (metres); with
    ``speed``, hourly speed samples too (each an hour apart: ten short trips)."""
    ts = (day * DAY_US + 8 * 3_600_000_000 + np.arange(11) * 3_600_000_000).astype(np.int64)
    odo_m = (odo_km + km * np.arange(11) / 10) * 1000.0
    names = [ODOMETER]
    sig, t, v = [np.zeros(11)], [ts], [odo_m]
    if speed:
        names.append(SPEED)
        sig.append(np.full(11, len(names) - 1.0))
        t.append(ts)
        v.append(np.full(11, 40.0))
    if hours is not None:
        names.append(ENGINE_HOURS)
        sig.append(np.full(11, len(names) - 1.0))
        t.append(ts)
        v.append(hours + np.arange(11) * 0.1)
    return Samples.from_columns(names, np.concatenate(sig), np.concatenate(t), np.concatenate(v))


def due_records(out: Any) -> list[dict[str, Any]]:
    recs = [json.loads(v) for _, v in out.predictions]
    return [r for r in recs if r["kind"] == "service_due"]


def drive(
    m: PartitionModels, days: int, km_per_day: float, vin: str = "VIN1", day0: int = DAY0
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    odo = START_KM
    for d in range(days):
        got += due_records(m.update([(vin, day_batch(day0 + d, odo, km_per_day))]))
        odo += km_per_day
    return got


def test_a_vehicle_driving_50_km_a_day_is_due_when_its_km_run_out() -> None:
    m = PartitionModels(schedule=schedule_from(km=3_000.0, days=365.0))
    got = drive(m, 10, 50.0)
    # two closed days are needed for a mean; then one record per day
    assert [r["ts_us"] // DAY_US - DAY0 for r in got] == list(range(2, 10))
    last = got[-1]
    odo = START_KM + 9 * 50.0 + 50.0  # the last reading of day 9 (18:00)
    assert last["odo"] == pytest.approx(odo)
    assert last["km"] == pytest.approx(START_KM + 3_000.0)  # interval started at the first reading
    assert last["limit"] == "km"
    assert last["days"] == pytest.approx((START_KM + 3_000.0 - odo) / 50.0, rel=1e-3)
    assert last["days_lo"] <= last["days"] <= last["days_hi"]
    assert last["cycle"] == "2026-02-16@20000km" and last["interval_start"] == "first_seen"
    # the CRM reads it: due date = reading time + days
    ev: CrmEvent = from_prediction(json.dumps(last).encode())[0]
    assert ev.data["km_left"] == pytest.approx(3_000.0 - 500.0, abs=0.2)
    due = dt.datetime.fromtimestamp(last["ts_us"] / 1e6, dt.UTC) + dt.timedelta(days=last["days"])
    assert ev.data["due_date"] == f"{due:%Y-%m-%d}"


def test_a_car_that_rarely_drives_is_due_by_the_calendar() -> None:
    m = PartitionModels(schedule=schedule_from(km=15_000.0, days=90.0))
    last = drive(m, 6, 5.0)[-1]
    today = last["ts_us"] / DAY_US
    assert last["limit"] == "days"
    assert last["days"] == pytest.approx(DAY0 + 90 - today, abs=0.01)


def test_one_record_a_day_unless_the_prediction_moves() -> None:
    m = PartitionModels(schedule=schedule_from(km=3_000.0, days=365.0))
    drive(m, 4, 50.0)
    day = DAY0 + 4
    # the same day in three micro-batches: one record only
    full = day_batch(day, START_KM + 200, 50.0)
    recs = []
    for part in np.array_split(np.arange(11), 3):
        idx = part
        s = Samples(full.names, full.sig[idx], full.ts_us[idx], full.value[idx])
        recs += due_records(m.update([("VIN1", s)]))
    assert len(recs) == 1
    # the next day, a long drive after the first record moves the due date: published again
    morning = day_batch(day + 1, START_KM + 250, 10.0)
    recs = due_records(m.update([("VIN1", morning)]))
    evening = Samples.from_records([(ODOMETER, (day + 1) * DAY_US + 20 * 3_600_000_000,
                                     (START_KM + 260 + 600) * 1000.0)])  # fmt: skip
    recs += due_records(m.update([("VIN1", evening)]))
    assert len(recs) == 2 and recs[0]["ts_us"] // DAY_US == recs[1]["ts_us"] // DAY_US
    assert recs[1]["km"] == pytest.approx(START_KM + 3_000.0)
    assert recs[1]["days"] == pytest.approx(recs[0]["days"] - 600 / 50.0, abs=0.5)
    # small moves the same day are not published
    late = Samples.from_records([(ODOMETER, (day + 1) * DAY_US + 21 * 3_600_000_000,
                                  (START_KM + 861) * 1000.0)])  # fmt: skip
    assert due_records(m.update([("VIN1", late)])) == []


def test_vehicles_in_one_batch_and_a_backwards_odometer_is_dropped() -> None:
    m = PartitionModels(schedule=schedule_from(km=3_000.0, days=365.0))
    out = None
    for d in range(4):
        out = m.update(
            [
                ("A", day_batch(DAY0 + d, 10_000 + d * 20.0, 20.0)),
                ("B", day_batch(DAY0 + d, 50_000 + d * 80.0, 80.0)),
            ]
        )
    assert out is not None
    got = {r["vin"]: r for r in due_records(out)}
    assert got["A"]["km"] == pytest.approx(13_000.0) and got["B"]["km"] == pytest.approx(53_000.0)
    assert got["B"]["days"] < got["A"]["days"]
    back = day_batch(DAY0 + 4, 9_000.0, 0.0)
    assert m.update([("A", back)]).dropped == 11


def test_engine_hours_limit() -> None:
    m = PartitionModels(schedule=schedule_from(km=30_000.0, days=365.0, engine_hours=20.0))
    got = []
    for d in range(5):
        s = day_batch(DAY0 + d, START_KM + d * 50.0, 50.0, hours=100.0 + d)
        got += due_records(m.update([("VIN1", s)]))
    assert got[-1]["limit"] == "hours" and got[-1]["days"] < 30


def test_state_round_trip_and_version_1_blob() -> None:
    sched = schedule_from(km=3_000.0, days=365.0)
    m = PartitionModels(schedule=sched)
    drive(m, 5, 50.0)
    restored = PartitionModels.from_bytes(m.to_bytes(), sched)
    for name in ("day", "last_odo", "n_days", "mean_km", "m2_km"):
        assert np.array_equal(getattr(restored.service.usage, name), getattr(m.service.usage, name))
    nxt = day_batch(DAY0 + 5, START_KM + 250, 50.0)
    a, b = due_records(m.update([("VIN1", nxt)])), due_records(restored.update([("VIN1", nxt)]))
    assert a == b and len(a) == 1
    # a checkpoint written before the service-due state existed still loads
    doc = msgpack.unpackb(m.to_bytes(), raw=False)
    doc["v"] = 1
    del doc["usage"], doc["service"], doc["anomaly"]  # v1 and v2 held the z-score itself
    doc["zscore"] = m.anomaly.parts[0].to_bytes()
    old = PartitionModels.from_bytes(msgpack.packb(doc, use_bin_type=True), sched)
    assert old.vehicles == m.vehicles
    assert old.anomaly.parts[0].state.equals(m.anomaly.parts[0].state)  # the z-score carries over
    assert drive(old, 3, 50.0, day0=DAY0 + 6) != []  # a fresh interval starts from there


def test_the_demo_fleet_history_makes_cars_due_by_the_calendar() -> None:
    from carpulse.demo import HISTORY_DAYS, fleet_vin, odometer_history, with_odometer

    now_s = (DAY0 + 0.5) * 86_400
    m = PartitionModels(schedule=schedule_from(km=15_000.0, days=365.0))
    days = []
    for i, n in enumerate(HISTORY_DAYS):
        hist, last_km = odometer_history(n, 20_000.0, now_s, seed=i)
        (rec,) = due_records(m.update([(fleet_vin(f"demo-car-{i + 1}"), hist)]))
        assert rec["odo"] == pytest.approx(last_km, abs=0.1) and rec["limit"] == "days"
        days.append(rec["days"])
        # the first live reading of today closes yesterday: one more record, a day later
        live = with_odometer(Samples.from_records([(SPEED, int(now_s * 1e6), 30.0)]),
                             int(now_s * 1e6), (last_km + 1) * 1000)  # fmt: skip
        (again,) = due_records(m.update([(fleet_vin(f"demo-car-{i + 1}"), live)]))
        assert again["cycle"] == rec["cycle"]
    # interval start: the first reading's day (n days ago); the last reading: yesterday 19:00
    want = [max(365 - n + 5 / 24, 0.0) for n in HISTORY_DAYS]
    assert days == pytest.approx(want, abs=0.01)
    assert fleet_vin("demo-car-3") == "CPDEM000000000003" and len(fleet_vin("demo-gt350")) == 17


def test_short_trips_shorten_the_distance_interval() -> None:
    m = PartitionModels(schedule=schedule_from(km=3_000.0, days=365.0))
    got = []
    odo = START_KM
    for d in range(5):
        out = m.update([("VIN1", day_batch(DAY0 + d, odo, 50.0, speed=True))])
        got += due_records(out)
        odo += 50.0
    assert m.service.usage.trips[0] >= 10 and m.service.usage.short_trips[0] >= 10
    # every trip short, no idling measured: severity = mean(1, 0, 0, 0); km x (1 - 0.25 x 0.5)
    assert got[-1]["severity"] == pytest.approx(0.25)
    assert got[-1]["km"] == pytest.approx(START_KM + 3_000.0 * 0.875)
