"""The durable queue: cap policy with exact counters, crash events kept, TTL, lanes, persistence."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.errors import ConfigError
from edge.queue import DurableQueue


def _put(q: DurableQueue, prio: int, size: int, seq: int, **kw: object) -> int | None:
    return q.put(
        "telemetry", "t", bytes([seq % 256]) * size, priority=prio, boot_id="b", seq=seq,
        samples=size // 10, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_rows_survive_reopen_until_acked(tmp_path: Path) -> None:
    q = DurableQueue(tmp_path / "q.sqlite")
    ids = [_put(q, 5, 100, i) for i in range(5)]
    q.ack([ids[0], ids[1]])
    q.close()
    q2 = DurableQueue(tmp_path / "q.sqlite")
    assert [r[3] for r in q2.rows()] == [2, 3, 4]
    assert q2.nbytes == 300
    assert q2.counters.get("acked").rows == 2 and q2.counters.get("enqueued").rows == 5


def test_cap_evicts_oldest_lowest_priority_first_with_exact_counters(tmp_path: Path) -> None:
    q = DurableQueue(tmp_path / "q.sqlite", max_bytes=1000)
    for i in range(5):
        _put(q, 9, 100, i)  # 500 bytes of the least important data
    for i in range(5, 10):
        _put(q, 3, 100, i)  # 1000 bytes: full
    _put(q, 3, 250, 10)  # needs 250: evicts the three oldest priority-9 rows
    seqs = [r[3] for r in q.rows()]
    assert seqs == [3, 4, 5, 6, 7, 8, 9, 10]
    ev = q.counters.get("evicted", 9)
    assert (ev.rows, ev.bytes, ev.samples) == (3, 300, 30)
    assert q.nbytes == 950 <= q.max_bytes
    # Newer low-priority data pushes out older data of the same priority (seqs 3 and 4)...
    assert _put(q, 9, 200, 11) is not None
    assert [r[3] for r in q.rows()] == [5, 6, 7, 8, 9, 10, 11]
    # ...but never more important data: 400 bytes do not fit beside the priority-3 rows.
    assert _put(q, 9, 400, 12) is None
    rej = q.counters.get("rejected", 9)
    assert (rej.rows, rej.bytes, rej.samples) == (1, 400, 40)
    assert q.counters.get("evicted", 3).rows == 0
    # Exact bookkeeping: every enqueued byte is either held or was evicted.
    assert q.counters.get("enqueued").bytes == q.nbytes + q.counters.get("evicted").bytes
    assert q.counters.get("enqueued").rows == len(q) + q.counters.get("evicted").rows


def test_crash_events_are_never_dropped(tmp_path: Path) -> None:
    q = DurableQueue(tmp_path / "q.sqlite", max_bytes=500, ttl_s=0.001)
    for i in range(5):
        assert _put(q, 0, 200, i, now_us=1) is not None  # over the cap: still accepted
    assert _put(q, 5, 10, 99, now_us=10**12) is None  # nothing evictable: the new row goes
    assert [r[3] for r in q.rows()] == [0, 1, 2, 3, 4]
    assert q.over_cap_bytes == 500
    assert q.counters.get("evicted").rows == 0 and q.counters.get("expired").rows == 0


def test_ttl_expires_old_rows_and_counts_them(tmp_path: Path) -> None:
    q = DurableQueue(tmp_path / "q.sqlite", ttl_s=10)
    _put(q, 5, 100, 1, now_us=0)
    _put(q, 5, 100, 2, now_us=5_000_000)
    _put(q, 5, 100, 3, now_us=12_000_000)  # the first row (expires at 10 s) goes
    assert [r[3] for r in q.rows()] == [2, 3]
    assert q.counters.get("expired", 5).rows == 1


def test_take_interleaves_live_and_backlog_keeping_lane_order(tmp_path: Path) -> None:
    q = DurableQueue(tmp_path / "q.sqlite")
    for i in range(6):
        _put(q, 5, 10, i)
    live_from = q.max_id() + 1
    for i in range(6, 9):
        _put(q, 5, 10, i)
    _put(q, 0, 10, 100)  # a crash event jumps ahead
    got = [r.seq for r in q.take(8, set(), live_from=live_from)]
    assert got == [100, 6, 0, 7, 1, 8, 2, 3]
    inflight = {r.id for r in q.take(3, set(), live_from=live_from)}
    assert len(q.take(100, inflight, live_from=live_from)) == 10 - 3


def test_bad_settings_and_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_bytes"):
        DurableQueue(tmp_path / "a.sqlite", max_bytes=0)
    with pytest.raises(ConfigError, match="fsync"):
        DurableQueue(tmp_path / "a.sqlite", fsync="sometimes")  # type: ignore[arg-type]
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match=r"bad\.sqlite"):
        DurableQueue(bad)


def test_wal_mode_and_sync_level(tmp_path: Path) -> None:
    q = DurableQueue(tmp_path / "q.sqlite", fsync="normal")
    _put(q, 5, 10, 1)
    with sqlite3.connect(tmp_path / "q.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert q._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
