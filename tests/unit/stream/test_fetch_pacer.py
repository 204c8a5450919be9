"""Fetch pacing (``stream.transport.FetchPacer``): when the worker's fetches wait for a batch.

The pacer's decisions on a stand-in for aiokafka's ``Fetcher`` (its three attributes the pacer
reads and sets); that the real consumer gets one is in ``test_app.py``, and the worker under
load in ``carpulse bench e2e`` (BENCHMARKS.md, issue 22).
"""

from __future__ import annotations

import asyncio
from typing import Any

from stream.transport import BATCH_MIN_BYTES, FetchPacer, pace


class Fetcher:
    def __init__(self, answers: list[tuple[float, bool]]) -> None:
        self._fetch_min_bytes = 1
        self._fetch_max_wait_ms = 100
        self.answers = answers
        self.sent: list[tuple[int, int]] = []  # (min bytes, wait) of each request

    async def _proc_fetch_request(self, assignment: Any, node_id: Any, request: Any) -> bool:
        self.sent.append((self._fetch_min_bytes, self._fetch_max_wait_ms))
        delay, got = self.answers.pop(0)
        await asyncio.sleep(delay)
        return got


def run(answers: list[tuple[float, bool]], wait_ms: int = 500) -> tuple[Fetcher, FetchPacer]:
    fetcher = Fetcher(answers)
    pacer = FetchPacer(fetcher, wait_ms)

    async def go() -> None:
        while fetcher.answers:  # what the fetch routine does: the instance's method each time
            await fetcher._proc_fetch_request(None, 0, None)

    asyncio.run(go())
    return fetcher, pacer


EAGER, BATCH = (1, 100), (BATCH_MIN_BYTES, 500)  # a wait no loaded machine misses


def test_records_in_quick_succession_batch_and_an_empty_fetch_stops_it() -> None:
    fetcher, pacer = run(
        [(0.0, True), (0.0, True), (0.0, True), (0.0, True), (0.0, False), (0, True)]
    )
    assert fetcher.sent == [EAGER, EAGER, BATCH, BATCH, BATCH, EAGER]
    assert not pacer.batching and pacer.switches == 2


def test_a_lone_record_or_slow_ones_never_make_the_next_fetch_wait() -> None:
    # one event on a quiet worker, then the idle fetches: every request answers at once
    fetcher, pacer = run([(0.0, True), (0.0, False), (0.0, True), (0.0, False), (0.0, True)])
    assert set(fetcher.sent) == {EAGER} and pacer.switches == 0
    # records, but each slower than the batch wait: nothing is gained by waiting
    fetcher, pacer = run([(0.03, True)] * 4, wait_ms=20)
    assert set(fetcher.sent) == {(1, 100)} and pacer.switches == 0


def test_pacing_is_off_at_0_ms_and_on_a_fetcher_without_the_members(caplog: Any) -> None:
    assert pace(Fetcher([]), 0) is None
    assert isinstance(pace(Fetcher([]), 50), FetchPacer)

    class Newer:  # a future aiokafka whose Fetcher renamed its private members
        _fetch_min_bytes = 1

    with caplog.at_level("WARNING", logger="stream.transport"):
        assert pace(Newer(), 50) is None  # the worker runs unpaced, it does not refuse to start
    assert "fetch pacing ([stream] fetch_batch_wait_ms) is off" in caplog.text
