"""Maintenance prediction: service due, oil life, 12 V battery, EV pack, on series with hand-computed answers."""

from __future__ import annotations

import dataclasses
import os

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.maintenance import battery as bat
from models.maintenance import oil, service
from models.maintenance.battery import (
    BatteryState,
    PackState,
    battery_health,
    cell_spread,
    soh_trend,
    update_battery,
    update_pack,
)
from models.maintenance.oil import OilState, oil_life, update_oil
from models.maintenance.service import (
    Schedule,
    UsageState,
    add_trips,
    predict_service,
    severity,
    update_usage,
)
from tests.reference import maintenance as ref

JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"
pytestmark = pytest.mark.kernel


def _daily(km_per_day: list[float], start_odo: float = 10_000.0) -> tuple[np.ndarray, np.ndarray]:
    """One reading at the start of each day (day 0..n), odometer growing by the given distances."""
    odo = start_odo + np.r_[0.0, np.cumsum(km_per_day)]
    return np.arange(len(odo)), odo


# ----- service due ---------------------------------------------------------------------------


def test_service_due_constant_use_time_limit_first() -> None:
    # 40 km/day: 15,000 km would take 375 days, so the 365-day limit comes first
    st_ = UsageState.empty(1)
    day, odo = _daily([40.0] * 30)
    assert update_usage(st_, np.zeros(len(day)), day, odo, np.zeros(len(day))) == 0
    due = predict_service(
        st_,
        Schedule(),
        today=30,
        last_service_day=np.array([0.0]),
        last_service_odo=np.array([10_000.0]),
    )
    assert st_.mean_km[0] == pytest.approx(40.0) and st_.n_days[0] == 30
    assert due.limit[0] == "days"
    assert due.days[0] == pytest.approx(335.0)
    assert due.km[0] == pytest.approx(10_000 + 30 * 40 + 335 * 40)  # 24,600
    assert due.days_lo[0] == due.days_hi[0] == pytest.approx(335.0)  # no spread: no band
    assert due.km_lo[0] == pytest.approx(due.km[0]) and due.km_hi[0] == pytest.approx(due.km[0])


def test_service_due_distance_first_with_band() -> None:
    # alternate 0 and 120 km days: mean 60 km/day, sample sd = 60 * sqrt(n/(n-1))
    st_ = UsageState.empty(2)
    km = [0.0, 120.0] * 50
    day, odo = _daily(km)
    slots = np.r_[np.zeros(len(day)), np.ones(len(day))]
    update_usage(st_, slots, np.r_[day, day], np.r_[odo, odo + 5], np.zeros(2 * len(day)))
    due = predict_service(
        st_,
        Schedule(km=15_000, days=365),
        today=100,
        last_service_day=np.array([0.0, 0.0]),
        last_service_odo=np.array([10_000.0, 10_005.0]),
    )
    # 6,000 km driven, 9,000 to go at 60/day = 150 days; sd of the days = sqrt(150) * sd / 60
    sd = 60.0 * np.sqrt(100 / 99)
    assert due.limit.tolist() == ["km", "km"]
    assert due.days[0] == pytest.approx(150.0)
    half = 1.6448536269514722 * np.sqrt(150.0) * sd / 60.0
    assert due.days_lo[0] == pytest.approx(150.0 - half)
    assert due.days_hi[0] == pytest.approx(150.0 + half)
    assert due.km[0] == pytest.approx(25_000.0) and due.km[1] == pytest.approx(25_005.0)


def test_parked_days_count_as_zero_distance() -> None:
    st_ = UsageState.empty(1)
    # readings on days 0, 1 and 4: day 0 = 100 km, day 1 = 50 km, days 2 and 3 parked
    update_usage(st_, np.zeros(3), np.array([0, 1, 4]), np.array([0.0, 100.0, 150.0]), np.zeros(3))
    assert st_.n_days[0] == 4
    assert st_.mean_km[0] == pytest.approx(150.0 / 4)


