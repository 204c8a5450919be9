"""The one backoff policy: exponential delays with a cap, and jitter so a fleet does not retry in step.

Every retry loop of carpulse takes its waits from here: the edge agent's MQTT reconnect and its
sources, the ingest bridge's Kafka connect, the InfluxDB sink and its retry topic, the CRM's
outbox delivery, parked events and database runner, OBD-II links and cameras. Each keeps its own
numbers (base, cap, jitter); only the arithmetic is shared.

* ``exponential(attempt, base_s, cap_s)``: ``base_s * 2**attempt`` capped at ``cap_s``
  (attempt 0 waits ``base_s``), for any attempt count without overflow.
* ``jittered(delay, jitter, rng)``: ``"none"``; ``"full"``, uniform in ``[0, delay]``;
  ``"equal"``, half fixed and half random, in ``[delay/2, delay]``; a number ``f``, within
  ``delay * (1 +- f)``.
* ``Backoff``: counts its own attempts (``next``, ``reset``); with ``seed`` its jitter is the
  same on every run (tests).
"""

from __future__ import annotations

import random
from typing import Literal, Protocol

Jitter = Literal["none", "full", "equal"] | float
MAX_DOUBLINGS = 1000  # 2.0**1000 is still a float; any base times it is past every cap


class Uniform(Protocol):
    """What the jitter draws from: the ``random`` module or a ``random.Random``."""

    def uniform(self, a: float, b: float) -> float: ...


def exponential(attempt: int, base_s: float, cap_s: float) -> float:
    """``base_s * 2**attempt``, at most ``cap_s``; ``attempt`` counts from 0."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    return min(cap_s, base_s * 2.0 ** min(attempt, MAX_DOUBLINGS))


def check_jitter(jitter: Jitter) -> None:
    """Refuse anything but ``"none"``, ``"full"``, ``"equal"`` or a fraction in ``[0, 1]``."""
    if jitter in ("none", "full", "equal"):
        return
    if isinstance(jitter, str) or not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be 'none', 'full', 'equal' or a fraction, not {jitter!r}")


def jittered(delay: float, jitter: Jitter, rng: Uniform = random) -> float:  # type: ignore[assignment]
    """``delay`` with ``jitter`` drawn from ``rng`` (see the module's docstring)."""
    if jitter == "none":
        return delay
    if jitter == "full":
        return rng.uniform(0, delay)
    if jitter == "equal":
        return delay / 2 + rng.uniform(0, delay / 2)
    check_jitter(jitter)
    return delay * (1 + rng.uniform(-jitter, jitter))


class Backoff:
    """Exponential backoff with a cap and jitter that counts its attempts: ``next()`` gives the
    wait before the next try, ``reset()`` starts again at ``base_s`` after a success."""

    def __init__(
        self, base_s: float, cap_s: float, *, jitter: Jitter = "none", seed: int | None = None
    ) -> None:
        if not (base_s > 0 and cap_s > 0):  # a cap below the base: every wait is the cap
            raise ValueError(f"backoff needs base_s > 0 and cap_s > 0, not {base_s} and {cap_s}")
        check_jitter(jitter)  # here, not at the first failure
        self.base_s, self.cap_s, self.jitter = base_s, cap_s, jitter
        self.attempt = 0
        self._rng = random.Random(seed)

    def delay(self, attempt: int) -> float:
        """The wait after ``attempt + 1`` failures in a row (the counter is left alone)."""
        return jittered(exponential(attempt, self.base_s, self.cap_s), self.jitter, self._rng)

    def next(self) -> float:
        """The wait before the next try; counts one more failure."""
        delay = self.delay(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
