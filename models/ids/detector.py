"""Per-id CAN intrusion detector: unknown ids, DLC, frozen-bit flips, too-short gaps, too-high rates.

Learned from clean traffic (``CanIdsProfile.fit``), then ``CanIds.score`` flags each frame of a
``Frames`` block with a bitmask of reasons. Per-id state (last accepted time, leaky rate counter)
lives in arrays indexed by the id's slot, so traffic can be fed in any number of blocks.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from core.frames import Frames
from models.ids.kernels import _score, _slots

UNKNOWN_ID = 1  # an id never seen on this car's bus (fuzzing, DoS with a free high-priority id)
BAD_DLC = 2  # a payload length this id never had
FROZEN_BITS = 4  # a bit that never changed in clean traffic changed (forged or random payload)
SHORT_GAP = 8  # arrived much sooner after the previous frame of its id than ever seen
HIGH_RATE = 16  # this id's short-term rate is above anything seen in clean traffic
REASONS = {
    UNKNOWN_ID: "unknown_id",
    BAD_DLC: "bad_dlc",
    FROZEN_BITS: "frozen_bits",
    SHORT_GAP: "short_gap",
    HIGH_RATE: "high_rate",
}
EXT_BIT = np.uint64(1 << 32)  # key = id | EXT_BIT for 29-bit ids, so 0x123 and 0x00000123 differ
NO_GAP = np.int64(-1)


def frame_keys(frames: Frames) -> np.ndarray:
    return frames.can_id.astype(np.uint64) | (frames.extended.astype(np.uint64) * EXT_BIT)


@dataclass
class CanIdsProfile:
    """What clean traffic of one car looks like, per id (arrays indexed by slot, ids sorted)."""

    keys: np.ndarray  # uint64 sorted id keys
    dlc_mask: np.ndarray  # uint64 bit d set when payload length d (63 for >= 63) was seen
    frozen_mask: np.ndarray  # uint8 (k, 8) bits that never changed
    frozen_val: np.ndarray  # uint8 (k, 8) their value
    gap_min: np.ndarray  # int64 us: shorter gaps are flagged (-1: no gap rule)
    tau: np.ndarray  # float64 us, time constant of the rate counter
    rate_max: np.ndarray  # float64, counter values above this are flagged (inf: no rate rule)
    period: np.ndarray  # float64 us, median gap
    n_train: np.ndarray  # int64 frames seen in training

    @classmethod
    def fit(
        cls,
        segments: list[Frames],
        gap_factor: float = 0.5,
        rate_margin: float = 1.1,
        tau_periods: float = 8.0,
        min_frames: int = 30,
        tau_max_us: float = 1_000_000.0,
    ) -> CanIdsProfile:
        """Learn from clean segments (each a time-ordered ``Frames``; gaps never span two)."""
        segs = [s for s in segments if len(s)]
        if not segs:
            raise ValueError("no clean frames to learn from")
        keys_all = np.concatenate([frame_keys(s) for s in segs])
        keys = np.unique(keys_all)
        k = len(keys)
        data = np.concatenate([s.data[:, :8] for s in segs])
        dlc = np.concatenate([s.dlc for s in segs])
        slot = np.searchsorted(keys, keys_all)
        n_train = np.bincount(slot, minlength=k).astype(np.int64)
        dlc_mask = np.zeros(k, dtype=np.uint64)
        np.bitwise_or.at(dlc_mask, slot, np.uint64(1) << np.minimum(dlc, 63).astype(np.uint64))
        lo = np.full((k, 8), 0xFF, dtype=np.uint8)
        hi = np.zeros((k, 8), dtype=np.uint8)
        np.bitwise_and.at(lo, slot, data)  # AND of all payloads: bits always 1
        np.bitwise_or.at(hi, slot, data)  # OR of all payloads: bits ever 1
        frozen_mask = (~(lo ^ hi)).astype(np.uint8)  # bits equal in AND and OR never changed
        # too few frames to know which bits are frozen: do not judge the payload
        frozen_mask[n_train < min_frames] = 0
        # per-id gaps within each segment
        gaps_min = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
        gaps_med = np.zeros(k, dtype=np.float64)
        gap_lists: list[list[np.ndarray]] = [[] for _ in range(k)]
        for s in segs:
            sk = np.searchsorted(keys, frame_keys(s))
            order = np.argsort(sk, kind="stable")
            sorted_slot = sk[order]
            t = s.ts_us[order]
            same = sorted_slot[1:] == sorted_slot[:-1]
            g = np.diff(t)[same]
            gs = sorted_slot[1:][same]
            for j in np.unique(gs):
                gap_lists[j].append(g[gs == j])
        for j in range(k):
            if gap_lists[j]:
                g = np.concatenate(gap_lists[j])
                gaps_min[j] = g.min()
                gaps_med[j] = float(np.median(g))
        enough = (n_train >= min_frames) & (gaps_med > 0)
        gap_min = np.where(enough, (gap_factor * gaps_min).astype(np.int64), NO_GAP)
        # a short memory: the alarm must end soon after the attack does (slow ids: a gap rule)
        tau = np.where(enough, np.minimum(tau_periods * np.maximum(gaps_med, 1.0), tau_max_us), 1.0)
        prof = cls(
            keys,
            dlc_mask,
            frozen_mask,
            np.where(frozen_mask > 0, lo, 0).astype(np.uint8),
            gap_min,
            tau.astype(np.float64),
            np.zeros(k, dtype=np.float64),
            gaps_med,
            n_train,
        )
        # the rate ceiling is the highest counter value clean traffic ever reached, plus a margin
        for s in segs:
            det = CanIds(prof)
            det._run(s, learn=True)
        prof.rate_max = np.where(enough, prof.rate_max * rate_margin, np.inf)
        return prof

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{f: getattr(self, f) for f in self.__dataclass_fields__})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CanIdsProfile:
        with np.load(io.BytesIO(raw)) as z:
            return cls(**{f: z[f] for f in cls.__dataclass_fields__})


class CanIds:
    """Streaming detector for one bus: ``score(frames)`` returns a uint8 reason mask per frame."""

    def __init__(self, profile: CanIdsProfile, min_flips: int = 32, rate_gap: float = 0.75) -> None:
        self.profile = profile
        self.rate_gap = rate_gap  # a high-rate frame must also come this early (share of period)
        # short clean logs miss states (an ECU waking up sets whole bytes): only a payload that
        # flips many never-changing bits at once (random or forged data) is flagged
        self.min_flips = min_flips
        k = len(profile.keys)
        self.last_ts = np.full(k, -1, dtype=np.int64)
        self.count = np.zeros(k, dtype=np.float64)
        self.count_ts = np.full(k, -1, dtype=np.int64)

    def reset(self) -> None:
        self.last_ts[:] = -1
        self.count[:] = 0.0
        self.count_ts[:] = -1

    def score(self, frames: Frames) -> np.ndarray:
        """Flags (``REASONS`` bitmask, 0 = looks normal) of each frame, in time order."""
        return self._run(frames, learn=False)

    def _run(self, frames: Frames, learn: bool) -> np.ndarray:
        p = self.profile
        n = len(frames)
        out = np.zeros(n, dtype=np.uint8)
        if n == 0:
            return out
        ts = np.ascontiguousarray(frames.ts_us, dtype=np.int64)
        if n > 1 and np.any(np.diff(ts) < 0):
            raise ValueError("frames must be in time order")
        slot = np.empty(n, dtype=np.int64)
        _slots(frame_keys(frames), p.keys, slot)
        data = np.ascontiguousarray(frames.data[:, :8], dtype=np.uint8)
        _score(
            ts,
            slot,
            np.ascontiguousarray(frames.dlc, dtype=np.uint8),
            data,
            p.dlc_mask,
            p.frozen_mask,
            p.frozen_val,
            p.gap_min,
            p.tau,
            p.rate_max,
            p.period,
            self.rate_gap,
            self.last_ts,
            self.count,
            self.count_ts,
            self.min_flips,
            learn,
            out,
        )
        return out