def test_severity_shortens_the_distance_interval() -> None:
    st_ = UsageState.empty(2)
    # slot 0: 4 trips, all short and cold, half the engine time idling, none at high load
    add_trips(
        st_,
        np.zeros(4),
        np.full(4, 3.0),
        np.full(4, 10.0),
        np.full(4, 5.0),
        np.zeros(4),
        np.ones(4, bool),
    )
    # slot 1: long warm highway trips
    add_trips(
        st_,
        np.ones(2),
        np.full(2, 80.0),
        np.full(2, 60.0),
        np.zeros(2),
        np.zeros(2),
        np.zeros(2, bool),
    )
    sev = severity(st_)
    assert sev[0] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert sev[1] == 0.0
    day, odo = _daily([100.0] * 10, 0.0)
    update_usage(
        st_, np.r_[np.zeros(11), np.ones(11)], np.r_[day, day], np.r_[odo, odo], np.zeros(22)
    )
    due = predict_service(
        st_,
        Schedule(km=10_000, days=365, severe_factor=0.5),
        today=10,
        last_service_day=np.zeros(2),
        last_service_odo=np.zeros(2),
    )
    # effective interval: 10,000 * (1 - 0.625 * 0.5) = 6,875 km
    assert due.km[0] == pytest.approx(6_875.0) and due.km[1] == pytest.approx(10_000.0)
    assert due.days[0] == pytest.approx((6_875.0 - 1_000.0) / 100.0)


def test_bad_odometer_readings_are_dropped_and_counted() -> None:
    st_ = UsageState.empty(1)
    bad = update_usage(
        st_,
        np.zeros(4),
        np.array([0, 1, 1, 2]),
        np.array([100.0, 150.0, 120.0, np.nan]),
        np.zeros(4),
    )
    assert bad == 2 and st_.last_odo[0] == 150.0
    with pytest.raises(ValueError, match="slot out of range"):
        update_usage(st_, np.array([3]), np.array([3]), np.array([1.0]), np.array([1.0]))


days_st = st.lists(st.tuples(st.integers(0, 3), st.floats(0, 500)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(days_st, st.integers(1, 5))
def test_usage_kernel_matches_reference_and_blocks(steps: list, cut: int) -> None:
    days = np.cumsum([d for d, _ in steps]).astype(np.int64)
    odo = np.cumsum([k for _, k in steps])
    mean, var = ref.daily_mean_var(days.tolist(), odo.tolist())
    a = UsageState.empty(1)
    update_usage(a, np.zeros(len(days)), days, odo, np.zeros(len(days)))
    assert a.mean_km[0] == pytest.approx(mean, abs=1e-6)
    got_var = a.m2_km[0] / (a.n_days[0] - 1) if a.n_days[0] > 1 else 0.0
    assert got_var == pytest.approx(var, rel=1e-6, abs=1e-6)
    b = UsageState.empty(1)
    for lo in range(0, len(days), cut):
        sl = slice(lo, lo + cut)
        update_usage(b, np.zeros(len(days[sl])), days[sl], odo[sl], np.zeros(len(days[sl])))
    for f in ("mean_km", "m2_km", "n_days", "last_odo", "day"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = UsageState.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(c.m2_km, a.m2_km)


# ----- oil life ------------------------------------------------------------------------------


def test_oil_life_by_hand() -> None:
    # one hour at 2,000 rpm, one sample a second: 120,000 revolutions; budget 1.2 M revolutions
    ts = np.arange(3601.0)
    s = OilState.empty(3)
    n = len(ts)
    slots = np.repeat([0, 1, 2], n)
    temps = np.r_[np.full(n, 90.0), np.full(n, 40.0), np.full(n, 130.0)]
    life, bad = update_oil(s, slots, np.r_[ts, ts, ts], np.full(3 * n, 2000.0), temps, budget=1.2e6)
    assert bad == 0
    # normal 10 % used; cold counts double: 20 %; 130 degC weighs 1 + 0.1 * 20 = 3: 30 %
    np.testing.assert_allclose(s.life, [0.9, 0.8, 0.7])
    assert life[n - 1] == pytest.approx(0.9)
    assert s.revs[0] == pytest.approx(120_000.0)
    # the calendar cap: half a year after the change at most half the life remains
    assert oil_life(s, now_s=365 * 86400 / 2)[0] == pytest.approx(0.5)
    s.reset(np.array([0]), ts=0.0)
    assert s.life[0] == 1.0


def test_oil_gaps_are_capped_and_backwards_time_dropped() -> None:
    s = OilState.empty(1)
    # 1,000 s gap between samples counts as MAX_GAP_S (10 s) of running
    _, bad = update_oil(
        s,
        np.zeros(3),
        np.array([0.0, 1000.0, 999.0]),
        np.full(3, 6000.0),
        np.full(3, 90.0),
        budget=1000.0,
    )
    assert bad == 1
    assert s.revs[0] == pytest.approx(6000 / 60 * 10)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 30), st.floats(0, 7000), st.floats(-20, 150)),
        min_size=1,
        max_size=50,
    ),
    st.integers(1, 7),
)
def test_oil_kernel_matches_reference_and_blocks(rows: list, cut: int) -> None:
    ts = np.cumsum([r[0] for r in rows])
    rpm = np.array([r[1] for r in rows])
    temp = np.array([r[2] for r in rows])
    a = OilState.empty(1)
    update_oil(a, np.zeros(len(ts)), ts, rpm, temp, budget=1e5)
    assert a.life[0] == pytest.approx(
        ref.oil_life(ts.tolist(), rpm.tolist(), temp.tolist(), 1e5, oil.MAX_GAP_S), abs=1e-9
    )
    b = OilState.empty(1)
    for lo in range(0, len(ts), cut):
        sl = slice(lo, lo + cut)
        update_oil(b, np.zeros(len(ts[sl])), ts[sl], rpm[sl], temp[sl], budget=1e5)
    assert b.life[0] == pytest.approx(a.life[0], abs=1e-12)


