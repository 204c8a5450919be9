"""The log source: candump, ASC and BLF through python-can's readers, decoded like a live bus."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, SourceUnavailableError
from core.frames import Frames
from core.wire import Samples
from edge.replay import resolve_mapping
from edge.sources.base import create_source, source_class
from edge.sources.can import FrameDecoder
from edge.sources.log import LogSource, parse_rate
from firmware_bridge.can_logs import concat_frames, write_log
from firmware_bridge.frames import read_candump
from tests.conftest import require_data

CAR = "canlogs/gt350"
DBC = f"{CAR}/ford_lincoln_base_pt.dbc"


def _sim_frames(seconds: float, t0_us: int = 1_700_000_000_000_000) -> Frames:
    from firmware_bridge.dbc import load_dbc
    from firmware_bridge.sim import SimulatedCar, default_dbc

    car = SimulatedCar(load_dbc(default_dbc(), strict=False), seed=1)
    return car.frames(t0_us, 40.0, seconds)


def _prius_mapping(tmp: Path) -> Path:
    from firmware_bridge.sim import PRIUS_VSS

    lines = ["vehicle: simulated Prius\nsignals:\n"]
    lines += [f"  - signal: {m}.{s}\n    vss: {v}\n" for (m, s), v in PRIUS_VSS.items()]
    p = tmp / "prius.yaml"
    p.write_text("".join(lines))
    return p


def _drain(src: LogSource, limit_s: float = 60) -> list[Samples]:
    out = []
    deadline = time.monotonic() + limit_s
    with src:
        while not src.exhausted and time.monotonic() < deadline:
            got = src.read(0.2)
            if len(got):
                out.append(got)
    assert src.exhausted, "the log was not drained in time"
    return out


def _as_dict(blocks: list[Samples]) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for b in blocks:
        for sig, ts, v in zip(b.sig.tolist(), b.ts_us.tolist(), b.value.tolist(), strict=True):
            out[(b.names[sig], ts)] = v
    return out


def _sim_source(tmp_path: Path, suffix: str, **opts: object) -> tuple[LogSource, Frames]:
    from firmware_bridge.sim import default_dbc

    frames = _sim_frames(2.0)
    log = tmp_path / f"sim{suffix}"
    write_log(log, frames)
    src = create_source(
        "log", "log", {"log": str(log), "dbc": str(default_dbc()), "strict": False,
                       "mapping": str(_prius_mapping(tmp_path)), **opts},
    )  # fmt: skip
    assert isinstance(src, LogSource)
    return src, frames


def test_registered_as_log() -> None:
    assert source_class("log") is LogSource


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf"])
def test_every_format_gives_what_the_decoder_gives_on_the_frames(
    tmp_path: Path, suffix: str
) -> None:
    from firmware_bridge.sim import default_dbc

    src, frames = _sim_source(tmp_path, suffix)
    got = _assert_vss(_drain(src))
    direct = FrameDecoder(
        default_dbc(), str(_prius_mapping(tmp_path)), strict=False, only_mapped=None
    ).decode(frames)
    assert got == _as_dict([direct]) and len(got) > 100
    assert src.frames_read == len(frames) and src.refused == 0


def _assert_vss(blocks: list[Samples]) -> dict[tuple[str, int], float]:
    for b in blocks:
        used = {b.names[i] for i in np.unique(b.sig).tolist()}
        assert all(n.startswith("Vehicle.") and ".Private." not in n for n in used)
    return _as_dict(blocks)


@pytest.mark.parametrize("suffix", [".asc", ".blf"])
def test_real_log_in_asc_and_blf_decodes_like_candump(tmp_path: Path, suffix: str) -> None:
    log, dbc = require_data(f"{CAR}/aconoff.log"), require_data(DBC)
    frames, _ = read_candump(log)
    other = tmp_path / f"aconoff{suffix}"
    write_log(other, frames)
    opts = {"dbc": str(dbc), "mapping": "gt350"}
    a = _as_dict(_drain(create_source("log", "a", {"log": str(log), **opts})))  # type: ignore[arg-type]
    b = _as_dict(_drain(create_source("log", "b", {"log": str(other), **opts})))  # type: ignore[arg-type]
    assert a == b and len(a) > 4000
    assert "Vehicle.Speed" in {name for name, _ in a}


def test_paced_replay_follows_the_log_clock(tmp_path: Path) -> None:
    # 2 s of log at 4x: about 0.5 s; "max" does not wait
    src, _ = _sim_source(tmp_path, ".log", rate=4, block_ms=50)
    t0 = time.monotonic()
    paced = _drain(src)
    took = time.monotonic() - t0
    assert 0.4 <= took < 3.0, took
    fast, _ = _sim_source(tmp_path, ".log", rate="max")
    assert _as_dict(_drain(fast)) == _as_dict(paced)  # pacing changes the timing, not the data


def test_restamp_moves_to_now_and_loop_keeps_time_going(tmp_path: Path) -> None:
    src, frames = _sim_source(tmp_path, ".log", rate="max", loop=True, restamp=True)
    seen: list[np.ndarray] = []
    src.frame_hooks.append(lambda f: seen.append(f.ts_us.copy()))
    with src:
        got = 0
        deadline = time.monotonic() + 30
        while src.replay_loops < 2 and time.monotonic() < deadline:
            got += len(src.read(0.2))
        assert src.replay_loops >= 2 and not src.exhausted
    ts = np.concatenate(seen)
    assert abs(int(ts[0]) - time.time() * 1e6) < 60e6  # stamped live
    assert (np.diff(ts) >= 0).all()  # each pass follows the one before
    assert src.frames_read >= 2 * len(frames)


HOSTILE = [
    "(1584656584.423089) can0 581#8100FFFFFFFFFFFF",
    "(1584656584.42",  # truncated
    "garbage here",
    "(1584656584.428101) can0 123456789#00",  # 33-bit id
    "(1584656584.428102) can0 7FFFFFFF#00",  # 31-bit id (3FFFFFFF would be an error frame)
    "(1584656584.428103) can0 123##1" + "AB" * 72,  # 72 bytes > 64
    "(1584656584.428104) can0 123#00112233445566778899",  # 10 bytes, classic
    "(nan) can0 041#00",
    "(1e400) can0 041#00",
    "(1584656584.428107) can0 041#0000000000000000",
    "x" * 100_000,  # one huge line
    "(1584656584.500000) can0 041#0100000000000000",
]


def test_hostile_candump_is_counted_and_skipped_with_file_and_line(tmp_path: Path) -> None:
    from firmware_bridge.sim import default_dbc

    log = tmp_path / "hostile.log"
    log.write_text("\n".join(HOSTILE) + "\n")
    src = create_source(
        "log", "h", {"log": str(log), "dbc": str(default_dbc()), "strict": False, "mapping": "none"}
    )
    assert isinstance(src, LogSource)
    with pytest.raises(ConfigError):  # "none" is the CLI's word; the source wants a file or name
        src.open()
    src = create_source("log", "h", {"log": str(log), "dbc": str(default_dbc()), "strict": False})
    assert isinstance(src, LogSource)
    _drain(src)
    assert src.frames_read == 3
    assert src.refused == 9
    c = src.log_counters
    assert (c.bad_id, c.oversized) == (2, 2)
    examples = src.refused_examples()
    assert examples[0].startswith(f"{log}:2:")
    assert any(e.startswith(f"{log}:4:") and "wider than 29 bits" in e for e in examples)


def test_truncated_and_garbage_blf_are_counted_not_raised(tmp_path: Path) -> None:
    from firmware_bridge.sim import default_dbc

    frames = concat_frames([_sim_frames(2.0)] * 3)
    path = tmp_path / "cut.blf"
    write_log(path, frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = create_source("log", "b", {"log": str(path), "dbc": str(default_dbc()), "strict": False})
    assert isinstance(src, LogSource)
    _drain(src)
    assert 0 < src.frames_read < len(frames) and src.refused >= 1
    junk = tmp_path / "junk.blf"
    junk.write_bytes(b"LOGG" + bytes(100))
    src = create_source("log", "j", {"log": str(junk), "dbc": str(default_dbc()), "strict": False})
    assert isinstance(src, LogSource)
    _drain(src)
    assert src.frames_read == 0 and src.refused == 1


def test_bad_options_and_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rate must be"):
        create_source("log", "x", {"log": "a.log", "dbc": "a.dbc", "rate": "fast"})
    with pytest.raises(ConfigError, match="rate must be > 0"):
        create_source("log", "x", {"log": "a.log", "dbc": "a.dbc", "rate": 0})
    with pytest.raises(ConfigError, match="source 'x' \\(type log\\)"):
        create_source("log", "x", {"dbc": "a.dbc"})
    src = create_source("log", "x", {"log": str(tmp_path / "nope.asc"), "dbc": "a.dbc"})
    with pytest.raises(SourceUnavailableError, match=r"nope\.asc does not exist"):
        src.open()
    assert parse_rate("real") == 1.0 and parse_rate("max") == 0.0 and parse_rate("2.5") == 2.5


def test_replay_picks_the_shipped_mapping_for_the_dbc(tmp_path: Path) -> None:
    dbc = "ford_lincoln_base_pt.dbc"  # gt350 and fiesta_st share it: the log's folder decides
    assert resolve_mapping("auto", dbc, tmp_path / "gt350" / "x.log") == "gt350"
    assert resolve_mapping(None, dbc, tmp_path / "fiesta_st" / "x.log") == "fiesta_st"
    with pytest.raises(ConfigError, match=r"several shipped VSS mappings.*--mapping"):
        resolve_mapping("auto", dbc, tmp_path / "x.log")
    assert resolve_mapping("auto", "hyundai_kia_generic.dbc", tmp_path / "x.log") == "forte"
    assert resolve_mapping("none", dbc, tmp_path / "x.log") is None
    assert resolve_mapping("my.yaml", dbc, tmp_path / "x.log") == "my.yaml"
    with pytest.raises(ConfigError, match=r"no shipped VSS mapping.*--mapping none"):
        resolve_mapping("auto", "other.dbc", tmp_path / "x.log")
