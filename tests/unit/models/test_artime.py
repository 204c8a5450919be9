"""ARTime kernel: compiled, equal to the plain reference, streaming == batch, state round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.kernels import artime
from models.kernels.artime import ARTime
from tests.reference.artime import artime_ref

pytestmark = pytest.mark.kernel

JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"


def _series(n: int, seed: int, shift: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.sin(np.arange(n) / rng.uniform(3, 20)) * 5 + rng.normal(0, rng.uniform(0.05, 1), n)
    if shift:
        x[int(n * 0.7) :] += 4.0
    return np.round(x, 2)


@pytest.mark.skipif(JIT_OFF, reason="NUMBA_DISABLE_JIT=1: kernels run as Python on purpose")
def test_artime_kernel_is_compiled() -> None:
    import numba

    ARTime(calib=40).score_learn_many(np.zeros(200, np.int64), _series(200, 0, True))
    for k in (artime._artime_loop, artime._ingest, artime._detect, artime._train):
        assert isinstance(k, numba.core.registry.CPUDispatcher)
        assert k.signatures


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 260),
    seed=st.integers(0, 10_000),
    shift=st.booleans(),
    calib=st.integers(32, 110),
    cap=st.integers(2, 40),
    margin=st.sampled_from([0.0, 0.5]),
)
def test_kernel_equals_reference(
    n: int, seed: int, shift: bool, calib: int, cap: int, margin: float
) -> None:
    x = _series(n, seed, shift)
    got = ARTime(calib=calib, margin=margin, max_categories=cap).score_learn_many(
        np.zeros(n, np.int64), x
    )
    want = artime_ref(x, calib, margin=margin, max_categories=cap)
    np.testing.assert_array_equal(got, np.array(want))


def test_reference_check_is_not_vacuous_a_level_shift_scores() -> None:
    x = _series(600, 1, True)
    out = ARTime(calib=100).score_learn_many(np.zeros(600, np.int64), x)
    assert not out[:100].any()  # calibration rows
    assert out[420:470].max() > 0.3  # the shift at row 420
    assert (out > 0).sum() < 20  # rare alerts, not every row


def test_interleaved_slots_and_split_batches_equal_one_series_at_a_time() -> None:
    parts = [_series(300, k, k % 2 == 0) for k in range(3)]
    order = np.random.default_rng(7).permutation(np.repeat(np.arange(3), 300)).astype(np.int64)
    pos = [0, 0, 0]
    xs = []
    for s in order:
        xs.append(parts[s][pos[s]])
        pos[s] += 1
    x = np.array(xs)
    det = ARTime(calib=60, max_categories=50)
    out = det.score_learn_many(order[:400], x[:400])
    rest = ARTime.from_bytes(det.to_bytes())
    assert rest.state.equals(det.state)
    out = np.r_[out, rest.score_learn_many(order[400:], x[400:])]
    for k in range(3):
        alone = ARTime(calib=60, max_categories=50)
        np.testing.assert_array_equal(
            out[order == k], alone.score_learn_many(np.zeros(300, np.int64), parts[k])
        )


def test_nan_is_dropped_and_categories_are_capped() -> None:
    det = ARTime(calib=40, max_categories=5)
    det.score_learn_many(np.zeros(500, np.int64), np.random.default_rng(2).normal(size=500))
    assert det.categories() == 5
    before = det.to_bytes()
    out = det.score_learn_many([0, 0], [np.nan, -np.inf])
    assert np.isnan(out).all() and det.dropped == 2 and det.to_bytes() == before
    with pytest.raises(ValueError, match="ARTime"):
        ARTime(calib=10)
    with pytest.raises(TypeError):
        ARTime(window=4)


def test_huge_finite_values_cannot_overflow_the_range_or_index_outside_the_bins() -> None:
    # 1e308 in the calibration rows made the range inf and a level NaN: int(NaN) indexed the
    # median's bins out of bounds (heap corruption in the compiled kernel). Values past 1e300 are
    # now taken as 1e300, and a NaN level as level 0.
    rng = np.random.default_rng(0)
    x = np.round(50 + rng.normal(0, 1, 1200), 2)
    x[[100, 900, 950]] = [1e308, -1e308, 1.7e308]
    det = ARTime(calib=300, max_categories=64)
    out = det.score_learn_many(np.zeros(1200, np.int64), x)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert det.dropped == 0
    np.testing.assert_array_equal(out, np.array(artime_ref(x, 300, max_categories=64)))
    clipped = ARTime(calib=300, max_categories=64).score_learn_many(
        np.zeros(1200, np.int64), np.clip(x, -1e300, 1e300)
    )
    np.testing.assert_array_equal(out, clipped)
    # the levels and the median stay inside their arrays
    assert 0 <= det.state["med"][0, 2] < det.state["medbin"].shape[1]
    assert det.state["medbin"].min() >= 0