# ----- 12 V battery --------------------------------------------------------------------------


def _start(t0: float, dip: float, rest: float) -> tuple[np.ndarray, np.ndarray]:
    """Resting 40 min at ``rest`` V, a 1 s crank dipping to ``dip`` V at 10 Hz, then charging."""
    t_rest = t0 + np.arange(0, 2400.0, 60.0)
    t_crank = t0 + 2400.0 + np.arange(10) / 10.0
    v_crank = np.r_[11.8, np.linspace(10.8, dip, 5), np.linspace(dip, 10.9, 4)]
    t_run = t0 + 2401.0 + np.arange(5.0)
    return np.r_[t_rest, t_crank, t_run], np.r_[
        np.full(len(t_rest), rest), v_crank, np.full(5, 14.2)
    ]


def test_battery_health_from_cranks_and_rest_by_hand() -> None:
    s = BatteryState.empty(2)
    ta, va = _start(0.0, 10.6, 12.65)  # healthy: full charge, shallow dip
    tb, vb = _start(0.0, 9.0, 12.24)  # weak: half charge, dips below 9.6 V
    bad = update_battery(
        s, np.r_[np.zeros(len(ta)), np.ones(len(tb))], np.r_[ta, tb], np.r_[va, vb]
    )
    assert bad == 0
    assert s.cranks.tolist() == [1, 1]
    np.testing.assert_allclose(s.crank_ewma, [10.6, 9.0])
    # resting readings count only after 30 min off: the values are constant anyway
    np.testing.assert_allclose(s.rest_ewma, [12.65, 12.24])
    h = battery_health(s)
    np.testing.assert_allclose(h["soc_pct"], [100.0, 50.0])
    np.testing.assert_allclose(h["crank_score"], [1.0, 0.0])
    assert h["health"][0] == pytest.approx(1.0) and h["health"][1] == 0.0
    assert h["replace"].tolist() == [False, True]


def test_battery_ewma_of_dips_and_bad_readings() -> None:
    s = BatteryState.empty(1)
    for k, dip in enumerate((10.0, 9.0)):
        t, v = _start(10_000.0 * k, dip, 12.5)
        update_battery(s, np.zeros(len(t)), t, v)
    assert s.crank_ewma[0] == pytest.approx(0.7 * 10.0 + 0.3 * 9.0)
    assert update_battery(s, np.zeros(2), np.array([1.0, 2.0]), np.array([np.nan, 99.0])) == 2
    # unknown resting voltage: health is the crank score alone
    s2 = BatteryState.empty(1)
    t, v = _start(0.0, 10.05, 12.5)
    update_battery(s2, np.zeros(len(t) - 45), t[40:-5], v[40:-5])
    update_battery(s2, np.zeros(1), np.array([t[-1]]), np.array([14.0]))
    assert np.isnan(battery_health(s2)["soc_pct"][0])
    assert battery_health(s2)["health"][0] == pytest.approx(0.5)


# ----- EV pack -------------------------------------------------------------------------------


