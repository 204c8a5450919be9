"""core.backoff: the waits every retry loop takes, checked as properties over many inputs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.backoff import Backoff, exponential, jittered

bases = st.floats(min_value=1e-3, max_value=100.0)
caps = st.floats(min_value=1e-3, max_value=1e5)
attempts = st.integers(min_value=0, max_value=10_000)
jitters = st.one_of(
    st.sampled_from(["none", "full", "equal"]), st.floats(min_value=0.0, max_value=1.0)
)


@given(attempts, bases, caps)
def test_exponential_doubles_from_the_base_and_never_passes_the_cap(
    attempt: int, base: float, cap: float
) -> None:
    d = exponential(attempt, base, cap)
    assert 0 < d <= cap
    assert d == min(cap, base * 2.0 ** min(attempt, 1000))
    assert exponential(attempt + 1, base, cap) >= d  # never shorter after one more failure
    if attempt < 1000 and base * 2.0**attempt < cap:
        assert exponential(attempt + 1, base, cap) == min(cap, 2 * d)


def test_exponential_keeps_the_callers_numbers() -> None:
    # the numbers the retry loops had before they shared this module
    assert [exponential(a, 0.5, 30.0) for a in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert exponential(3, 60, 86_400) == 480 and exponential(20, 60, 86_400) == 86_400
    assert exponential(10**9, 0.1, 30.0) == 30.0  # no OverflowError after a long outage
    with pytest.raises(ValueError, match="attempt"):
        exponential(-1, 0.5, 30.0)


@given(st.floats(min_value=0.0, max_value=1e5), jitters, st.integers(0, 2**32))
def test_jitter_stays_in_its_band(delay: float, jitter: str | float, seed: int) -> None:
    d = jittered(delay, jitter, random.Random(seed))
    if jitter == "none":
        assert d == delay
    elif jitter == "full":
        assert 0 <= d <= delay
    elif jitter == "equal":
        assert delay / 2 <= d <= delay
    else:
        assert isinstance(jitter, float)
        assert delay * (1 - jitter) - 1e-9 <= d <= delay * (1 + jitter) + 1e-9


@given(bases, caps, jitters, st.integers(0, 2**32))
def test_a_seed_gives_the_same_waits_and_reset_starts_again(
    base: float, cap: float, jitter: str | float, seed: int
) -> None:
    a = Backoff(base, cap, jitter=jitter, seed=seed)
    b = Backoff(base, cap, jitter=jitter, seed=seed)
    first = [a.next() for _ in range(12)]
    assert first == [b.next() for _ in range(12)]
    assert a.attempt == 12
    a.reset()
    assert a.attempt == 0
    upper = 1.0 if isinstance(jitter, str) else 1.0 + jitter + 1e-9
    assert a.next() <= min(base, cap) * upper


def test_jitter_spreads_a_fleet_and_bad_settings_are_refused() -> None:
    waits = {round(Backoff(0.5, 60.0, jitter="equal", seed=s).delay(4), 9) for s in range(20)}
    assert len(waits) > 10 and all(4.0 <= w <= 8.0 for w in waits)
    for bad in ("half", 1.5, -0.1):
        with pytest.raises(ValueError, match="jitter"):
            Backoff(0.5, 60.0, jitter=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_s"):
        Backoff(0.0, 60.0)
