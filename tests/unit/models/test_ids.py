"""CAN intrusion detector: kernel vs reference, streaming = batch, crafted attacks, attack injection, eval."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.frames import Frames
from models.ids import detector as det_mod
from models.ids.attacks import inject, merge, periodic_ids
from models.ids.detector import (
    BAD_DLC,
    FROZEN_BITS,
    HIGH_RATE,
    SHORT_GAP,
    UNKNOWN_ID,
    CanIds,
    CanIdsProfile,
)
from tests.conftest import require_data
from tests.reference.can_ids import score as ref_score

JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"


def _frames(
    ts: list[int], ids: list[int], data: list[list[int]] | None = None, dlc: int = 8
) -> Frames:
    n = len(ts)
    d = np.zeros((n, 8), np.uint8) if data is None else np.asarray(data, np.uint8).reshape(n, 8)
    return Frames(
        np.asarray(ts, np.int64),
        np.asarray(ids, np.uint32),
        np.zeros(n, bool),
        np.full(n, dlc, np.uint8),
        d,
    )


def _clean(n: int = 400, period: int = 10_000, jitter: int = 300, seed: int = 0) -> Frames:
    """Two periodic ids (0x100 every 10 ms, 0x200 every 20 ms) with a counter in byte 0."""
    rng = np.random.default_rng(seed)
    t1 = np.arange(n) * period + rng.integers(-jitter, jitter + 1, n) + 1_000_000
    t2 = np.arange(n // 2) * 2 * period + rng.integers(-jitter, jitter + 1, n // 2) + 1_003_000
    ts = np.r_[t1, t2]
    ids = np.r_[np.full(n, 0x100), np.full(n // 2, 0x200)]
    data = np.zeros((len(ts), 8), np.uint8)
    data[:, 0] = np.r_[np.arange(n) % 256, np.arange(n // 2) % 256]
    data[:, 1] = 0x5A  # a constant byte: its bits are frozen
    order = np.argsort(ts, kind="stable")
    return _frames(ts[order].tolist(), ids[order].tolist(), data[order].tolist())


@pytest.fixture(scope="module")
def profile() -> CanIdsProfile:
    return CanIdsProfile.fit([_clean(seed=1), _clean(seed=2)])


@pytest.mark.kernel
def test_clean_traffic_is_not_flagged(profile: CanIdsProfile) -> None:
    flags = CanIds(profile).score(_clean(seed=3))
    assert np.count_nonzero(flags) == 0


@pytest.mark.kernel
def test_crafted_attacks_raise_their_reason(profile: CanIdsProfile) -> None:
    clean = _clean(seed=4)
    t_mid = int(clean.ts_us[200])
    det = CanIds(profile, min_flips=4)
    # unknown id, wrong DLC, random payload on a known id (flips the frozen 0x5A byte)
    extra = _frames([t_mid + 1, t_mid + 2], [0x7FF, 0x200])
    extra2 = Frames(
        np.array([t_mid + 5_000], np.int64),
        np.array([0x300], np.uint32),
        np.zeros(1, bool),
        np.array([3], np.uint8),
        np.zeros((1, 8), np.uint8),
    )
    merged, _ = merge(clean, extra)
    flags = det.score(merged)
    assert flags[np.flatnonzero(merged.can_id == 0x7FF)[0]] == UNKNOWN_ID
    assert CanIds(profile).score(extra2)[0] == UNKNOWN_ID
    # a 0x100 frame with a DLC of 3 and a payload flipping the 8 frozen bits of byte 1
    forged = Frames(
        np.array([t_mid], np.int64),
        np.array([0x100], np.uint32),
        np.zeros(1, bool),
        np.array([3], np.uint8),
        np.array([[0, 0xA5, 0xFF, 0xFF, 0, 0, 0, 0]], np.uint8),
    )
    f = CanIds(profile, min_flips=4).score(forged)[0]
    assert f & BAD_DLC and f & FROZEN_BITS
    # 0x100 twice as often (spoofing at its own rate, half a period out of phase)
    ts_own = clean.ts_us[clean.can_id == 0x100]
    spoof = _frames((ts_own[100:300] + 5_000).tolist(), [0x100] * 200)
    merged, _label = merge(clean, spoof)
    flags = CanIds(profile).score(merged)
    assert np.any(flags & SHORT_GAP) and np.any(flags & HIGH_RATE)
    # every attacked 10 ms stretch has an alarm, and the clean stretch before it has none
    assert np.count_nonzero(flags[merged.ts_us < spoof.ts_us[0]]) == 0
    hit = (merged.ts_us[flags > 0] - spoof.ts_us[0]) // 10_000
    assert set(range(199)) <= set(hit.tolist())


@pytest.mark.kernel
def test_flagged_frame_does_not_move_the_schedule(profile: CanIdsProfile) -> None:
    """An early injected frame is flagged; the real sender's next frame, on time, is not."""
    det = CanIds(profile)
    f = det.score(_frames([0, 10_000, 12_000, 20_000], [0x100] * 4))
    assert f.tolist()[1:] == [0, SHORT_GAP, 0]


