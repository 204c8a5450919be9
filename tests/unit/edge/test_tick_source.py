"""The tick source: a deterministic grid whose journal names every sample it produced."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from edge.sources import create_source
from edge.sources.tick import read_journal, tick_names, tick_value


def test_journal_names_exactly_the_samples_returned(tmp_path: Path) -> None:
    journal = tmp_path / "ticks"
    src = create_source("tick", "t", {"signals": 3, "hz": 500, "journal": str(journal)})
    got = []
    with src:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            got.append(src.read(0.1))
    ranges = read_journal(journal)
    assert ranges and all(a <= b for a, b in ranges)
    assert all(b + 1 == a for (_, b), (a, _) in itertools.pairwise(ranges))
    ts = np.concatenate([s.ts_us for s in got])
    sig = np.concatenate([s.sig for s in got])
    val = np.concatenate([s.value for s in got])
    k = (ts - sig) // 2000
    assert len(ts) == 3 * sum(b - a + 1 for a, b in ranges)
    assert k.min() == ranges[0][0] and k.max() == ranges[-1][1]
    assert len(set(ts.tolist())) == len(ts)  # one InfluxDB point per sample
    np.testing.assert_array_equal(val, tick_value(k, sig))
    assert list(next(s for s in got if len(s)).names) == tick_names(3)


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "ticks"
    p.write_text("1 5\n6 9\n10")
    assert read_journal(p) == [(1, 5), (6, 9)]
