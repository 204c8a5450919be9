"""Voting over frames (per-character, confidence-weighted) and a per-plate dedupe window."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reading:
    """One frame's reading of a plate."""

    text: str
    confidence: float
    ts: float  # seconds (camera or wall clock)
    crop_sha256: str = ""


@dataclass(frozen=True, slots=True)
class Consensus:
    """The plate a group of readings agrees on."""

    text: str
    confidence: float  # mean over characters of the winning weight share x mean confidence
    votes: int
    first_ts: float
    last_ts: float
    crop_sha256: str  # of the most confident reading that matches the consensus exactly


def _distance(a: str, b: str) -> int:
    """Levenshtein distance (plates are 7-8 characters: a small table is enough)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@dataclass
class _Track:
    readings: list[Reading] = field(default_factory=list)

    @property
    def last_ts(self) -> float:
        return self.readings[-1].ts

    def consensus(self) -> Consensus:
        lengths = Counter(len(r.text) for r in self.readings)
        length = lengths.most_common(1)[0][0]
        same = [r for r in self.readings if len(r.text) == length]
        chars, shares = [], []
        for p in range(length):
            weight: dict[str, float] = defaultdict(float)
            for r in same:
                weight[r.text[p]] += r.confidence
            ch, w = max(weight.items(), key=lambda kv: kv[1])
            chars.append(ch)
            shares.append(w / max(1e-9, sum(weight.values())))
        text = "".join(chars)
        exact = [r for r in self.readings if r.text == text] or self.readings
        best = max(exact, key=lambda r: r.confidence)
        mean_conf = sum(r.confidence for r in same) / len(same)
        return Consensus(
            text,
            mean_conf * sum(shares) / length,
            len(self.readings),
            self.readings[0].ts,
            self.last_ts,
            best.crop_sha256,
        )


class PlateVoter:
    """Groups readings of the same plate across frames; a group closes after ``gap_s`` unseen.

    A reading joins the open group whose consensus is within ``max_distance`` edits, so a
    misread character in one frame is outvoted by the others instead of making a new plate.
    """

    def __init__(
        self,
        min_votes: int = 2,
        gap_s: float = 1.5,
        max_distance: int = 2,
        max_track_s: float = 30.0,
    ) -> None:
        if min_votes < 1:
            raise ValueError(f"min_votes must be >= 1, got {min_votes}")
        self.min_votes, self.gap_s = min_votes, gap_s
        self.max_distance, self.max_track_s = max_distance, max_track_s
        self._tracks: list[_Track] = []
        self.discarded = 0  # groups that closed with fewer than min_votes readings

    def add(self, reading: Reading) -> list[Consensus]:
        """Add one reading; returns the groups this closed (consensus reached)."""
        done = self.flush(reading.ts)
        best, best_d = None, self.max_distance + 1
        for track in self._tracks:
            d = _distance(track.consensus().text, reading.text)
            if d < best_d:
                best, best_d = track, d
        if best is None:
            best = _Track()
            self._tracks.append(best)
        best.readings.append(reading)
        return done

    def flush(self, now: float | None = None) -> list[Consensus]:
        """Close groups unseen for ``gap_s`` (or open too long); ``None`` closes every group."""
        out: list[Consensus] = []
        keep: list[_Track] = []
        for track in self._tracks:
            stale = now is None or now - track.last_ts > self.gap_s
            too_long = now is not None and now - track.readings[0].ts > self.max_track_s
            if not (stale or too_long):
                keep.append(track)
                continue
            if len(track.readings) >= self.min_votes:
                out.append(track.consensus())
            else:
                self.discarded += 1
        self._tracks = keep
        return out


class DedupeWindow:
    """Suppresses a plate seen again within ``window_s`` of its last event (a car idling at the gate)."""

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def allow(self, text: str, ts: float) -> bool:
        last = self._last.get(text)
        self._last[text] = ts
        if last is not None and ts - last < self.window_s:
            self.suppressed += 1
            return False
        # Forget plates long gone so the table does not grow without bound.
        if len(self._last) > 10_000:
            cutoff = ts - self.window_s
            self._last = {k: v for k, v in self._last.items() if v >= cutoff}
        return True
