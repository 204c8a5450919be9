"""Durable store-and-forward queue: wire-encoded messages in SQLite (WAL), deleted only after PUBACK.

Every telemetry batch and event is appended here *before* anything tries to send it; the sender
deletes a row only when the broker has acknowledged it (QoS 1 PUBACK). A row is one wire message
(``core.wire``), never one sample, so per-sample Python never touches the queue.

Capacity (``max_bytes``, payload bytes; the SQLite file adds a few percent of page overhead):

- a new row of priority ``p`` first evicts the *oldest* rows of priority ``>= p`` (least important
  first: the highest number, oldest row first) until it fits;
- if it still does not fit, the new row itself is dropped (it is the least important and newest);
- priority 0 (crash events) is never evicted, never expires and is always accepted, even over the
  cap (``over_cap_bytes`` tells by how much);
- rows older than their TTL are expired (priority > 0 only).

Every drop is counted exactly (rows, bytes and samples per priority and reason) in a table written
in the same transaction as the drop, so the counters survive restarts and always match the data.

Durability (``fsync``):

- ``"full"`` (default): ``synchronous=FULL``; the WAL is fsync'd at every commit, so a power cut
  loses nothing that ``put`` returned for. The agent commits about once per batch (about 1/s), so
  the cost is about one fsync per second.
- ``"normal"``: ``synchronous=NORMAL``; an application crash (``kill -9``) still loses nothing, but a
  power cut or kernel crash may roll back the transactions since the last WAL checkpoint (at most
  ``wal_autocheckpoint`` pages, about 4 MB): the newest seconds to minutes of data. Deleted (acked)
  rows may reappear after a power cut and are sent again; the stream dedupes by (device, boot, seq).

Order: rows of one stream are handed out in append order within each lane; see :meth:`take`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.errors import ConfigError

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
N_PRIORITIES = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    priority INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    expires_us INTEGER,
    samples INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rows_by_priority ON rows (priority, id);
CREATE INDEX IF NOT EXISTS rows_by_expiry ON rows (expires_us) WHERE expires_us IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, priority)
);
"""


@dataclass(frozen=True, slots=True)
class Row:
    """One queued message."""

    id: int
    stream: str
    priority: int
    boot_id: str
    seq: int
    topic: str
    payload: bytes


@dataclass
class Tally:
    rows: int = 0
    bytes: int = 0
    samples: int = 0


@dataclass
class QueueCounters:
    """Exact, persistent counters per reason and priority."""

    by: dict[tuple[str, int], Tally] = field(default_factory=dict)

    def get(self, name: str, priority: int | None = None) -> Tally:
        """Total for one reason (``enqueued``, ``acked``, ``evicted``, ``rejected``, ``expired``)."""
        out = Tally()
        for (n, p), t in list(self.by.items()):  # a copy: /metrics reads from another thread
            if n == name and (priority is None or p == priority):
                out.rows += t.rows
                out.bytes += t.bytes
                out.samples += t.samples
        return out

    def as_dict(self) -> dict[str, dict[str, int]]:
        names = sorted({n for n, _ in self.by})
        return {n: self.get(n).__dict__.copy() for n in names}


