"""What ``carpulse eval faults`` counts: the source, what the edge accepted, what InfluxDB holds.

Three sets of samples per vehicle, each keyed by (device, signal, timestamp):

- **source**: every sample the tick source produced (its journal, ``edge.sources.tick``);
- **accepted**: every sample the agent committed to its durable queue. A trigger the evaluation
  adds to the queue's SQLite file copies each inserted row into a journal table in the same
  transaction, so a row is in the journal exactly when ``put`` committed it (the agent's code
  is unchanged). ``source - accepted`` is the documented window: samples still being batched
  in memory when the agent was killed;
- **stored**: the points InfluxDB returns, compared value by value.

``lost`` = accepted samples missing from InfluxDB (or stored with another value); ``unexpected``
= points InfluxDB holds that no source produced. InfluxDB keys a point by series and time, so a
sample written twice collapses into one point; ``duplicates`` therefore counts *writes*: the
points InfluxDB acknowledged into the evaluation's database (its per-shard ``writePointsOk``
counters, one point per sample) minus the distinct points stored.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StackError
from core.wire import decode_telemetry

JOURNAL_SQL = """
CREATE TABLE IF NOT EXISTS eval_accepted (boot_id TEXT, seq INTEGER, payload BLOB);
CREATE TRIGGER IF NOT EXISTS eval_accepted_rows AFTER INSERT ON rows
WHEN NEW.stream = 'telemetry'
BEGIN
    INSERT INTO eval_accepted VALUES (NEW.boot_id, NEW.seq, NEW.payload);
END;
"""

Key = tuple[str, int]  # (signal, ts_us) within one device


def watch_queue(path: Path) -> None:
    """Create the agent's queue file (its own schema) with the acceptance journal trigger."""
    from edge.queue import DurableQueue

    DurableQueue(path).close()
    with sqlite3.connect(path) as db:
        db.executescript(JOURNAL_SQL)
    db.close()


def accepted_samples(path: Path) -> dict[Key, float]:
    """Every telemetry sample the agent's queue ever committed (from the journal table)."""
    out: dict[Key, float] = {}
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT payload FROM eval_accepted").fetchall()
        left = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    finally:
        db.close()
    for (payload,) in rows:
        for name, ts, value in decode_telemetry(payload).samples.records():
            out[(name, int(ts))] = float(value)
    if left:
        raise StackError(f"{path}: {left} row(s) still queued after the agent stopped")
    return out


def source_samples(journal: Path, signals: int, period_us: int) -> dict[Key, float]:
    """Every sample the tick source produced, from its journal."""
    from edge.sources.tick import read_journal, tick_names, tick_value

    names = tick_names(signals)
    out: dict[Key, float] = {}
    for a, b in read_journal(journal):
        k = np.repeat(np.arange(a, b + 1, dtype=np.int64), signals)
        sig = np.tile(np.arange(signals), b - a + 1)
        vals = tick_value(k, sig)
        for s, t, v in zip(
            sig.tolist(), (k * period_us + sig).tolist(), vals.tolist(), strict=True
        ):
            out[(names[s], t)] = v
    return out


class Influx:
    """InfluxQL over HTTP against the stack's InfluxDB 1.x (errors raise ``OSError``)."""

    def __init__(self, url: str, db: str) -> None:
        self.url, self.db = url, db

    def _get(self, q: str, db: str | None) -> list[dict[str, Any]]:
        params = {"q": q, "epoch": "u"} | ({"db": db} if db else {})
        url = f"{self.url}/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            doc = json.load(resp)
        results: list[dict[str, Any]] = doc.get("results", [])
        for r in results:
            if "error" in r:
                raise StackError(f"InfluxQL {q!r}: {r['error']}")
        return results

    def series(self, q: str) -> list[dict[str, Any]]:
        res = self._get(q, self.db)
        return res[0].get("series", []) if res else []

    def stored(self, device: str) -> dict[Key, float]:
        """Every point of ``device`` in the measurement ``telemetry`` (one field per point)."""
        out: dict[Key, float] = {}
        extra = 0
        for s in self.series(f"SELECT * FROM telemetry WHERE device = '{device}'"):
            cols = s["columns"]
            skip = {0, cols.index("device")} if "device" in cols else {0}
            for row in s["values"]:
                fields = [
                    (cols[i], v) for i, v in enumerate(row) if i not in skip and v is not None
                ]
                for name, v in fields:
                    out[(name, int(row[0]))] = float(v)
                extra += len(fields) - 1  # a sample shares a point only if the edge repacked it
        if extra:
            out[("<shared point>", 0)] = float(extra)
        return out

    def count(self, prefix: str) -> int:
        """Samples InfluxDB holds for devices whose id starts with ``prefix``."""
        series = self.series(f"SELECT COUNT(*) FROM telemetry WHERE device =~ /^{prefix}/")
        return sum(int(v or 0) for v in series[0]["values"][0][1:]) if series else 0

    def status_points(self) -> int:
        """Points of ``device_status`` (the stream writes one per online/offline change)."""
        series = self.series('SELECT COUNT("online") FROM device_status')
        return int(series[0]["values"][0][1] or 0) if series else 0

    def points_written(self) -> int:
        """Points InfluxDB acknowledged into this database since it started (all shards)."""
        total = 0
        for r in self._get("SHOW STATS FOR 'shard'", None):
            for s in r.get("series", []):
                if s.get("tags", {}).get("database") != self.db:
                    continue
                cols = s["columns"]
                total += int(s["values"][0][cols.index("writePointsOk")])
        return total

    def last_per_device(self, prefix: str, signal: str) -> dict[str, int]:
        q = (
            f'SELECT LAST("{signal}") FROM telemetry WHERE device =~ /^{prefix}/ '
            "AND time > now() - 30m GROUP BY device"
        )
        return {s["tags"]["device"]: int(s["values"][0][0]) for s in self.series(q)}


