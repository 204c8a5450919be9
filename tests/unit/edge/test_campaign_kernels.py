"""Campaign kernels against the plain-Python references, at once and one batch at a time."""

from __future__ import annotations

import itertools
import os

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import campaign_kernels as ck
from tests.reference import campaigns as ref

pytestmark = pytest.mark.kernel

rows_st = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 5_000_000),
        st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan"))),
    ),
    max_size=200,
)


def _arrays(rows: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = sorted(rows, key=lambda r: r[1])  # sources deliver each block in time order
    sig = np.array([r[0] for r in rows], np.int32)
    ts = np.array([r[1] for r in rows], np.int64)
    val = np.array([r[2] for r in rows], np.float64)
    return sig, ts, val


@settings(max_examples=60, deadline=None)
@given(rows_st, st.sampled_from([1000, 100_000, 1_000_000]), st.integers(1, 4))
def test_periodic_matches_reference_in_any_split(rows, period_us, parts) -> None:
    sig, ts, val = _arrays(rows)
    slot_of = np.array([0, 1, 2, 3], np.int32)
    state = ck.periodic_state(4)
    got = []
    bounds = np.linspace(0, len(sig), parts + 1).astype(int)
    horizon = -1
    for a, b in itertools.pairwise(bounds):
        out = ck.periodic_update(slot_of, sig[a:b], ts[a:b], val[a:b], period_us, state)
        got += list(zip(*(x.tolist() for x in out), strict=True))
        horizon = max(horizon, int(ts[a:b].max()) if b > a else -1)
    # The reference sees everything at once: windows closed by a later sample or the final horizon.
    want = ref.periodic(sorted(rows, key=lambda r: r[1]), period_us, horizon)
    key = lambda r: (r[0], r[1])  # noqa: E731
    got, want = sorted(got, key=key), sorted(want, key=key)
    assert [r[:2] for r in got] == [r[:2] for r in want]
    flat = lambda rows: [x for r in rows for x in r[2:]]  # noqa: E731
    assert flat(got) == pytest.approx(flat(want), rel=1e-9, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(rows_st, st.sampled_from([0.0, 0.5, 100.0]), st.integers(1, 4))
def test_on_change_matches_reference_in_any_split(rows, deadband, parts) -> None:
    sig, _, val = _arrays(rows)
    slot_of = np.array([0, -1, 2, 3], np.int32)  # signal 1 is not selected
    state = ck.on_change_state(4)
    got: list[int] = []
    bounds = np.linspace(0, len(sig), parts + 1).astype(int)
    for a, b in itertools.pairwise(bounds):
        got += (ck.on_change_update(slot_of, sig[a:b], val[a:b], deadband, state) + a).tolist()
    selected = [(int(s), float(v)) if s != 1 else (-1, 0.0) for s, v in zip(sig, val, strict=True)]
    want = [i for i in ref.on_change(selected, deadband) if selected[i][0] != -1]
    assert got == want


def test_periodic_window_values() -> None:
    slot_of = np.array([0], np.int32)
    state = ck.periodic_state(1)
    ts = np.array([0, 100, 200, 1_000_000, 1_500_000], np.int64)
    val = np.array([3.0, 1.0, 2.0, 10.0, 20.0])
    slot, t, mn, mx, mean, last = ck.periodic_update(
        slot_of, np.zeros(5, np.int32), ts, val, 1_000_000, state
    )
    # First window closes when the 1 s sample arrives; the second stays open (horizon in it).
    assert slot.tolist() == [0] and t.tolist() == [200]
    assert (mn[0], mx[0], mean[0], last[0]) == (1.0, 3.0, 2.0, 2.0)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="JIT disabled")
def test_kernels_are_compiled() -> None:
    # called here, not left to the tests above: pytest-xdist may run those in another process
    slot_of = np.array([0], np.int32)
    ck.on_change_update(slot_of, np.zeros(2, np.int32), np.array([1.0, 2.0]), 0.0,
                        ck.on_change_state(1))  # fmt: skip
    ck.periodic_update(slot_of, np.zeros(2, np.int32), np.array([0, 10], np.int64),
                       np.array([1.0, 2.0]), 1_000_000, ck.periodic_state(1))  # fmt: skip
    for kernel in (ck._periodic, ck._on_change):
        assert isinstance(kernel, numba.core.registry.CPUDispatcher)
        assert kernel.signatures, "the kernel was never compiled"
