"""The configured anomaly detector per (vehicle, signal) slot, with evidence windows and a cool-down.

``AnomalyTracker.update`` takes the watched samples of one micro-batch, sorted by slot and time,
runs the detector once over all of them (numba kernels from ``models.kernels``), and returns the
anomaly events (at most one per slot and micro-batch, never twice for one slot within the
cool-down) and one score point per slot (its highest score of the micro-batch) for InfluxDB.
Each slot keeps its last ``window`` values and timestamps in a ring, so an event carries the
evidence the score was drawn from. The whole state is one blob in the ``models`` table.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import numpy as np

from core.errors import ConfigError, DecodeError
from models.kernels.artime import ARTime
from models.kernels.neighbour import NNLikelihood
from models.kernels.spatial import SpatialAnomaly
from models.kernels.zscore import RobustZScore
from models.state import SlotStateful


def _zscore(calib: int) -> list[SlotStateful]:
    return [RobustZScore(alpha=0.01, clip=3.0, warmup=30, n_slots=0)]


def _artime(calib: int) -> list[SlotStateful]:
    return [ARTime(n_slots=0, calib=calib, margin=0.5)]


def _nn(calib: int) -> list[SlotStateful]:
    return [NNLikelihood(calib=calib, n_slots=0)]


def _artime_nn(calib: int) -> list[SlotStateful]:
    return _artime(calib) + _nn(calib)


def _artime_spatial(calib: int) -> list[SlotStateful]:
    return [*_artime(calib), SpatialAnomaly(tolerance=0.05, warmup=calib, n_slots=0)]


@dataclass(frozen=True)
class DetectorKind:
    """A detector the stream can run: its parts (combined by the mean of their scores, or the
    largest with ``largest``), the default threshold of that, and the kind of score (|z| or a
    [0, 1] likelihood)."""

    make: Callable[[int], list[SlotStateful]]
    threshold: float | None  # None: the stream's ``anomaly_z``
    absolute: bool  # score = |score| (signed z-scores)
    largest: bool = False  # combine the parts by their largest score instead of the mean


# name -> detector; costs per slot and NAB quality are in BENCHMARKS.md ("NAB")
DETECTORS: Final[dict[str, DetectorKind]] = {
    "robust_zscore": DetectorKind(_zscore, None, True),  # 32 B per slot, the cheap default
    "artime": DetectorKind(_artime, 0.5, False),
    "nn_likelihood": DetectorKind(_nn, 0.5, False),
    "artime_nn": DetectorKind(_artime_nn, 0.5, False),  # ~390 KB per slot
    # NAB's best and cheapest of the ARTime detectors (BENCHMARKS.md, issue 20): ~292 KB per slot;
    # 0.325: NAB's tune files chose >= 0.3282 in all three profiles; no NAB score lies between
    "artime_spatial": DetectorKind(_artime_spatial, 0.325, False, largest=True),
}
_VERSION: Final = 1


def check_detector(name: str) -> DetectorKind:
    kind = DETECTORS.get(name)
    if kind is None:
        raise ConfigError(f"unknown anomaly detector {name!r}; known: {', '.join(DETECTORS)}")
    return kind


@dataclass
class AnomalyHits:
    """What one ``update`` found: events (slot, JSON-able record) and score points per slot."""

    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # slot, ts_us, score: each slot's highest score of the micro-batch
    scores: list[tuple[int, int, float]] = field(default_factory=list)


class AnomalyTracker:
    """Detector parts, evidence rings and cool-down clocks of every watched slot."""

    def __init__(
        self,
        detector: str = "robust_zscore",
        threshold: float = 6.0,
        cooldown_s: float = 600.0,
        window: int = 60,
        calib: int = 750,
    ) -> None:
        kind = check_detector(detector)
        if window < 1 or cooldown_s < 0 or calib < 32:
            raise ConfigError(
                f"anomaly tracker: window {window} (>= 1), cooldown_s {cooldown_s} (>= 0), "
                f"calib {calib} (>= 32)"
            )
        self.detector, self.kind = detector, kind
        self.threshold, self.cooldown_us = float(threshold), int(cooldown_s * 1e6)
        self.window, self.calib = window, calib
        self.parts = kind.make(calib)
        self.ring_v = np.zeros((0, window))
        self.ring_t = np.zeros((0, window), np.int64)
        self.ring_n = np.zeros(0, np.int64)  # samples seen per slot (ring position = n % window)
        self.last_emit = np.full(0, np.iinfo(np.int64).min // 2, np.int64)

    def _ensure(self, n: int) -> None:
        have = len(self.ring_n)
        if n <= have:
            return
        grow = n - have
        self.ring_v = np.vstack([self.ring_v, np.zeros((grow, self.window))])
        self.ring_t = np.vstack([self.ring_t, np.zeros((grow, self.window), np.int64)])
        self.ring_n = np.r_[self.ring_n, np.zeros(grow, np.int64)]
        self.last_emit = np.r_[self.last_emit, np.full(grow, np.iinfo(np.int64).min // 2)]

    def scores(self, slots: np.ndarray, values: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Score-then-learn every sample (time order per slot): the mean of the parts' scores
        (or the largest)."""
        total = np.zeros(len(slots))
        for part in self.parts:
            s = part.score_learn_many(slots, values, ts.astype(np.float64))  # type: ignore[attr-defined]
            s = np.nan_to_num(np.abs(s) if self.kind.absolute else s)
            if self.kind.largest:
                np.maximum(total, s, out=total)
            else:
                total += s
        return total if self.kind.largest else total / len(self.parts)

    def _evidence(
        self, slot: int, first: int, i: int, v: np.ndarray, t: np.ndarray
    ) -> tuple[list[float], list[int]]:
        """The last ``window`` values of ``slot`` up to sample ``i`` (batch rows first..i)."""
        n, w = int(self.ring_n[slot]), self.window
        old = min(n, w)
        idx = (np.arange(n - old, n) % w) if old else np.zeros(0, np.int64)
        vals = np.r_[self.ring_v[slot, idx], v[first : i + 1]][-w:]
        tss = np.r_[self.ring_t[slot, idx], t[first : i + 1]][-w:]
        return vals.tolist(), [int(x) for x in tss]

    def update(self, slots: np.ndarray, values: np.ndarray, ts: np.ndarray) -> AnomalyHits:
        """Samples sorted by (slot, ts); returns the events and score points of the batch."""
        hits = AnomalyHits()
        if not len(slots):
            return hits
        self._ensure(int(slots.max()) + 1)
        score = self.scores(slots, values, ts)
        starts = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])
        ends = np.r_[starts[1:], len(slots)]
        # per slot: its highest score (the InfluxDB point) ...
        order = np.lexsort((-score, slots))  # per slot, the highest score first (stable)
        at = order[starts]
        for s_, k in zip(slots[starts].tolist(), at.tolist(), strict=True):
            hits.scores.append((s_, int(ts[k]), float(score[k])))
        # ... and each sample over the threshold once the cool-down is over: an episode starts.
        # Python runs per event and per slot with a candidate, never per sample.
        over = np.flatnonzero(score > self.threshold)
        if len(over):
            group = np.searchsorted(starts, over, side="right") - 1
            bounds = np.flatnonzero(np.r_[True, group[1:] != group[:-1], True])
            for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                cand, a = over[lo:hi], int(starts[group[lo]])
                s_ = int(slots[a])
                while True:
                    cand = cand[ts[cand] >= self.last_emit[s_] + self.cooldown_us]
                    if not len(cand):
                        break
                    i = int(cand[0])
                    self.last_emit[s_] = int(ts[i])
                    hits.events.append((s_, self._event(s_, a, i, values, ts, score)))
        self._remember(slots, values, ts, starts, ends)
        return hits

    def _event(
        self, s_: int, a: int, i: int, values: np.ndarray, ts: np.ndarray, score: np.ndarray
    ) -> dict[str, Any]:
        vals, tss = self._evidence(s_, a, i, values, ts)
        return {
            "ts_us": int(ts[i]),
            "value": float(values[i]),
            "score": float(score[i]),
            "threshold": self.threshold,
            "detector": self.detector,
            "window": {"ts_us": tss, "values": vals},
        }

    def _remember(
        self, slots: np.ndarray, v: np.ndarray, t: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> None:
        """Write the last ``window`` samples of each slot into its ring (no duplicate cells)."""
        count = ends - starts
        rank = np.arange(len(slots)) - np.repeat(starts, count)
        keep = rank >= np.repeat(count - self.window, count)
        s, r = slots[keep], rank[keep]
        pos = (self.ring_n[s] + r) % self.window
        self.ring_v[s, pos] = v[keep]
        self.ring_t[s, pos] = t[keep]
        self.ring_n[slots[starts]] += count

    def bytes_per_slot(self) -> int:
        return sum(p.state.bytes_per_slot() for p in self.parts) + self.window * 16 + 16

    def to_bytes(self) -> bytes:
        doc = {
            "v": _VERSION,
            "detector": self.detector,
            "calib": self.calib,
            "window": self.window,
            "parts": [p.to_bytes() for p in self.parts],
            "ring_v": self.ring_v.tobytes(),
            "ring_t": self.ring_t.tobytes(),
            "ring_n": self.ring_n.tobytes(),
            "last_emit": self.last_emit.tobytes(),
        }
        # zlib: the rings' timestamps are regular and the values repetitive (4,096 z-score slots:
        # 4.1 MB raw, 0.6 MB compressed), and the blob goes to Kafka whole (message.max.bytes)
        return zlib.compress(msgpack.packb(doc, use_bin_type=True), 1)

    def load(self, raw: bytes) -> bool:
        """Restore a checkpoint of the same detector, calibration and window; False (state left
        fresh) when the configuration changed since. Raises DecodeError on a bad blob."""
        try:
            doc = msgpack.unpackb(zlib.decompress(raw), raw=False)
            if doc.get("v") != _VERSION:
                raise DecodeError(f"anomaly tracker: version {doc.get('v')!r}")
            if (doc["detector"], doc["calib"], doc["window"]) != (
                self.detector,
                self.calib,
                self.window,
            ):
                return False
            parts = [type(p).from_bytes(b) for p, b in zip(self.parts, doc["parts"], strict=True)]
            w = self.window
            ring_v = np.frombuffer(doc["ring_v"], np.float64).reshape(-1, w).copy()
            ring_t = np.frombuffer(doc["ring_t"], np.int64).reshape(-1, w).copy()
            ring_n = np.frombuffer(doc["ring_n"], np.int64).copy()
            last_emit = np.frombuffer(doc["last_emit"], np.int64).copy()
            if not len(ring_v) == len(ring_t) == len(ring_n) == len(last_emit):
                raise DecodeError("anomaly tracker: arrays disagree on the number of slots")
        except (KeyError, TypeError, ValueError, zlib.error, msgpack.UnpackException) as err:
            raise DecodeError(f"anomaly tracker: bad state blob: {err}") from err
        self.parts, self.ring_v, self.ring_t = parts, ring_v, ring_t
        self.ring_n, self.last_emit = ring_n, last_emit
        return True


def parse_signals(families: Sequence[str], names: Sequence[str]) -> list[bool]:
    """Which of ``names`` are watched: a family ends with '.' (a VSS branch) or is a full name."""
    fam = tuple(f for f in families if f.endswith("."))
    exact = set(families)
    return [n in exact or n.startswith(fam) for n in names]