class DurableQueue:
    """A byte-capped, per-priority, crash-safe message queue in one SQLite file."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl_s: float | None = 7 * 24 * 3600,
        fsync: Literal["full", "normal"] = "full",
    ) -> None:
        if max_bytes <= 0:
            raise ConfigError(f"queue max_bytes must be > 0, got {max_bytes}")
        if fsync not in ("full", "normal"):
            raise ConfigError(f"queue fsync must be 'full' or 'normal', got {fsync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.ttl_us = None if ttl_s is None else int(ttl_s * 1e6)
        self._lock = threading.Lock()  # one connection, used from the agent loop and the CLI
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={fsync.upper()}")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ConfigError(f"queue {self.path}: {err}") from err
        self._bytes_by_priority = [0] * N_PRIORITIES
        for prio, nbytes in self._db.execute(
            "SELECT priority, COALESCE(SUM(LENGTH(payload)), 0) FROM rows GROUP BY priority"
        ):
            self._bytes_by_priority[prio] = int(nbytes)
        self.counters = QueueCounters()
        for name, prio, rows, nbytes, samples in self._db.execute(
            "SELECT name, priority, rows, bytes, samples FROM counters"
        ):
            self.counters.by[(name, prio)] = Tally(rows, nbytes, samples)

    # ----- size --------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Payload bytes held now."""
        return sum(self._bytes_by_priority)

    @property
    def over_cap_bytes(self) -> int:
        return max(0, self.nbytes - self.max_bytes)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    # ----- counters ----------------------------------------------------------------------------
    def _count(self, name: str, priority: int, rows: int, nbytes: int, samples: int) -> None:
        """Add to a counter inside the caller's transaction (so data and counters agree)."""
        if rows == 0:
            return
        self._db.execute(
            "INSERT INTO counters (name, priority, rows, bytes, samples) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name, priority) DO UPDATE SET rows = rows + excluded.rows, "
            "bytes = bytes + excluded.bytes, samples = samples + excluded.samples",
            (name, priority, rows, nbytes, samples),
        )
        t = self.counters.by.setdefault((name, priority), Tally())
        t.rows += rows
        t.bytes += nbytes
        t.samples += samples

    def _drop_where(self, name: str, where: str, args: tuple[object, ...]) -> None:
        """Delete matching rows and count them under ``name`` (inside a transaction)."""
        agg = self._db.execute(
            f"SELECT priority, COUNT(*), SUM(LENGTH(payload)), SUM(samples) FROM rows WHERE {where} "
            "GROUP BY priority",
            args,
        ).fetchall()
        if not agg:
            return
        self._db.execute(f"DELETE FROM rows WHERE {where}", args)
        for prio, rows, nbytes, samples in agg:
            self._count(name, prio, rows, nbytes, samples)
            self._bytes_by_priority[prio] -= nbytes

    # ----- put ---------------------------------------------------------------------------------
    def put(
        self,
        stream: str,
        topic: str,
        payload: bytes,
        *,
        priority: int,
        boot_id: str,
        seq: int,
        samples: int = 0,
        now_us: int | None = None,
    ) -> int | None:
        """Append one message durably; returns its row id, or ``None`` if the cap refused it."""
        if not 0 <= priority < N_PRIORITIES:
            raise ValueError(f"priority must be in 0..{N_PRIORITIES - 1}, got {priority}")
        now = int(time.time() * 1e6) if now_us is None else now_us
        size = len(payload)
        expires = None if (self.ttl_us is None or priority == 0) else now + self.ttl_us
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self.ttl_us is not None:
                    self._drop_where("expired", "expires_us IS NOT NULL AND expires_us < ?", (now,))
                if priority > 0 and not self._make_room(size, priority):
                    self._count("rejected", priority, 1, size, samples)
                    self._db.execute("COMMIT")
                    return None
                cur = self._db.execute(
                    "INSERT INTO rows (stream, priority, boot_id, seq, created_us, expires_us, "
                    "samples, topic, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (stream, priority, boot_id, seq, now, expires, samples, topic, payload),
                )
                self._count("enqueued", priority, 1, size, samples)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._bytes_by_priority[priority] += size
            return int(cur.lastrowid or 0)

    def _make_room(self, size: int, priority: int) -> bool:
        """Evict oldest rows of priority >= ``priority`` (least important first) until ``size`` fits."""
        need = self.nbytes + size - self.max_bytes
        if need <= 0:
            return True
        evictable = sum(self._bytes_by_priority[priority:])
        if evictable < need:
            return False
        for prio in range(N_PRIORITIES - 1, priority - 1, -1):
            if need <= 0:
                break
            if self._bytes_by_priority[prio] == 0:
                continue
            # Oldest first: find the id below which the running sum covers what is needed.
            cut = self._db.execute(
                "SELECT id FROM (SELECT id, SUM(LENGTH(payload)) OVER (ORDER BY id) AS run "
                "FROM rows WHERE priority = ?) WHERE run >= ? ORDER BY id LIMIT 1",
                (prio, need),
            ).fetchone()
            before = self._bytes_by_priority[prio]
            if cut is None:
                self._drop_where("evicted", "priority = ?", (prio,))
            else:
                self._drop_where("evicted", "priority = ? AND id <= ?", (prio, cut[0]))
            need -= before - self._bytes_by_priority[prio]
        return need <= 0

    # ----- take / ack --------------------------------------------------------------------------
    def take(self, limit: int, exclude: set[int], *, live_from: int = 0) -> list[Row]:
        """Up to ``limit`` rows to send now, none of ``exclude`` (already in flight).

        Priority 0 first. Then rows appended since ``live_from`` (the live lane) and older rows (the
        backlog) are interleaved, each lane in append order, so live data keeps flowing while a
        backlog drains. The receiver orders by (boot_id, seq) and dedupes resends.
        """
        if limit <= 0:
            return []
        with self._lock:
            ex = ",".join(str(i) for i in exclude) or "-1"
            q = (
                "SELECT id, stream, priority, boot_id, seq, topic, payload FROM rows "
                f"WHERE id NOT IN ({ex}) AND {{cond}} ORDER BY {{order}} LIMIT ?"
            )
            urgent = self._db.execute(
                q.format(cond="priority = 0", order="id"), (limit,)
            ).fetchall()
            rest = limit - len(urgent)
            live = self._db.execute(
                q.format(cond="priority > 0 AND id >= ?", order="priority, id"),
                (live_from, rest),
            ).fetchall()
            backlog = self._db.execute(
                q.format(cond="priority > 0 AND id < ?", order="priority, id"),
                (live_from, rest),
            ).fetchall()
        mixed: list[tuple[object, ...]] = list(urgent)
        for a, b in zip(live, backlog, strict=False):
            mixed += [a, b]
        n = min(len(live), len(backlog))
        mixed += live[n:] + backlog[n:]
        return [Row(*r) for r in mixed[:limit]]  # type: ignore[arg-type]

    def ack(self, ids: list[int]) -> None:
        """Delete acknowledged rows (one transaction for the whole list)."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                marks = ",".join("?" * len(ids))
                agg = self._db.execute(
                    f"SELECT priority, COUNT(*), SUM(LENGTH(payload)), SUM(samples) FROM rows "
                    f"WHERE id IN ({marks}) GROUP BY priority",
                    ids,
                ).fetchall()
                self._db.execute(f"DELETE FROM rows WHERE id IN ({marks})", ids)
                for prio, rows, nbytes, samples in agg:
                    self._count("acked", prio, rows, nbytes, samples)
                    self._bytes_by_priority[prio] -= nbytes
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def max_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM rows").fetchone()
        return int(row[0])

    def rows(self) -> list[tuple[str, int, str, int, int]]:
        """``(stream, priority, boot_id, seq, samples)`` of every row (tests and diagnostics)."""
        with self._lock:
            return [
                (s, p, b, q, n)
                for s, p, b, q, n in self._db.execute(
                    "SELECT stream, priority, boot_id, seq, samples FROM rows ORDER BY id"
                )
            ]

    def stats(self) -> dict[str, object]:
        return {
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "over_cap_bytes": self.over_cap_bytes,
            "counters": self.counters.as_dict(),
        }

    def writable(self) -> tuple[bool, str]:
        """Readiness: can a write transaction start now (disk there, file not locked)?"""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
        except sqlite3.Error as err:
            return False, f"queue {self.path} not writable: {err}"
        return True, f"queue {self.path} writable"

    def close(self) -> None:
        with self._lock:
            self._db.close()
