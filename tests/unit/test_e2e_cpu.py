"""``carpulse bench e2e``'s CPU figures: own_cpu_ratio per step, the headline step, medians."""

from __future__ import annotations

import pytest

from carpulse.bench.e2e import headline_cpu, medians, own_cpu


def _step(offered: int, kept: bool, bridge: float, worker: float, influx: float) -> dict:
    per = {"bridge": bridge, "worker": worker, "influxdb": influx, "kafka-1": 0.5}
    return {"offered": offered, "kept_up": kept, **own_cpu(per)}


def test_own_cpu_is_bridge_plus_worker_over_influxdb() -> None:
    s = own_cpu({"bridge": 0.4, "worker": 1.0, "influxdb": 1.4, "kafka-1": 9.0})
    assert s["own_cpu_us_per_sample"] == pytest.approx(1.4)
    assert s["own_cpu_ratio"] == pytest.approx(1.0)
    assert own_cpu({"bridge": 0.4, "worker": 1.0})["own_cpu_ratio"] is None  # no InfluxDB pid


def test_headline_is_the_highest_step_that_kept_up() -> None:
    steps = [
        _step(20_000, True, 1.0, 6.0, 2.0),
        _step(30_000, True, 0.5, 1.5, 1.0),
        _step(45_000, False, 0.1, 0.1, 1.0),  # lagged: not the headline
    ]
    h = headline_cpu(steps)
    assert h["own_cpu_step_offered"] == 30_000
    assert h["own_cpu_ratio"] == pytest.approx(2.0)
    assert h["worker_cpu_us_per_sample"] == 1.5
    # none kept up: the first step, so a failing run still says what it cost
    assert headline_cpu([_step(20_000, False, 1.0, 1.0, 4.0)])["own_cpu_ratio"] == 0.5


def test_medians_over_runs_keep_every_run() -> None:
    runs = [{"own_cpu_ratio": r, "samples_per_s": 1000 * r} for r in (0.9, 0.4, 0.6)]
    m = medians(runs)
    assert m["own_cpu_ratio"] == pytest.approx(0.6)
    assert m["samples_per_s"] == pytest.approx(600)
    assert m["p99_ms"] is None and m["runs"] == runs
