"""The stream's configured anomaly detector: episodes, evidence windows, cool-down, checkpoints."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from core.config import AnomalySettings
from core.errors import ConfigError
from core.wire import Samples
from models.kernels.zscore import _zscore_loop
from stream.anomaly import AnomalyTracker, parse_signals
from stream.partition_models import PartitionModels
from stream.state import BATTERY_V, SPEED

S = 1_000_000


def series(n: int, spikes: dict[int, float], base: float = 50.0) -> np.ndarray:
    rng = np.random.default_rng(7)
    v = base + rng.normal(0, 1.0, n)
    for i, x in spikes.items():
        v[i] = x
    return v


def feed(tr: AnomalyTracker, v: np.ndarray, cuts: list[int], slot: int = 0) -> list[dict]:
    events = []
    t = np.arange(len(v), dtype=np.int64) * S
    for a, b in zip([0, *cuts], [*cuts, len(v)], strict=True):
        s = np.full(b - a, slot, np.int64)
        events += [rec for _, rec in tr.update(s, v[a:b], t[a:b]).events]
    return events


def test_a_spike_is_one_event_with_its_evidence_and_the_cooldown_holds_the_next() -> None:
    assert hasattr(_zscore_loop, "signatures")  # a numba dispatcher, not plain Python
    v = series(400, {200: 500.0, 230: 500.0, 350: 500.0})
    tr = AnomalyTracker("robust_zscore", threshold=6.0, cooldown_s=100.0, window=20)
    events = feed(tr, v, [])
    # 230 is 30 s after 200: inside the cool-down; 350 is 150 s after: a new episode
    assert [e["ts_us"] for e in events] == [200 * S, 350 * S]
    e = events[0]
    assert e["value"] == 500.0 and e["score"] > 6.0 and e["detector"] == "robust_zscore"
    assert e["window"]["ts_us"] == [i * S for i in range(181, 201)]
    assert e["window"]["values"] == v[181:201].tolist()


def test_micro_batch_boundaries_change_nothing() -> None:
    v = series(400, {200: 500.0, 350: 500.0})
    whole = feed(AnomalyTracker(cooldown_s=100.0, window=30), v, [])
    split = feed(AnomalyTracker(cooldown_s=100.0, window=30), v, [13, 190, 195, 201, 340])
    assert len(whole) == 2 and whole == split  # the ring carries the evidence across batches


def test_score_points_are_each_slots_highest_score_of_the_batch() -> None:
    tr = AnomalyTracker(window=5)
    v = np.r_[series(100, {60: 400.0}), series(100, {})]
    s = np.r_[np.zeros(100, np.int64), np.ones(100, np.int64)]
    t = np.r_[np.arange(100), np.arange(100)].astype(np.int64) * S
    hits = tr.update(s, v, t)
    points = {slot: (ts, score) for slot, ts, score in hits.scores}
    assert set(points) == {0, 1} and points[0][0] == 60 * S and points[0][1] > 6.0
    assert points[1][1] < 6.0
    assert [slot for slot, _ in hits.events] == [0]


def test_checkpoint_round_trip_and_a_changed_detector_starts_fresh() -> None:
    v = series(300, {250: 500.0})
    a = AnomalyTracker(cooldown_s=1000.0, window=10)
    feed(a, v[:200], [])
    b = AnomalyTracker(cooldown_s=1000.0, window=10)
    assert b.load(a.to_bytes())
    t = np.arange(200, 300, dtype=np.int64) * S
    s = np.zeros(100, np.int64)
    ea, eb = a.update(s, v[200:], t).events, b.update(s, v[200:], t).events
    assert ea == eb and len(ea) == 1 and ea[0][1]["window"]["ts_us"][0] == 241 * S
    other = AnomalyTracker("nn_likelihood", window=10)
    assert not other.load(a.to_bytes()) and len(other.ring_n) == 0
    from core.errors import DecodeError

    with pytest.raises(DecodeError):
        b.load(b"\x93garbage")
    with pytest.raises(ConfigError):
        AnomalyTracker("nope")


def test_artime_nn_flags_a_level_shift_after_calibration() -> None:
    rng = np.random.default_rng(3)
    n = 900
    x = np.sin(np.arange(n) / 8.0) * 10 + 50 + rng.normal(0, 0.3, n)
    x[700:] += 40.0  # far outside the calibrated range
    t0 = time.perf_counter()
    tr = AnomalyTracker("artime_nn", threshold=0.5, cooldown_s=1e6, window=16, calib=300)
    slots = np.zeros(n, np.int64)
    hits = tr.update(slots, x, np.arange(n, dtype=np.int64) * S)
    assert time.perf_counter() - t0 < 60
    assert len(hits.events) == 1
    e = hits.events[0][1]
    assert 700 * S <= e["ts_us"] < 760 * S and e["detector"] == "artime_nn"
    assert tr.bytes_per_slot() > 100_000  # why it is not the default


def test_artime_spatial_takes_the_largest_part_and_flags_a_new_extreme_at_once() -> None:
    rng = np.random.default_rng(3)
    n = 900
    x = np.sin(np.arange(n) / 8.0) * 10 + 50 + rng.normal(0, 0.3, n)
    x[700:] += 40.0  # far outside the calibrated range
    tr = AnomalyTracker("artime_spatial", threshold=0.325, cooldown_s=1e6, window=16, calib=300)
    assert tr.kind.largest and tr.kind.threshold == 0.325
    slots = np.zeros(n, np.int64)
    t = np.arange(n, dtype=np.int64) * S
    score = tr.scores(slots, x, t)
    art, sp = (
        AnomalyTracker("artime", window=16, calib=300),
        AnomalyTracker("artime_spatial", window=16, calib=300),
    )
    np.testing.assert_array_equal(
        score, np.maximum(art.scores(slots, x, t), sp.parts[1].score_learn_many(slots, x))
    )
    assert score[700] == 1.0  # the first value beyond the range seen so far, not a few rows later
    tr2 = AnomalyTracker("artime_spatial", threshold=0.325, cooldown_s=1e6, window=16, calib=300)
    hits = tr2.update(slots, x, t)
    assert [e["ts_us"] for _, e in hits.events] == [700 * S]
    restored = AnomalyTracker(
        "artime_spatial", threshold=0.325, cooldown_s=1e6, window=16, calib=300
    )
    assert restored.load(tr2.to_bytes())
    # the spatial part costs three numbers per slot on top of ARTime
    assert restored.bytes_per_slot() == tr2.bytes_per_slot() == art.bytes_per_slot() + 24


def test_families_pick_signals() -> None:
    fam = ["Vehicle.Powertrain.", SPEED]
    names = [SPEED, "Vehicle.Powertrain.CombustionEngine.ECT", BATTERY_V, "Vehicle.SpeedX"]
    assert parse_signals(fam, names) == [True, True, False, False]


def test_partition_models_emit_events_score_lines_and_bound_their_slots() -> None:
    cfg = AnomalySettings(signals=[SPEED], max_slots=1, window=8, cooldown_s=60.0)
    m = PartitionModels(schedule=None, anomaly=cfg)
    n = 120
    v = series(n, {100: 400.0}, base=80.0)
    t = np.arange(n, dtype=np.int64) * S
    sp = Samples.from_columns([SPEED, BATTERY_V], np.zeros(n, np.int64), t, v)
    other = Samples.from_columns([SPEED], np.zeros(n, np.int64), t, v)
    out = m.update([("VIN1", sp), ("VIN2", other)])
    assert m.zslots == {("VIN1", SPEED): 0}
    assert out.unwatched == n  # VIN2's speed: no slot left
    [(vin, raw)] = out.anomalies
    rec = json.loads(raw)
    assert (vin, rec["signal"], rec["ts_us"]) == ("VIN1", SPEED, 100 * S)
    assert len(rec["window"]["values"]) == 8 and rec["window"]["values"][-1] == 400.0
    [line] = out.anomaly_lines
    assert line.startswith("anomaly,vin=VIN1,signal=Vehicle.Speed,detector=robust_zscore score=")
    assert line.endswith(f",threshold=6.0,events=1.0 {100 * S}")
    again = PartitionModels.from_bytes(m.to_bytes(), anomaly=cfg)
    assert again.anomaly.ring_n.tolist() == m.anomaly.ring_n.tolist() == [n]


def test_stream_anomaly_section_is_read_from_toml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from core.config import load_settings

    f = tmp_path / "c.toml"
    f.write_text(
        '[stream.anomaly]\ndetector = "artime_nn"\nmax_slots = 12\nsignals = ["Vehicle."]\n'
    )
    a = load_settings(f).stream.anomaly
    assert (a.detector, a.max_slots, a.signals, a.cooldown_s) == (
        "artime_nn",
        12,
        ["Vehicle."],
        600.0,
    )
    f.write_text('[stream.anomaly]\ndetector = "magic"\n')
    with pytest.raises(ConfigError):
        load_settings(f)
