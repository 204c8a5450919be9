"""Inject DoS, fuzzing, spoofing and replay frames into real CAN traffic, with a label per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.frames import Frames

ATTACKS = ("dos", "fuzzing", "spoofing", "replay")
# Injection periods in the spirit of the HCRL car-hacking dataset (Song et al. 2020): DoS every
# 0.3 ms with id 0x000, fuzzing every 0.5 ms; spoofing and replay are subtler here: one legit
# id at its own rate (its traffic doubles), so only timing and payload can tell.
DOS_PERIOD_US = 300
FUZZ_PERIOD_US = 500


def merge(clean: Frames, extra: Frames) -> tuple[Frames, np.ndarray]:
    """Clean and injected frames in time order (clean first on ties) and the label (1 = injected)."""
    width = max(clean.data.shape[1], extra.data.shape[1])

    def pad(d: np.ndarray) -> np.ndarray:
        return d if d.shape[1] == width else np.pad(d, ((0, 0), (0, width - d.shape[1])))

    label = np.r_[np.zeros(len(clean), np.uint8), np.ones(len(extra), np.uint8)]
    ts = np.r_[clean.ts_us, extra.ts_us]
    order = np.lexsort((label, ts))
    merged = Frames(
        ts[order],
        np.r_[clean.can_id, extra.can_id].astype(np.uint32)[order],
        np.r_[clean.extended, extra.extended].astype(bool)[order],
        np.r_[clean.dlc, extra.dlc].astype(np.uint8)[order],
        np.concatenate([pad(clean.data), pad(extra.data)])[order],
    )
    return merged, label[order]


def _frames(ts: np.ndarray, ids: np.ndarray, dlc: np.ndarray, data: np.ndarray) -> Frames:
    return Frames(
        ts.astype(np.int64),
        ids.astype(np.uint32),
        np.zeros(len(ts), dtype=bool),
        dlc.astype(np.uint8),
        data.astype(np.uint8),
    )


def periodic_ids(clean: Frames, max_period_us: int = 100_000, min_frames: int = 20) -> np.ndarray:
    """Standard ids sent at least every ``max_period_us`` (median gap) with enough frames."""
    out = []
    for cid in np.unique(clean.can_id[~clean.extended]):
        t = clean.ts_us[(clean.can_id == cid) & ~clean.extended]
        if len(t) >= min_frames and np.median(np.diff(t)) <= max_period_us:
            out.append(cid)
    return np.asarray(out, dtype=np.uint32)


def inject(
    clean: Frames, kind: str, start_us: int, stop_us: int, rng: np.random.Generator
) -> tuple[Frames, np.ndarray, dict[str, int]] | None:
    """``clean`` with one attack of ``kind`` in ``[start_us, stop_us)``; None if it cannot apply."""
    if kind == "dos":
        ts = np.arange(start_us, stop_us, DOS_PERIOD_US)
        n = len(ts)
        extra = _frames(ts, np.zeros(n), np.full(n, 8), np.zeros((n, 8)))
        info = {"id": 0}
    elif kind == "fuzzing":
        ts = np.arange(start_us, stop_us, FUZZ_PERIOD_US)
        n = len(ts)
        extra = _frames(ts, rng.integers(0, 0x800, n), np.full(n, 8), rng.integers(0, 256, (n, 8)))
        info = {}
    elif kind in ("spoofing", "replay"):
        cands = periodic_ids(clean)
        if len(cands) == 0:
            return None
        target = int(rng.choice(cands))
        sel = np.flatnonzero((clean.can_id == target) & ~clean.extended)
        t_own = clean.ts_us[sel]
        period = int(np.median(np.diff(t_own)))
        if kind == "spoofing":
            # the attacker's own clock: same period, random phase, forged value in one byte
            ts = np.arange(start_us + int(rng.integers(0, period)), stop_us, period)
            n = len(ts)
            src = sel[np.clip(np.searchsorted(t_own, ts) - 1, 0, len(sel) - 1)]
            data = clean.data[src, :8].copy()
            dlc = clean.dlc[src]
            byte = int(rng.integers(0, max(1, int(np.median(dlc)))))
            data[:, byte] = int(rng.integers(0, 256))  # e.g. a faked speed or door state
            extra = _frames(ts, np.full(n, target), dlc, data)
        else:
            # re-send this id's frames recorded before the attack, with their original spacing
            before = sel[t_own < start_us]
            if len(before) < 2:
                return None
            rec = before[-min(len(before), max(2, (stop_us - start_us) // max(period, 1))) :]
            ts = start_us + (clean.ts_us[rec] - clean.ts_us[rec[0]]) + int(rng.integers(0, period))
            keep = ts < stop_us
            rec, ts = rec[keep], ts[keep]
            extra = _frames(ts, clean.can_id[rec], clean.dlc[rec], clean.data[rec, :8])
        info = {"id": target, "period_us": period}
    else:
        raise ValueError(f"unknown attack {kind!r}; known: {', '.join(ATTACKS)}")
    if len(extra) == 0:
        return None
    merged, label = merge(clean, extra)
    return merged, label, info


def write_candump(frames: Frames, path: Path | str, iface: str = "can0") -> None:
    """Write ``frames`` as a candump ``-L`` log (classic frames; what ``read_candump`` reads)."""
    lines = []
    for ts, cid, ext, dlc, row in zip(
        frames.ts_us.tolist(), frames.can_id.tolist(), frames.extended.tolist(),
        frames.dlc.tolist(), frames.data, strict=True,
    ):  # fmt: skip
        ident = f"{cid:08X}" if ext else f"{cid:03X}"
        lines.append(
            f"({ts // 1_000_000}.{ts % 1_000_000:06d}) {iface} {ident}#{row[:dlc].tobytes().hex().upper()}\n"
        )
    Path(path).write_text("".join(lines))