def _random_stream(draw_ts: list[int], draw_ids: list[int], draw_bytes: list[int]) -> Frames:
    ts = np.cumsum(np.asarray(draw_ts, np.int64)) + 1_000
    n = len(ts)
    data = np.asarray((draw_bytes * (8 * n))[: 8 * n] or [0] * (8 * n), np.uint8).reshape(n, 8)
    return _frames(ts.tolist(), draw_ids, data.tolist())


stream_st = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 25_000), min_size=n, max_size=n),
        st.lists(st.sampled_from([0x100, 0x200, 0x555]), min_size=n, max_size=n),
        st.lists(st.integers(0, 255), min_size=1, max_size=16),
    )
)


@pytest.mark.kernel
@settings(max_examples=60, deadline=None)
@given(stream_st, st.integers(1, 12))
def test_kernel_matches_reference(stream: tuple, min_flips: int) -> None:
    prof = CanIdsProfile.fit([_clean(n=60, seed=5)])
    frames = _random_stream(*stream)
    got = CanIds(prof, min_flips=min_flips).score(frames)
    slots = {int(k): j for j, k in enumerate(prof.keys)}
    pref = {
        j: {
            "dlcs": {d for d in range(64) if (int(prof.dlc_mask[j]) >> d) & 1},
            "frozen_mask": prof.frozen_mask[j].tolist(),
            "frozen_val": prof.frozen_val[j].tolist(),
            "gap_min": int(prof.gap_min[j]),
            "tau": float(prof.tau[j]),
            "rate_max": float(prof.rate_max[j]),
            "period": float(prof.period[j]),
        }
        for j in slots.values()
    }
    state = {j: {"last_ts": -1, "count": 0.0, "count_ts": -1} for j in slots.values()}
    rows = [
        (int(t), slots.get(int(i), -1), int(d), frames.data[r].tolist())
        for r, (t, i, d) in enumerate(zip(frames.ts_us, frames.can_id, frames.dlc, strict=True))
    ]
    assert got.tolist() == ref_score(rows, pref, state, min_flips)


@pytest.mark.kernel
@settings(max_examples=30, deadline=None)
@given(stream_st, st.lists(st.integers(0, 60), max_size=4))
def test_streaming_in_blocks_equals_batch(stream: tuple, cuts: list[int]) -> None:
    prof = CanIdsProfile.fit([_clean(n=60, seed=6)])
    frames = _random_stream(*stream)
    batch = CanIds(prof).score(frames)
    det = CanIds(prof)
    edges = sorted({0, len(frames), *[min(c, len(frames)) for c in cuts]})
    parts = [det.score(frames.slice(a, b)) for a, b in itertools.pairwise(edges)]
    assert np.concatenate(parts).tolist() == batch.tolist()


@pytest.mark.kernel
@pytest.mark.skipif(JIT_OFF, reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
def test_ids_kernels_are_compiled(profile: CanIdsProfile) -> None:
    CanIds(profile).score(_clean(n=20))
    for kernel in (det_mod._score, det_mod._slots):
        assert isinstance(kernel, numba.core.registry.CPUDispatcher)
        assert kernel.signatures


def test_profile_round_trips_through_bytes(profile: CanIdsProfile) -> None:
    back = CanIdsProfile.from_bytes(profile.to_bytes())
    for name in profile.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(back, name), getattr(profile, name))
    frames = _clean(seed=9)
    assert CanIds(back).score(frames).tolist() == CanIds(profile).score(frames).tolist()


def test_out_of_order_frames_are_refused(profile: CanIdsProfile) -> None:
    with pytest.raises(ValueError, match="time order"):
        CanIds(profile).score(_frames([10, 5], [0x100, 0x100]))
    with pytest.raises(ValueError, match="no clean frames"):
        CanIdsProfile.fit([])


@pytest.mark.parametrize("kind", ["dos", "fuzzing", "spoofing", "replay"])
def test_inject_labels_exactly_the_added_frames(kind: str) -> None:
    clean = _clean(n=400, seed=7)
    start, stop = int(clean.ts_us[150]), int(clean.ts_us[300])
    got = inject(clean, kind, start, stop, np.random.default_rng(0))
    assert got is not None
    merged, label, _info = got
    assert len(merged) == len(clean) + int(label.sum()) and label.sum() > 0
    assert np.all(np.diff(merged.ts_us) >= 0)
    inj = merged.ts_us[label > 0]
    assert inj.min() >= start and inj.max() < stop
    # the clean frames are all still there, in order
    np.testing.assert_array_equal(merged.ts_us[label == 0], clean.ts_us)
    if kind in ("spoofing", "replay"):
        assert set(merged.can_id[label > 0].tolist()) <= set(periodic_ids(clean).tolist())
    if kind == "dos":
        assert set(merged.can_id[label > 0].tolist()) == {0}


@pytest.mark.slow
def test_eval_can_ids_on_real_logs(tmp_path: Path) -> None:
    logs = require_data("canlogs")
    from carpulse.evals.can_ids import main

    res = main(["--logs", str(logs), "--seed", "1", "--out", str(tmp_path)])
    assert res["false_alarm_rate"] <= 0.001, res["clean_flags_by_reason"]
    assert res["f1"]["dos"] >= 0.99, res["f1"]
    assert min(res["f1"].values()) >= 0.95, res["f1"]
    assert res["per_attack"]["dos"]["frame"]["recall"] == 1.0
    assert Path(res["plots"][0]).stat().st_size > 1000