class WriteCounter:
    """``points_written`` across InfluxDB restarts (its counters start again at zero)."""

    def __init__(self, influx: Influx) -> None:
        self.influx = influx
        self.base = self.last = 0

    def read(self) -> int:
        now = self.influx.points_written()
        if now < self.last:  # restarted: what was counted before carries over
            self.base += self.last
        self.last = now
        return self.base + now

    def before_restart(self) -> None:
        """Read once more right before InfluxDB is stopped (later writes are not counted).

        The count carries over explicitly: after a long outage the backlog alone may exceed
        the old count before the next read, so a drop cannot be relied on to show the restart.
        """
        self.read()
        self.base += self.last
        self.last = 0


class Progress:
    """Polls InfluxDB for the newest visible sample of each vehicle (recovery times)."""

    def __init__(self, influx: Influx, prefix: str, signal: str, every_s: float = 0.25) -> None:
        self.influx, self.prefix, self.signal, self.every_s = influx, prefix, signal, every_s
        self.seen: list[tuple[float, dict[str, int]]] = []  # (wall time, device -> newest ts)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                last = self.influx.last_per_device(self.prefix, self.signal)
            except (OSError, StackError, ValueError):
                continue  # InfluxDB down: nothing visible
            self.seen.append((time.time(), last))

    def recovered_at(self, devices: Iterable[str], since: float) -> float | None:
        """Wall time of the first poll showing, for every device, a sample stamped >= ``since``."""
        want = int(since * 1e6)
        devs = list(devices)
        for t, last in list(self.seen):
            if t >= since and all(last.get(d, 0) >= want for d in devs):
                return t
        return None


@dataclass
class Tally:
    """One scenario's (or the total's) figures."""

    source: int = 0
    accepted: int = 0
    stored: int = 0
    lost: int = 0
    duplicates: int | None = 0
    unexpected: int = 0
    window: int = 0  # produced, but in the agent's memory at a kill
    lost_examples: list[str] = field(default_factory=list)
    missing: list[tuple[str, str, int]] = field(default_factory=list)  # (device, signal, ts_us)

    def add(self, other: Tally) -> None:
        self.source += other.source
        self.accepted += other.accepted
        self.stored += other.stored
        self.lost += other.lost
        self.unexpected += other.unexpected
        self.window += other.window
        self.missing += other.missing
        if self.duplicates is not None and other.duplicates is not None:
            self.duplicates += other.duplicates
        else:
            self.duplicates = None


def compare(
    source: dict[Key, float], accepted: dict[Key, float], stored: dict[Key, float], device: str
) -> Tally:
    """Sample by sample: what of the source and of the accepted set InfluxDB holds."""
    t = Tally(source=len(source), accepted=len(accepted))
    t.stored = sum(1 for k, v in source.items() if stored.get(k) == v)
    missing = [k for k, v in accepted.items() if stored.get(k) != v]
    t.lost = len(missing)
    t.lost_examples = [f"{device} {n} {ts}" for n, ts in sorted(missing)[:5]]
    t.missing = [(device, n, ts) for n, ts in missing]
    t.unexpected = sum(1 for k in stored if k not in source)
    t.unexpected += sum(1 for k in accepted if k not in source)  # the edge invented a sample
    t.window = sum(1 for k in source if k not in accepted)
    return t
