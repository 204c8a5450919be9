"""Log replay through python-can: candump/ASC/BLF round trips, blocks, corrupt records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import SourceUnavailableError
from core.frames import Frames
from firmware_bridge.can_logs import concat_frames, read_log, replay_log, write_log
from firmware_bridge.frames import parse_candump_lines, read_candump
from tests.conftest import require_data

SAMPLE = [
    "(1584656584.423089) can0 581#8100FFFFFFFFFFFF",
    "(1584656584.428101) can0 041#0000000000000000",
    "(1584656584.429003) can0 12345678#0011",
    "(1584656584.500000) can0 7FF#",
    "(1584656585.000001) can0 1FFFFFFF#DEADBEEF",
    "(1584656585.123456) can0 333##1" + "AB" * 64,
]


def _sample() -> Frames:
    frames, rep = parse_candump_lines(SAMPLE)
    assert rep.bad_lines == 0
    return frames


def assert_same(a: Frames, b: Frames) -> None:
    assert a.ts_us.tolist() == b.ts_us.tolist()
    assert a.can_id.tolist() == b.can_id.tolist()
    assert a.extended.tolist() == b.extended.tolist()
    assert a.dlc.tolist() == b.dlc.tolist()
    width = max(a.data.shape[1], b.data.shape[1])
    pa = np.pad(a.data, ((0, 0), (0, width - a.data.shape[1])))
    pb = np.pad(b.data, ((0, 0), (0, width - b.data.shape[1])))
    assert np.array_equal(pa, pb)


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf"])
def test_round_trip_keeps_ids_data_and_microseconds(tmp_path: Path, suffix: str) -> None:
    frames = _sample()
    path = tmp_path / f"sample{suffix}"
    assert write_log(path, frames) == len(frames)
    back, counters = read_log(path)
    assert counters.bad_records == 0
    assert_same(frames, back)


@pytest.mark.parametrize("suffix", [".asc", ".blf"])
def test_real_candump_log_round_trips_through_asc_and_blf(tmp_path: Path, suffix: str) -> None:
    log = require_data("canlogs/gt350/keyon.log")
    frames, _ = read_candump(log)
    path = tmp_path / f"keyon{suffix}"
    write_log(path, frames)
    back, counters = read_log(path)
    assert counters.bad_records == 0 and len(back) == len(frames) > 10_000
    assert_same(frames, back)


def test_python_can_reads_candump_like_the_fast_reader(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    path.write_text("\n".join(SAMPLE) + "\n")
    fast, _ = read_candump(path)
    slow, _ = read_log(path)
    assert_same(fast, slow)


def test_blocks_by_count_and_by_log_time(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    path.write_text("\n".join(SAMPLE) + "\n")
    by_count = list(replay_log(path, block_frames=4))
    assert [len(b) for b in by_count] == [4, 2]
    by_time = list(replay_log(path, block_frames=100, block_ms=50))
    # 0.423..0.429 | 0.500 | 1.000 and 1.123 are 123 ms apart
    assert [len(b) for b in by_time] == [3, 1, 1, 1]
    assert_same(concat_frames(by_time), _sample())


def test_corrupt_candump_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.log"
    lines = [*SAMPLE[:2], "garbage", "(12.5) can0 04G#00", "(xx) can0 041#00", *SAMPLE[2:4]]
    path.write_text("\n".join(lines) + "\n")
    frames, counters = read_log(path)
    assert len(frames) == 4
    assert counters.bad_records == 3
    assert counters.examples[0].startswith(f"{path}:3:")


def test_corrupt_asc_line_costs_one_record(tmp_path: Path) -> None:
    path = tmp_path / "s.asc"
    write_log(path, _sample())
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "Rx" in line) + 1
    lines.insert(at, " 0.006000 1  41              Rx   d 8 00 zz 00 00 00 00 00 00")
    path.write_text("\n".join(lines) + "\n")
    frames, counters = read_log(path)
    assert counters.bad_records == 1 and f":{at + 1}:" in counters.examples[0]
    assert_same(frames, _sample())  # absolute timestamps still right after resuming


def test_truncated_blf_keeps_what_is_there_and_says_so(tmp_path: Path) -> None:
    frames = concat_frames([_sample()] * 400)
    path = tmp_path / "s.blf"
    write_log(path, frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    back, counters = read_log(path)
    assert counters.bad_records == 1 and "truncated" in counters.examples[0]
    assert len(back) < len(frames)


def test_garbage_blf_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "junk.blf"
    path.write_bytes(b"LOGG" + bytes(100))
    frames, counters = read_log(path)
    assert len(frames) == 0 and counters.bad_records == 1


def test_missing_log_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailableError, match="does not exist"):
        read_log(tmp_path / "nope.asc")


def test_canread_bench_reports_every_reader(tmp_path: Path) -> None:
    from carpulse.plugins import BENCHMARKS, load

    car = tmp_path / "car"
    car.mkdir()
    (car / "a.log").write_text("\n".join(SAMPLE[:5]) + "\n")
    (car / "b.log").write_text("\n".join(SAMPLE) + "\n")
    out = load(BENCHMARKS, "benchmark", "canread")(["--data", str(tmp_path), "--repeat", "1"])
    assert (out["logs"], out["frames"]) == (2, 11)
    for key in ("candump_fast", "candump_python_can", "asc", "blf"):
        assert out[f"{key}_frames_per_s"] > 0
    assert out["vss_transform_samples_per_s"] > 0
