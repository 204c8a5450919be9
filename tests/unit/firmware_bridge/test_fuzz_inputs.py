"""Hypothesis fuzzing of every input parser here: candump lines, ASC/BLF logs, mapping YAML."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from firmware_bridge.can_logs import read_log, write_log
from firmware_bridge.frames import parse_candump_lines
from firmware_bridge.vss import VssMapping, load_mapping

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_n = itertools.count()

hexdigits = st.sampled_from("0123456789abcdefABCDEF")
junk_line = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda ts, iface, ident, sep, data: f"{ts} {iface} {ident}{sep}{data}",
        st.one_of(st.from_regex(r"\(\d{1,14}\.\d{0,8}\)", fullmatch=True), st.text(max_size=12)),
        st.sampled_from(["can0", "vcan1", "", "a b"]),
        st.one_of(st.text(hexdigits, max_size=10), st.text(max_size=9)),
        st.sampled_from(["#", "##", "#R", "##1", "#r", ""]),
        st.one_of(st.text(hexdigits, max_size=140), st.text(max_size=20)),
    ),
)


def _path(tmp: Path, suffix: str) -> Path:
    return tmp / f"f{next(_n)}{suffix}"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(st.lists(junk_line, max_size=30))
def test_candump_parser_never_raises_and_accounts_for_every_line(lines: list[str]) -> None:
    frames, rep = parse_candump_lines(lines, "fuzz")
    counted = [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    # str.splitlines-style breaks inside a "line" are the caller's business; count what we saw
    assert rep.lines == len(counted)
    assert rep.frames + rep.bad_lines + rep.remote_frames + rep.error_frames == rep.lines
    assert len(frames) == rep.frames
    assert frames.data.shape[1] in (8, 64)
    assert (frames.dlc <= frames.data.shape[1]).all()
    assert (frames.can_id <= 0x1FFFFFFF).all()


frame = st.tuples(
    st.integers(0, 10**12 - 1),  # the reader takes at most 12 digits of seconds
    st.integers(0, 999_999),
    st.booleans(),
    st.integers(0, 0x1FFFFFFF),
    st.binary(max_size=8),
)


@FUZZ
@given(st.lists(frame, max_size=20))
def test_valid_candump_lines_parse_exactly(spec: list[tuple[int, int, bool, int, bytes]]) -> None:
    lines = []
    for sec, usec, ext, ident, data in spec:
        ident = ident if ext else ident & 0x7FF
        ident_s = f"{ident:08X}" if ext else f"{ident:03X}"
        lines.append(f"({sec}.{usec:06d}) can0 {ident_s}#{data.hex()}")
    frames, rep = parse_candump_lines(lines)
    keep = [s for s in spec if not (s[2] and s[3] & 0x20000000)]  # CAN_ERR_FLAG: error frames
    assert rep.bad_lines == 0 and len(frames) == len(keep)
    assert frames.ts_us.tolist() == [s * 1_000_000 + u for s, u, *_ in keep]
    assert frames.can_id.tolist() == [i if e else i & 0x7FF for _, _, e, i, _ in keep]
    assert [bytes(r[:n]) for r, n in zip(frames.data, frames.dlc, strict=True)] == [
        d for *_, d in keep
    ]


@FUZZ
@given(st.lists(junk_line, max_size=20))
def test_python_can_candump_replay_never_raises(tmp: Path, lines: list[str]) -> None:
    p = _path(tmp, ".log")
    p.write_text("\n".join(lines), encoding="utf-8", errors="replace")
    frames, counters = read_log(p)
    assert len(frames) == counters.frames


asc_line = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda t, ch, ident, d, dlc, data: f"{t} {ch} {ident} Rx {d} {dlc} {data}",
        st.one_of(st.floats(0, 1e6).map(lambda x: f"{x:.6f}"), st.text(max_size=8)),
        st.sampled_from(["1", "2", "CANFD", "x", ""]),
        st.one_of(st.text(hexdigits, min_size=1, max_size=8), st.just("1FFx")),
        st.sampled_from(["d", "r", "D", ""]),
        st.one_of(st.integers(-2, 70).map(str), st.text(max_size=2)),
        st.text(st.sampled_from("0123456789ABCDEF xz"), max_size=40),
    ),
)


@FUZZ
@given(st.lists(asc_line, max_size=20), st.booleans())
def test_asc_replay_never_raises(tmp: Path, lines: list[str], with_header: bool) -> None:
    p = _path(tmp, ".asc")
    header = (
        "date Thu Mar 19 22:23:04.423 2020\nbase hex  timestamps absolute\n"
        "internal events logged\nBegin Triggerblock Thu Mar 19 22:23:04.423 2020\n"
    )
    p.write_text((header if with_header else "") + "\n".join(lines), errors="replace")
    frames, counters = read_log(p)
    assert len(frames) == counters.frames


@pytest.fixture(scope="module")
def good_blf(tmp: Path) -> bytes:
    lines = [f"(1584656584.{i:06d}) can0 {0x100 + i % 50:03X}#{i:016X}" for i in range(3000)]
    frames, _ = parse_candump_lines(lines)
    p = tmp / "good.blf"
    write_log(p, frames)
    return p.read_bytes()


@FUZZ
@given(st.data())
def test_blf_replay_survives_corruption(tmp: Path, good_blf: bytes, data: st.DataObject) -> None:
    blob = bytearray(good_blf)
    for _ in range(data.draw(st.integers(0, 5))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    p = _path(tmp, ".blf")
    p.write_bytes(bytes(blob[:cut]) + data.draw(st.binary(max_size=64)))
    frames, counters = read_log(p)
    assert len(frames) == counters.frames <= 3000 + 64
    assert frames.dlc.dtype == np.uint8


yaml_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["Vehicle.Speed", "Vehicle.Body.Hood.IsOpen", "M.S", "km", "m"]),
    ),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["signal", "vss", "scale", "offset", "unit", "map", "from", "to"]),
                st.integers(-3, 3),
                st.text(max_size=5),
            ),
            kids,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@FUZZ
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["signal", "vss", "scale", "map", "unit", "offset"]),
            yaml_value,
            max_size=6,
        ),
        max_size=5,
    )
)
def test_mapping_loader_raises_only_config_errors(tmp: Path, signals: list[object]) -> None:
    p = _path(tmp, ".yaml")
    p.write_text(yaml.safe_dump({"vehicle": "fuzz", "signals": signals}))
    try:
        mapping = load_mapping(p)
    except ConfigError as err:
        assert str(p) in str(err)
    else:
        assert isinstance(mapping, VssMapping)
        assert len(mapping.signals) == len(signals)


@FUZZ
@given(st.text(max_size=200))
def test_mapping_loader_on_arbitrary_text(tmp: Path, text: str) -> None:
    p = _path(tmp, ".yaml")
    p.write_text(text, encoding="utf-8", errors="replace")
    try:
        load_mapping(p)
    except ConfigError as err:
        assert str(p) in str(err)