def test_cell_spread_and_soh_trend_by_hand() -> None:
    cells = np.array([[3.70, 3.72, 3.69, np.nan], [np.nan] * 4, [4.1, 4.1, 4.1, 4.1]])
    np.testing.assert_allclose(cell_spread(cells), [0.03, np.nan, 0.0], atol=1e-12)
    s = PackState.empty(1)
    # SoH falls 2 % per year from 100 %: readings each quarter for three years
    day = np.arange(0, 3 * 365.25, 365.25 / 4)
    soh = 100.0 - 2.0 * day / 365.25
    cv = np.tile([3.70, 3.75], (len(day), 1))
    spread = update_pack(s, np.zeros(len(day)), cv, day, soh)
    np.testing.assert_allclose(spread, 0.05)
    assert s.spread_ewma[0] == pytest.approx(0.05)
    tr = soh_trend(s, end_of_life_pct=70.0)
    assert tr["slope_pct_per_year"][0] == pytest.approx(-2.0)
    assert tr["end_of_life_day"][0] == pytest.approx(15 * 365.25)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.just(float("nan")), st.floats(2.5, 4.3)), min_size=3, max_size=3),
        min_size=1,
        max_size=20,
    )
)
def test_cell_spread_matches_reference(rows: list) -> None:
    got = cell_spread(np.array(rows))
    want = np.array([ref.cell_spread(r) for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.skipif(JIT_OFF, reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
def test_maintenance_kernels_are_compiled() -> None:
    update_usage(
        UsageState.empty(1), np.zeros(2), np.array([0, 1]), np.array([0.0, 1.0]), np.zeros(2)
    )
    update_oil(OilState.empty(1), np.zeros(2), np.array([0.0, 1.0]), np.ones(2), np.ones(2))
    update_battery(BatteryState.empty(1), np.zeros(2), np.array([0.0, 1.0]), np.array([12.0, 10.0]))
    update_pack(PackState.empty(1), np.zeros(1), np.ones((1, 2)), np.zeros(1), np.ones(1))
    for k in (
        service._update_usage,
        oil._update_oil,
        bat._update_battery,
        bat._update_pack,
        bat._cell_spread,
    ):
        assert isinstance(k, numba.core.registry.CPUDispatcher)
        assert k.signatures


# ----- checkpoint layout of the slot states ---------------------------------------------------


def _filled(cls: type, n: int) -> object:
    s = cls.empty(n)
    rng = np.random.default_rng(3)
    for f in dataclasses.fields(s):
        a = getattr(s, f.name)
        if a.dtype.kind == "f":
            a[...] = rng.normal(size=a.shape)
            a.flat[0] = np.nan  # NaN and -0.0 survive bit for bit
            a.flat[-1] = -0.0
        elif a.dtype.kind in "iu":
            a[...] = rng.integers(0, 1000, size=a.shape)
        else:
            a[...] = rng.integers(0, 2, size=a.shape).astype(bool)
    return s


def _same(a: object, b: object) -> None:
    for f in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype and x.shape == y.shape, f.name
        assert x.tobytes() == y.tobytes(), f.name
        assert y.flags.writeable, f.name  # the kernels update restored states in place


@pytest.mark.parametrize("cls", [OilState, UsageState, BatteryState, PackState])
def test_slot_state_round_trip_and_the_first_layout(cls: type) -> None:
    import io

    s = _filled(cls, 5)
    blob = s.to_bytes()
    assert blob.startswith(b"CPSOA\x01")
    _same(s, cls.from_bytes(blob))
    # a checkpoint written before (np.savez) still restores
    buf = io.BytesIO()
    np.savez(buf, **{f.name: getattr(s, f.name) for f in dataclasses.fields(s)})
    _same(s, cls.from_bytes(buf.getvalue()))


def test_slot_state_refuses_hostile_blobs() -> None:
    import json

    blob = _filled(OilState, 3).to_bytes()
    hlen = int.from_bytes(blob[6:10], "little")
    head = json.loads(blob[10 : 10 + hlen])
    body = blob[10 + hlen :]

    def made(h: object, rest: bytes = body) -> bytes:
        raw = json.dumps(h).encode()
        return b"CPSOA\x01" + len(raw).to_bytes(4, "little") + raw + rest

    bad = [
        blob[:-1],  # truncated
        blob + b"\0",  # trailing bytes
        blob[:8],  # header length cut
        b"CPSOA\x01" + (10**6).to_bytes(4, "little") + b"[]",  # header longer than the blob
        made("not a list"),
        made([[n, "|O", s] for n, _, s in head]),  # objects: never
        made([[n, d, [-1]] for n, d, _ in head]),  # negative shape
        made([[n, d, [10**30]] for n, d, _ in head]),  # absurd shape: truncated, no overflow
        made(head[1:], body),  # a field missing (and bytes left over)
        made([*head[:-1], ["extra", "<f8", [0]], *head[-1:]]),  # an unknown field
        b"something else",
    ]
    for raw in bad:
        with pytest.raises(ValueError):
            OilState.from_bytes(raw)


def test_partition_checkpoint_with_a_hostile_state_is_a_decode_error() -> None:
    import msgpack

    from core.errors import DecodeError
    from stream.partition_models import PartitionModels

    doc = msgpack.unpackb(PartitionModels().to_bytes(), raw=False)
    doc["oil"] = b"CPSOA\x01" + (5).to_bytes(4, "little") + b"[[1]]"
    with pytest.raises(DecodeError):
        PartitionModels.from_bytes(msgpack.packb(doc, use_bin_type=True))
