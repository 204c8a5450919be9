"""Live vehicle state: newest sample wins, derived fields, health, throttled publishing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.wire import Samples, TelemetryBatch
from stream import state as vs


def batch(records: list[tuple[str, int, float]]) -> TelemetryBatch:
    return TelemetryBatch("dev-1", "b", 1, Samples.from_records(records))


def test_latest_per_signal_picks_newest_finite_row() -> None:
    s = Samples.from_records(
        [(vs.SPEED, 3, 30.0), (vs.SPEED, 9, 90.0), (vs.SPEED, 5, 50.0), (vs.SPEED, 12, math.nan),
         (vs.ENGINE_RPM, 4, 800.0)]
    )  # fmt: skip
    assert vs.latest_per_signal(s) == {vs.SPEED: (9, 90.0), vs.ENGINE_RPM: (4, 800.0)}


@pytest.mark.kernel
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 4),
            st.sampled_from([1.0, 2.0, -0.0, 0.0, math.nan, math.inf, -math.inf]),
        ),
        max_size=40,
    )
)
def test_latest_per_signal_equals_a_plain_scan(rows: list[tuple[int, int, float]]) -> None:
    """Newest finite row of each signal, ties to the later row: against a plain loop (the
    rows of one time are told apart by their values' bits, so -0.0 is not 0.0)."""
    names = [f"S{i}" for i in range(4)]
    s = Samples.from_columns(
        names,
        np.array([r[0] for r in rows], np.int32),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.float64),
    )
    want: dict[str, tuple[int, float]] = {}
    for k, t, v in rows:
        if math.isfinite(v) and (names[k] not in want or t >= want[names[k]][0]):
            want[names[k]] = (t, v)
    got = vs.latest_per_signal(s)
    assert sorted(got) == sorted(want)
    for name, (t, v) in want.items():
        assert got[name][0] == t and math.copysign(1, got[name][1]) == math.copysign(1, v)
        assert got[name][1] == v


def test_derived_state_and_late_data_never_rolls_back() -> None:
    st = vs.new_state("VIN1", "dev-1")
    assert vs.apply_batch(
        st,
        batch(
            [(vs.SPEED, 10, 55.0), (vs.ENGINE_RPM, 10, 2100.0), (vs.LATITUDE, 10, 48.1),
             (vs.LONGITUDE, 11, 11.5), (vs.ODOMETER, 10, 12_345_600.0)]
        ),
    )  # fmt: skip
    assert st["ignition"] is True and st["moving"] is True
    assert st["location"] == {"lat": 48.1, "lon": 11.5, "ts_us": 11}
    assert st["odometer_km"] == 12345.6 and st["last_seen_us"] == 11
    assert not vs.apply_batch(st, batch([(vs.SPEED, 5, 0.0)]))  # older: ignored
    assert st["moving"] is True
    vs.apply_batch(st, batch([(vs.SPEED, 20, 0.0), (vs.ENGINE_RPM, 20, 0.0)]))
    assert st["moving"] is False and st["ignition"] is False


def test_health_from_dtcs_battery_and_anomalies() -> None:
    st = vs.new_state("VIN1", "dev-1")
    vs.apply_batch(st, batch([(vs.BATTERY_V, 100, 12.6)]))
    assert st["health"] == "ok"
    vs.note_anomaly(st, 100)
    assert st["health"] == "warn"
    vs.set_dtcs(st, ["P0301"], 101)
    assert st["health"] == "fault" and st["active_dtcs"] == ["P0301"]
    vs.set_dtcs(st, [], 102)
    vs.apply_batch(st, batch([(vs.BATTERY_V, 10**12, 11.2)]))
    assert st["health"] == "fault"  # flat battery; the anomaly is long past


def test_publishing_is_throttled_on_source_time() -> None:
    st = vs.new_state("VIN1", "dev-1")
    published = []
    for t in np.arange(0, 2_000_000, 50_000).tolist():  # 20 Hz for 2 s of source time
        vs.apply_batch(st, batch([(vs.SPEED, t, float(t % 7))]))
        out = vs.take_update(st, 200_000)
        if out is not None:
            published.append(vs.loads(out)["published_us"])
    assert len(published) == 10
    assert min(np.diff(published)) >= 200_000
    assert vs.take_update(st, 200_000) is None  # nothing new


@pytest.mark.kernel
def test_latest_scan_is_compiled_and_refuses_a_signal_out_of_range() -> None:
    from stream.state_kernel import _latest_rows, latest_rows

    rows = latest_rows(np.array([0, 1, 0]), np.array([5, 1, 5]), np.array([1.0, 2.0, 3.0]), 3)
    assert rows.tolist() == [2, 1, -1]
    for bad in (3, -1):
        with pytest.raises(IndexError, match="signal index"):
            latest_rows(np.array([0, bad]), np.array([1, 2]), np.ones(2), 3)
    if not hasattr(_latest_rows, "signatures"):  # NUMBA_DISABLE_JIT=1: the plain function
        pytest.skip("numba's JIT is disabled in this run")
    assert _latest_rows.signatures
