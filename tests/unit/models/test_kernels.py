"""Anomaly kernels: compiled, equal to the plain references and River, batch == one at a time."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DecodeError
from models.kernels import (
    CrossSignalResidual,
    Cusum,
    HalfSpaceTrees,
    PageHinkley,
    RobustZScore,
    changepoint,
    hst,
    residual,
    zscore,
)
from models.state import SlotState
from tests.reference.anomaly import cusum_ref, ridge_ref, zscore_ref

pytestmark = pytest.mark.kernel

JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(st.tuples(st.integers(0, 3), finite), min_size=1, max_size=120)


@pytest.mark.skipif(JIT_OFF, reason="NUMBA_DISABLE_JIT=1: kernels run as Python on purpose")
def test_kernels_are_compiled() -> None:
    import numba

    rng = np.random.default_rng(0)
    s = np.zeros(50, np.int64)
    RobustZScore().score_learn_many(s, rng.normal(size=50))
    Cusum().score_learn_many(s, rng.normal(size=50))
    PageHinkley().update_many(s, rng.normal(size=50))
    HalfSpaceTrees(2, seed=1).score_learn_many(s, rng.random((50, 2)))
    CrossSignalResidual(2).score_learn_many(s, rng.normal(size=(50, 2)), rng.normal(size=50))
    for kernel in (
        zscore._zscore_loop,
        changepoint._cusum_loop,
        changepoint._page_hinkley_loop,
        hst._hst_loop,
        residual._ridge_loop,
    ):
        assert isinstance(kernel, numba.core.registry.CPUDispatcher)
        assert kernel.signatures, kernel


@settings(max_examples=60, deadline=None)
@given(
    seq=samples, alpha=st.floats(0.001, 1.0), clip=st.floats(0.5, 5.0), warmup=st.integers(0, 10)
)
def test_zscore_equals_reference(
    seq: list[tuple[int, float]], alpha: float, clip: float, warmup: int
) -> None:
    det = RobustZScore(alpha=alpha, clip=clip, warmup=warmup)
    got = det.score_learn_many([s for s, _ in seq], [v for _, v in seq])
    want = np.array(zscore_ref(seq, alpha, clip, warmup))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seq=samples)
def test_zscore_one_at_a_time_equals_batch(seq: list[tuple[int, float]]) -> None:
    batch = RobustZScore(alpha=0.05, warmup=3)
    got = batch.score_learn_many([s for s, _ in seq], [v for _, v in seq])
    single = RobustZScore(alpha=0.05, warmup=3)
    one = []
    for s, v in seq:
        one.append(single.score_one(v, slot=s))
        single.learn_one(v, slot=s)
    np.testing.assert_array_equal(got, np.array(one))
    assert single.state.equals(batch.state)


def test_zscore_spike_barely_moves_baseline_and_bad_samples_are_counted() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 1.0, 500)
    x[300] = 1000.0
    det = RobustZScore(alpha=0.05, clip=3.0, warmup=30)
    z = det.score_learn_many(np.zeros(500, np.int64), x)
    assert z[300] > 100
    assert abs(z[301]) < 5  # the spike moved the mean by at most 3 sd * alpha
    out = det.score_learn_many([0, 0, 0], [np.nan, 11.0, 12.0], ts=[1.0, 5.0, 4.0])
    assert np.isnan(out[0]) and np.isfinite(out[1]) and np.isnan(out[2])
    assert det.dropped == 2


@settings(max_examples=40, deadline=None)
@given(seq=samples, k=st.floats(0.0, 2.0), h=st.floats(0.5, 10.0))
def test_cusum_equals_reference(seq: list[tuple[int, float]], k: float, h: float) -> None:
    det = Cusum(alpha=0.05, k=k, h=h, warmup=5)
    got = det.score_learn_many([s for s, _ in seq], [v for _, v in seq])
    np.testing.assert_allclose(got, cusum_ref(seq, 0.05, k, h, 5), rtol=1e-6, atol=1e-6)


def test_cusum_detects_a_small_level_shift() -> None:
    rng = np.random.default_rng(2)
    x = np.r_[rng.normal(0, 1, 1000), rng.normal(1.0, 1, 300)]
    stat = Cusum(alpha=0.001).score_learn_many(np.zeros(1300, np.int64), x)
    alarms = np.nonzero(stat > 1)[0]
    assert (alarms < 1000).sum() <= 2
    assert alarms[alarms >= 1000][0] < 1060


@pytest.mark.parametrize("mode", ["both", "up", "down"])
def test_page_hinkley_equals_river(mode: str) -> None:
    from river import drift

    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(0, 1, 800), rng.normal(4, 1, 800), rng.normal(-3, 1, 800)]
    ours = PageHinkley(threshold=20.0, mode=mode).update_many(np.zeros(x.size, np.int64), x)
    ph = drift.PageHinkley(threshold=20.0, mode=mode)
    river_hits = []
    for i, v in enumerate(x):
        ph.update(v)
        if ph.drift_detected:
            river_hits.append(i)
    assert river_hits, "the test sequence must contain drifts"
    assert list(np.nonzero(ours > 1)[0]) == river_hits


def _hst_river(x: np.ndarray, **kw: object) -> np.ndarray:
    from river import anomaly

    return _hst_river_from(anomaly.HalfSpaceTrees(**kw), x)  # type: ignore[arg-type]


def _hst_river_from(model: object, x: np.ndarray) -> np.ndarray:
    """Score then learn each row with a River model (features f0, f1, ...; NaN = absent)."""
    out = []
    for row in x:
        feats = {f"f{i}": v for i, v in enumerate(row) if not np.isnan(v)}
        out.append(model.score_one(feats))  # type: ignore[attr-defined]
        model.learn_one(feats)  # type: ignore[attr-defined]
    return np.array(out, float)


@pytest.mark.parametrize(
    ("n_trees", "height", "window", "d", "seed"),
    [(10, 8, 250, 1, 42), (5, 3, 20, 3, 7), (3, 6, 64, 4, 0)],
)
def test_hst_equals_river_bit_for_bit(
    n_trees: int, height: int, window: int, d: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.random((3 * window + 17, d))
    x[::37, 0] = 0.999  # outliers with some structure
    ours = HalfSpaceTrees(d, n_trees=n_trees, height=height, window_size=window, seed=seed)
    got = ours.score_learn_many(np.zeros(len(x), np.int64), x)
    want = _hst_river(x, n_trees=n_trees, height=height, window_size=window, seed=seed)
    np.testing.assert_array_equal(got, want)


def test_hst_limits_and_missing_features_match_river() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(50, 10, (400, 2))
    x[rng.random(400) < 0.2, 1] = np.nan  # NaN is River's "key absent"
    limits = [(0.0, 100.0), (0.0, 100.0)]
    ours = HalfSpaceTrees(2, n_trees=4, height=5, window_size=40, limits=limits, seed=3)
    got = ours.score_learn_many(np.zeros(400, np.int64), x)
    lim = {"f0": (0.0, 100.0), "f1": (0.0, 100.0)}
    want = _hst_river(x, n_trees=4, height=5, window_size=40, limits=lim, seed=3)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=15, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1), st.floats(0, 1)), max_size=80))
def test_hst_one_at_a_time_equals_batch_and_slots_are_independent(
    data: list[tuple[int, float, float]],
) -> None:
    slots = np.array([s for s, _, _ in data], np.int64)
    x = np.array([[a, b] for _, a, b in data]).reshape(-1, 2)
    batch = HalfSpaceTrees(2, n_trees=3, height=4, window_size=5, seed=11)
    got = batch.score_learn_many(slots, x)
    single = HalfSpaceTrees(2, n_trees=3, height=4, window_size=5, seed=11)
    one = []
    for s, row in zip(slots, x, strict=True):
        one.append(single.score_one(row, slot=int(s)))
        single.learn_one(row, slot=int(s))
    np.testing.assert_array_equal(got, np.array(one))
    for s in range(3):  # each slot alone gives the same scores as inside the mixed batch
        alone = HalfSpaceTrees(2, n_trees=3, height=4, window_size=5, seed=11)
        mask = slots == s
        np.testing.assert_array_equal(alone.score_learn_many(slots[mask] * 0, x[mask]), got[mask])


def test_hst_numpy_baseline_matches_kernel() -> None:
    rng = np.random.default_rng(9)
    steps, n_slots = 90, 4
    x = rng.random((steps, n_slots, 2))
    det = HalfSpaceTrees(2, n_trees=3, height=4, window_size=20, seed=2)
    slots = np.tile(np.arange(n_slots), steps)
    got = det.score_learn_many(slots, x.reshape(-1, 2)).reshape(steps, n_slots)
    want = hst.hst_numpy(x, det.feature, det.threshold, 4, 20)
    np.testing.assert_array_equal(got, want)


def test_zscore_numpy_baseline_matches_kernel() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 5))
    det = RobustZScore(alpha=0.02, warmup=10)
    got = det.score_learn_many(np.tile(np.arange(5), 200), x.reshape(-1)).reshape(200, 5)
    np.testing.assert_allclose(got, zscore.zscore_numpy(x, 0.02, 3.0, 10), rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.floats(-10, 10), st.floats(-10, 10), st.floats(-100, 100)),
        min_size=1,
        max_size=40,
    ),
    lam=st.floats(0.1, 10.0),
)
def test_residual_is_exact_online_ridge(rows: list[tuple[float, float, float]], lam: float) -> None:
    det = CrossSignalResidual(2, lam=lam)
    xs = [[a, b] for a, b, _ in rows]
    ys = [y for _, _, y in rows]
    det.learn_many(np.zeros(len(rows), np.int64), xs, ys)
    np.testing.assert_allclose(det.coef(), ridge_ref(xs, ys, lam), rtol=1e-6, atol=1e-6)


def test_residual_flags_overheating_per_vehicle_model() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    model = rng.integers(0, 2, n)  # two vehicle models with different cooling
    load = rng.random(n)
    minutes = rng.random(n) * 30
    warm = np.minimum(minutes / 10, 1.0)
    coolant = np.where(model == 0, 20 + 70 * warm + 8 * load, 25 + 65 * warm + 15 * load)
    coolant += rng.normal(0, 0.8, n)
    det = CrossSignalResidual(3, lam=1e-3)
    feats = np.c_[load, warm, load * warm]
    det.learn_many(model, feats, coolant)
    normal = det.score_many(model[:200], feats[:200], coolant[:200])
    hot = det.score_many(model[:200], feats[:200], coolant[:200] + 8.0)
    assert np.mean(np.abs(normal) > 4) < 0.01
    assert np.mean(hot > 4) > 0.95


def _feed(det: object, s: np.ndarray, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    if isinstance(det, CrossSignalResidual):
        return det.score_learn_many(s, x, y)
    if isinstance(det, PageHinkley):
        return det.update_many(s, x)
    return det.score_learn_many(s, x)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(
    "make",
    [
        lambda: (RobustZScore(n_slots=2), 1),
        lambda: (Cusum(n_slots=2), 1),
        lambda: (PageHinkley(threshold=5.0), 1),
        lambda: (HalfSpaceTrees(2, n_trees=3, height=4, window_size=10, limits=[(-4, 4)] * 2), 2),
        lambda: (CrossSignalResidual(2), 2),
    ],
)
def test_state_roundtrips_bytes_exactly(make: object) -> None:
    rng = np.random.default_rng(8)
    det, d = make()  # type: ignore[operator]
    s = rng.integers(0, 5, 400)
    x = rng.normal(size=(400, d)) if d > 1 else rng.normal(size=400)
    y = rng.normal(size=400)
    _feed(det, s[:200], x[:200], y[:200])
    blob = det.to_bytes()
    restored = type(det).from_bytes(blob)
    assert restored.state.equals(det.state)
    np.testing.assert_array_equal(
        _feed(restored, s[200:], x[200:], y[200:]), _feed(det, s[200:], x[200:], y[200:])
    )
    assert restored.to_bytes() == det.to_bytes()
    with pytest.raises(DecodeError, match=r"truncated|trailing|shorter"):
        SlotState.from_bytes(blob[:-3])
    with pytest.raises(DecodeError, match="is for"):
        SlotState.from_bytes(blob, kind="something_else")


def test_hst_state_is_small_integers_unless_the_window_needs_more() -> None:
    small = HalfSpaceTrees(2, n_trees=2, height=3, window_size=250, seed=1)
    big = HalfSpaceTrees(2, n_trees=2, height=3, window_size=40_000, seed=1)
    assert small.state["leaf"].dtype == np.int16 and big.state["leaf"].dtype == np.int32
    assert small.state["table"].dtype == np.int32
    deep = HalfSpaceTrees(2, n_trees=1, height=16, window_size=40_000, seed=1)
    assert deep.state["table"].dtype == np.int64  # 40,000 x (2**17 - 1) > 2**31
    # per leaf a 16-bit count and a 32-bit path score: 2 trees x 8 leaves x 6 bytes + counter/flag
    assert small.state.bytes_per_slot() == 2 * 8 * 6 + 8 + 1
    x = np.random.default_rng(4).random((2000, 2))
    got = small.score_learn_many(np.zeros(2000, np.int64), x)
    restored = HalfSpaceTrees.from_bytes(small.to_bytes())
    more = np.random.default_rng(5).random((600, 2))
    np.testing.assert_array_equal(
        small.score_learn_many(np.zeros(600, np.int64), more),
        restored.score_learn_many(np.zeros(600, np.int64), more),
    )
    assert got[250:].min() >= 0.0 and got[:250].max() == 0.0


def _river_masses(model: object, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """River's per-node (l_mass, r_mass) in heap order (children 2i+1, 2i+2)."""
    trees = model.trees  # type: ignore[attr-defined]
    l_mass = np.zeros((len(trees), n_nodes), np.int32)
    r_mass = np.zeros_like(l_mass)
    for t, root in enumerate(trees):
        stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            l_mass[t, i], r_mass[t, i] = node.l_mass, node.r_mass
            for k, child in enumerate(getattr(node, "children", ())):
                stack.append((child, 2 * i + 1 + k))
    return l_mass, r_mass


