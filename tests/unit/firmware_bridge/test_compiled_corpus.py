"""The compiled DBC decoder on the real data: every DBC cantools loads, and the real CAN logs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cantools
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carpulse.bench.decode import count_mismatches
from core.datasets import CAR_DBC
from core.errors import ConfigError
from firmware_bridge.compiled import CompiledDecoder
from firmware_bridge.dbc import CantoolsDecoder, load_dbc
from firmware_bridge.frames import read_candump
from tests.conftest import require_data
from tests.reference.dbc_decode import reference_decode, same_record
from tests.unit.firmware_bridge.test_compiled_decoder import frames_of

JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"

# The DBCs of ../shared/data that cantools 45.1 cannot load at all, strict or not (checked below).
UNLOADABLE = {
    "dbc/chrysler_cusw.dbc",
    "dbc/fca_giorgio.dbc",
    "dbc/gm_global_a_lowspeed.dbc",
    "dbc/mazda_2017.dbc",
    "dbc/psa_aee2010_r3.dbc",
    "dbc/rivian_primary_actuator.dbc",
    "dbc/tesla_can.dbc",
    "dbc/toyota_2017_ref_pt.dbc",
    "dbc/toyota_radar_dsu_tssp.dbc",
    "dbc/vw_mqbevo.dbc",
    "canlogs/durango/fca_giorgio.dbc",
}


class Corpus:
    """Every DBC file of the shared data, loaded once (strict first, then strict=False)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[str, Any] = {}
        self.strict: dict[str, bool] = {}
        self.unloadable: dict[str, str] = {}
        paths = sorted(root.glob("dbc/*.dbc")) + sorted(root.glob("canlogs/*/*.dbc"))
        for path in paths:
            rel = str(path.relative_to(root))
            for strict in (True, False):
                try:
                    self.dbs[rel] = load_dbc(path, strict=strict)
                    self.strict[rel] = strict
                    break
                except ConfigError as err:
                    self.unloadable[rel] = str(err)
            if rel in self.dbs:
                self.unloadable.pop(rel, None)
        self.names = sorted(self.dbs)
        self._decoders: dict[tuple[str, bool], CompiledDecoder] = {}

    def decoder(self, rel: str, allow_truncated: bool) -> CompiledDecoder:
        key = (rel, allow_truncated)
        if key not in self._decoders:
            self._decoders[key] = CompiledDecoder(self.dbs[rel], allow_truncated=allow_truncated)
        return self._decoders[key]


_CORPUS: list[Corpus] = []


def corpus() -> Corpus:
    if not _CORPUS:
        require_data("dbc")
        _CORPUS.append(Corpus(require_data("dbc").parent))
    return _CORPUS[0]


def test_dbcs_cantools_cannot_load_are_reported_clearly() -> None:
    c = corpus()
    assert set(c.unloadable) == UNLOADABLE
    for rel, why in c.unloadable.items():
        assert rel.split("/")[-1] in why and "cannot be loaded" in why
    assert len(c.dbs) >= 50
    print("\nunloadable DBCs (strict and non-strict):", *sorted(c.unloadable), sep="\n  ")


def test_every_loadable_dbc_compiles_without_fallback() -> None:
    c = corpus()
    for rel in c.names:
        dec = c.decoder(rel, False)
        assert not dec.fallback_messages, (rel, dec.fallback_messages)
        paths = {dec.signal_path(m.name, s.name) for m in dec.plan.messages for s in m.signals}
        # Signals outside cantools' codec tree (a child of a non-multiplexer) never decode.
        assert set(dec.names) <= paths and len(dec.names) >= 0.99 * len(paths)


@st.composite
def corpus_frames(draw: st.DrawFn) -> tuple[str, Any]:
    c = corpus()
    rel = draw(st.sampled_from(c.names))
    msgs = c.dbs[rel].messages
    rows = []
    for _ in range(draw(st.integers(1, 16))):
        m = draw(st.sampled_from(msgs))
        size = draw(
            st.sampled_from([m.length] * 4 + [max(0, m.length - 1), 0, min(64, m.length + 2)])
        )
        frame_id, ext = int(m.frame_id), bool(m.is_extended_frame)
        if draw(st.integers(0, 9)) == 0:  # a neighbouring id, most likely unknown
            frame_id = min(frame_id + 1, 0x1FFFFFFF if ext else 0x7FF)
        rows.append((frame_id, ext, draw(st.binary(min_size=size, max_size=size))))
    return rel, frames_of(rows, width=64)


