"""Spatial anomaly kernel: compiled, equal to the plain reference, streaming == batch, hostile values."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.kernels import spatial
from models.kernels.spatial import SpatialAnomaly
from tests.reference.spatial import spatial_ref

pytestmark = pytest.mark.kernel

JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"

values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0]),
)


@pytest.mark.skipif(JIT_OFF, reason="NUMBA_DISABLE_JIT=1: kernels run as Python on purpose")
def test_spatial_kernel_is_compiled() -> None:
    import numba

    SpatialAnomaly().score_learn_many([0, 0], [1.0, 2.0])
    assert isinstance(spatial._spatial_loop, numba.core.registry.CPUDispatcher)
    assert spatial._spatial_loop.signatures


@settings(max_examples=200, deadline=None)
@given(
    x=st.lists(values, max_size=80),
    tol=st.sampled_from([0.0, 0.05, 0.5]),
    warmup=st.sampled_from([0, 1, 5, 30]),
)
def test_kernel_equals_reference(x: list[float], tol: float, warmup: int) -> None:
    det = SpatialAnomaly(tolerance=tol, warmup=warmup)
    got = det.score_learn_many(np.zeros(len(x), np.int64), x)
    np.testing.assert_array_equal(got, np.array(spatial_ref(x, tol, warmup), dtype=np.float64))


def test_warmup_rows_only_set_the_range() -> None:
    x = [0.0, 1.0, 5.0, 10.0, 20.0, 3.0]
    assert SpatialAnomaly(warmup=4).score_learn_many(np.zeros(6, np.int64), x).tolist() == [
        0.0, 0.0, 0.0, 0.0, 1.0, 0.0,
    ]  # fmt: skip
    assert SpatialAnomaly().score_learn_many(np.zeros(6, np.int64), x)[2:5].tolist() == [1.0] * 3


def test_new_extremes_beyond_the_tolerance_score_one() -> None:
    x = [0.0, 10.0, 5.0, 10.4, 11.2, 11.5, -0.6, 3.0]
    # range [0, 10] after row 1: 10.4 is inside its 5% tolerance (0.5); then [0, 10.4] (0.52):
    # 11.2 is beyond; then [0, 11.2] (0.56): 11.5 is not; then [0, 11.5] (0.575): -0.6 is.
    assert SpatialAnomaly().score_learn_many(np.zeros(8, np.int64), x).tolist() == [
        0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0,
    ]  # fmt: skip


def test_hostile_values_are_dropped_not_learned_and_huge_ones_do_not_overflow() -> None:
    det = SpatialAnomaly()
    out = det.score_learn_many(
        np.zeros(6, np.int64), [1.0, math.nan, math.inf, 2.0, -math.inf, 5.0]
    )
    assert np.isnan(out[[1, 2, 4]]).all()
    assert out[[0, 3, 5]].tolist() == [0.0, 0.0, 1.0]
    assert det.dropped == 3
    assert det.state["count"][0] == 3
    huge = SpatialAnomaly().score_learn_many(np.zeros(4, np.int64), [-1e308, 1e308, 0.0, 1.7e308])
    # range 2e308 (inf if subtracted first): 1.7e308 is beyond 1e308 + 5% of it.
    assert huge.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_interleaved_slots_and_split_batches_equal_one_series_at_a_time() -> None:
    rng = np.random.default_rng(3)
    parts = [np.cumsum(rng.normal(0, 1, 300)) for _ in range(4)]
    order = rng.permutation(np.repeat(np.arange(4), 300)).astype(np.int64)
    pos = [0] * 4
    xs = []
    for s in order:
        xs.append(parts[s][pos[s]])
        pos[s] += 1
    x = np.array(xs)
    det = SpatialAnomaly()
    out = det.score_learn_many(order[:500], x[:500])
    rest = SpatialAnomaly.from_bytes(det.to_bytes())
    assert rest.state.equals(det.state)
    out = np.r_[out, rest.score_learn_many(order[500:], x[500:])]
    one = SpatialAnomaly()
    for i in range(5):  # one sample at a time, slot 2 only
        assert one.score_learn_one(parts[2][i], slot=0) == spatial_ref(list(parts[2][: i + 1]))[-1]
    for s in range(4):
        want = spatial_ref(list(parts[s]))
        np.testing.assert_array_equal(out[order == s], np.array(want))
    assert out.sum() > 4  # random walks make new extremes: the comparison is not all zeros


def test_bad_tolerance_is_refused() -> None:
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="tolerance"):
            SpatialAnomaly(tolerance=bad)
    with pytest.raises(ValueError, match="warmup"):
        SpatialAnomaly(warmup=-1)
