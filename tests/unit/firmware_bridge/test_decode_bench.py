"""``carpulse bench decode`` on a one-log corpus (symlinked, never copied) and its compile timer."""

from __future__ import annotations

from pathlib import Path

import pytest

from carpulse.bench.decode import bench_decode, compile_seconds, decode_figures
from carpulse.plugins import BENCHMARKS, load
from core.errors import ConfigError
from tests.conftest import require_data


def test_bench_decode_reports_the_figures(tmp_path: Path) -> None:
    real = require_data("canlogs/gt350")
    car = tmp_path / "gt350"
    car.mkdir()
    (car / "ford_lincoln_base_pt.dbc").symlink_to(real / "ford_lincoln_base_pt.dbc")
    (car / "editedlog.log").symlink_to(real / "editedlog.log")
    out = decode_figures(tmp_path, repeat=2, measure_compile=False)
    assert out["frames"] == 495 and out["logs"] == 1
    assert out["mismatches"] == 0 and out["stats_mismatches"] == 0
    assert out["samples"] > 3000
    assert out["frames_per_s"] > 0 and out["cantools_frames_per_s"] > 0
    assert out["speedup"] == pytest.approx(
        out["frames_per_s"] / out["cantools_frames_per_s"], rel=0.05
    )
    assert out["compile_s"] is None
    assert load(BENCHMARKS, "benchmark", "decode") is bench_decode


def test_bench_decode_without_logs_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no CAN logs"):
        bench_decode(["--data", str(tmp_path), "--repeat", "1", "--no-compile-time"])


def test_compile_time_is_measured_in_a_fresh_interpreter() -> None:
    seconds = compile_seconds()
    assert 0.0 < seconds < 120.0