@pytest.mark.kernel
@given(case=corpus_frames())
@settings(
    max_examples=int(os.environ.get("CARPULSE_FUZZ_EXAMPLES", 60 if JIT_OFF else 300)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_random_frames_of_corpus_dbcs_match_cantools(case: tuple[str, Any]) -> None:
    rel, frames = case
    c = corpus()
    for trunc in (False, True):
        got, got_stats = c.decoder(rel, trunc).decode(frames)
        want, want_stats = reference_decode(c.dbs[rel], frames, allow_truncated=trunc)
        assert got_stats == want_stats
        records = got.records()
        assert len(records) == len(want)
        assert all(same_record(a, b) for a, b in zip(records, want, strict=True))


@pytest.mark.kernel
def test_every_message_of_every_dbc_matches_cantools() -> None:
    """Deterministic sweep: each message of each DBC, random full, short and long payloads."""
    c = corpus()
    rng = np.random.default_rng(2026)
    checked = 0
    for rel in c.names:
        rows = []
        for m in c.dbs[rel].messages:
            for size in (m.length, m.length, max(0, m.length - 1), min(64, m.length + 1)):
                rows.append((int(m.frame_id), bool(m.is_extended_frame), rng.bytes(size)))
        frames = frames_of(rows, width=64)
        for trunc in (False, True):
            got, got_stats = c.decoder(rel, trunc).decode(frames)
            want, want_stats = reference_decode(c.dbs[rel], frames, allow_truncated=trunc)
            assert got_stats == want_stats, rel
            records = got.records()
            assert len(records) == len(want), rel
            bad = [(a, b) for a, b in zip(records, want, strict=True) if not same_record(a, b)]
            assert not bad, (rel, bad[:3])
            checked += len(want)
    assert checked > 100_000


def _car_logs() -> list[tuple[str, Path, Path]]:
    root = require_data("canlogs")
    out = []
    for car, dbc in sorted(CAR_DBC.items()):
        out += [(car, log, root / car / dbc) for log in sorted((root / car).glob("*.log"))]
    return out


@pytest.mark.slow
def test_real_logs_decode_identically() -> None:
    dbs: dict[Path, Any] = {}
    total = frames_seen = 0
    for _car, log, dbc in _car_logs():
        if dbc not in dbs:
            dbs[dbc] = (load_dbc(dbc, strict=False), None)
            dbs[dbc] = (dbs[dbc][0], CompiledDecoder(dbs[dbc][0]))
        db, dec = dbs[dbc]
        frames, _ = read_candump(log)
        got, got_stats = dec.decode(frames)
        want, want_stats = CantoolsDecoder(db).decode(frames)
        assert got_stats == want_stats, log
        assert count_mismatches(got, want) == 0, log
        total += len(want)
        frames_seen += len(frames)
    assert len(dbs) == len(CAR_DBC) and frames_seen > 900_000 and total > 4_000_000


def test_count_mismatches_sees_every_kind_of_difference() -> None:
    from core.wire import Samples

    a = Samples.from_columns(["x", "y"], [0, 1, 0], [1, 2, 3], [1.0, float("nan"), -0.0])
    assert count_mismatches(a, a) == 0
    renamed = Samples.from_columns(["y", "x"], [1, 0, 1], [1, 2, 3], [1.0, float("nan"), -0.0])
    assert count_mismatches(a, renamed) == 0  # same names, other numbering
    assert (
        count_mismatches(
            a, Samples.from_columns(["x", "y"], [0, 0, 0], [1, 2, 3], [1.0, np.nan, -0.0])
        )
        == 1
    )
    assert (
        count_mismatches(
            a, Samples.from_columns(["x", "y"], [0, 1, 0], [1, 2, 4], [1.0, np.nan, -0.0])
        )
        == 1
    )
    assert (
        count_mismatches(
            a, Samples.from_columns(["x", "y"], [0, 1, 0], [1, 2, 3], [1.0, np.nan, 0.0])
        )
        == 1
    )
    assert count_mismatches(a, a.slice(0, 2)) == 1
    assert cantools.__version__  # the reference these figures depend on
