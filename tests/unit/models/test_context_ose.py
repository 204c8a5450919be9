"""contextOSE kernel: compiled, equal to the plain reference, streaming == batch, state round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.kernels import context
from models.kernels.context import ContextOSE
from tests.reference.context_ose import context_ose_ref

pytestmark = pytest.mark.kernel

JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"
series = st.lists(st.integers(-12, 12).map(lambda v: v / 2.0), min_size=0, max_size=90)
small = st.fixed_dictionaries(
    {
        "calib": st.integers(1, 25),
        "rest": st.integers(1, 8),
        "margin": st.sampled_from([0.0, 0.5]),
        "max_left": st.integers(1, 7),
        "max_active": st.integers(0, 15),
        "max_contexts": st.integers(1, 120),
        "max_semis": st.integers(1, 120),
        "max_right": st.integers(1, 40),
    }
)


@pytest.mark.skipif(JIT_OFF, reason="NUMBA_DISABLE_JIT=1: kernels run as Python on purpose")
def test_context_kernel_is_compiled() -> None:
    import numba

    ContextOSE(calib=5, rest=2).score_learn_many(np.zeros(40, np.int64), np.arange(40.0) % 7)
    for k in (context._context_loop, context._context_step, context._add_context):
        assert isinstance(k, numba.core.registry.CPUDispatcher)
        assert k.signatures


@settings(max_examples=80, deadline=None)
@given(x=series, p=small)
def test_kernel_equals_reference(x: list[float], p: dict[str, float]) -> None:
    got = ContextOSE(**p).score_learn_many(np.zeros(len(x), np.int64), np.array(x))
    kw = {k: v for k, v in p.items() if k not in ("calib", "rest", "margin")}
    want = context_ose_ref(x, int(p["calib"]), int(p["rest"]), p["margin"], **kw)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    parts=st.lists(series, min_size=1, max_size=4), cut=st.integers(0, 400), seed=st.integers(0, 9)
)
def test_interleaved_slots_in_any_batches_equal_one_series_at_a_time(
    parts: list[list[float]], cut: int, seed: int
) -> None:
    p = {"calib": 6, "rest": 3, "max_contexts": 60, "max_semis": 40}
    # A random interleaving of the slots, keeping each slot's own order, fed in two micro-batches.
    order = np.random.default_rng(seed).permutation(
        np.concatenate([np.full(len(v), k) for k, v in enumerate(parts)]).astype(np.int64)
    )
    pos = [0] * len(parts)
    xs = []
    for s in order:
        xs.append(parts[s][pos[s]])
        pos[s] += 1
    x = np.array(xs)
    det = ContextOSE(**p)
    c = min(cut, x.size)
    out = np.r_[det.score_learn_many(order[:c], x[:c]), det.score_learn_many(order[c:], x[c:])]
    for k, v in enumerate(parts):
        alone = ContextOSE(**p)
        one = [alone.score_learn_one(val) for val in v]
        np.testing.assert_array_equal(out[order == k], np.array(one))


def test_state_bytes_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=300).cumsum(), 1)
    slots = np.arange(300, dtype=np.int64) % 3
    a = ContextOSE(calib=20, rest=5, max_contexts=500, max_semis=500)
    a.score_learn_many(slots[:200], x[:200])
    b = ContextOSE.from_bytes(a.to_bytes())
    assert b.state.equals(a.state) and b.params == a.params
    np.testing.assert_array_equal(
        a.score_learn_many(slots[200:], x[200:]), b.score_learn_many(slots[200:], x[200:])
    )


def test_memory_cap_holds_and_nan_is_dropped_without_touching_state() -> None:
    x = np.random.default_rng(5).normal(size=2000)
    det = ContextOSE(calib=50, rest=10, max_contexts=64, max_semis=32)
    det.score_learn_many(np.zeros(x.size, np.int64), x)
    assert det.contexts() == 64
    assert det.state["n_l"][0] <= 32 and det.state["n_r"][0] <= 32
    assert det.state["l_facts"].dtype == np.int16  # 64 contexts: 16-bit facts
    assert ContextOSE(max_contexts=40_000).state["l_facts"].dtype == np.int32
    before = det.to_bytes()
    out = det.score_learn_many([0, 0], [np.nan, np.inf])
    assert np.isnan(out).all() and det.dropped == 2 and det.to_bytes() == before


def test_a_repeating_pattern_goes_quiet_and_a_break_scores_high() -> None:
    pattern = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    x = np.array(pattern * 60 + [0.0, 7.0, 0.0, 7.0, 0.0] + pattern * 10)
    det = ContextOSE(calib=len(pattern) * 4, rest=20)
    s = det.score_learn_many(np.zeros(x.size, np.int64), x)
    assert s[300:480].max() == 0.0  # learned: every value predicted
    assert s[480:490].max() >= 0.75  # the break is a surprise


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="contextOSE"):
        ContextOSE(calib=0)
    with pytest.raises(ValueError, match="contextOSE"):
        ContextOSE(bits=7, max_bits=6)
    with pytest.raises(TypeError):
        ContextOSE(window=3)
    with pytest.raises(ValueError, match="negative slot"):
        ContextOSE().score_learn_many([-1], [1.0])


def test_bench_kernels_reports_nab_detector_cost() -> None:
    from carpulse.bench.kernels import bench_kernels

    out = bench_kernels(
        ["--only-nab", "--nab-samples", "3000", "--nab-slots", "2", "--repeat", "1"]
    )
    names = ["context_ose", "context_ose_eval_cap", "nn_likelihood", "zscore_likelihood", "artime",
             "artime_ensemble", "artime_nn", "context_ensemble", "context_ensemble_eval_cap",
             "spatial", "artime_spatial"]  # fmt: skip
    for name in names:
        assert out[name]["samples_per_s"] > 0 and out[name]["state_bytes_per_entity"] > 0
    assert (
        out["context_ose"]["state_bytes_per_entity"]
        == ContextOSE(calib=750, max_contexts=4096, max_semis=4096).state.bytes_per_slot()
    )
    assert 0 < out["context_ose"]["contexts_learned_max"] <= 4096
    assert out["compile_s"]["context_ose"] > 0 and out["compile_s"]["artime"] > 0
    assert 0 < out["artime"]["categories_learned_max"] <= 1024
    # the spatial anomaly: three numbers per slot; the pair costs ARTime's state plus those
    assert out["spatial"]["state_bytes_per_entity"] == 24
    assert (
        out["artime_spatial"]["state_bytes_per_entity"]
        == out["artime"]["state_bytes_per_entity"] + 24
    )
    assert out["artime_spatial"]["samples_per_s"] < out["artime"]["samples_per_s"]
    assert out["context_ensemble"]["samples_per_s"] < min(
        out["context_ose"]["samples_per_s"], out["nn_likelihood"]["samples_per_s"]
    )