def test_hst_restores_blobs_of_the_earlier_layouts_and_goes_on_as_river() -> None:
    """Blobs with full per-node masses (int32 l_mass/r_mass, then int16 pairs with ``ref``), made
    here from River's own trees mid-window, restore to a detector that goes on scoring as River."""
    from river import anomaly

    kw = {"n_trees": 3, "height": 4, "window_size": 20, "seed": 9}
    rng = np.random.default_rng(8)
    x = rng.random((300, 2))
    river = anomaly.HalfSpaceTrees(**kw)  # type: ignore[arg-type]
    for row in x[:150]:
        river.learn_one({"f0": row[0], "f1": row[1]})
    det = HalfSpaceTrees(2, **kw)  # type: ignore[arg-type]
    l_mass, r_mass = _river_masses(river, det.feature.shape[1])
    want = _hst_river_from(river, x[150:])
    assert r_mass.sum() > 0 and l_mass.sum() > 0  # mid-window, with a reference window
    common = {"counter": np.array([150 % 20]), "first_window": np.array([False])}
    unpaired = SlotState(
        det.kind, det.state.params,
        {"l_mass": l_mass[None], "r_mass": r_mass[None], **common}, fill={"first_window": 1.0},
    )  # fmt: skip
    # paired layout, reference in half 1 this time (the flip that replaced copying)
    pairs = np.stack([l_mass, r_mass], axis=-1).astype(np.int16)[None]
    paired = SlotState(
        det.kind, det.state.params,
        {"mass": pairs, "ref": np.array([1]), **common}, fill={"first_window": 1.0},
    )  # fmt: skip
    for blob in (unpaired, paired):
        restored = HalfSpaceTrees.from_bytes(blob.to_bytes())
        got = restored.score_learn_many(np.zeros(150, np.int64), x[150:])
        np.testing.assert_array_equal(got, want)
        # a new slot still starts in its first window
        assert restored.score_learn_many(np.array([1]), x[:1])[0] == 0.0
    st = det.state
    broken = SlotState(st.kind, st.params, {"counter": st["counter"]})
    with pytest.raises(DecodeError, match="half_space_trees"):
        HalfSpaceTrees.from_bytes(broken.to_bytes())
