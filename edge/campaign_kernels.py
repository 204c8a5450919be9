"""Numba kernels of the collection campaigns: windowed aggregates and on-change with deadband.

State lives in arrays indexed by a slot (one per selected signal); each call runs over one
micro-batch in time order and writes into arrays the caller allocated. Plain-Python references
are in ``tests/reference/campaigns.py``.
"""

from __future__ import annotations

import numpy as np

from core import kernel_flags
from core.jit import njit


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _periodic(  # type: ignore[no-untyped-def]
    slot_of, sig, ts, val, period_us, horizon_us,
    bucket, mn, mx, sm, cnt, last, last_ts,
    out_slot, out_ts, out_min, out_max, out_mean, out_last,
):  # fmt: skip
    """Aggregate per slot over windows of ``period_us``; emit a window when a later one starts.

    After the batch, windows that ended before ``horizon_us`` (the newest time seen) are emitted too,
    so a signal that stops does not hold its last window forever. NaN values are skipped.
    """
    k = 0
    for i in range(len(sig)):
        s = slot_of[sig[i]]
        if s < 0:
            continue
        v = val[i]
        if np.isnan(v):
            continue
        b = ts[i] // period_us
        if cnt[s] > 0 and b != bucket[s]:
            out_slot[k] = s
            out_ts[k] = last_ts[s]
            out_min[k] = mn[s]
            out_max[k] = mx[s]
            out_mean[k] = sm[s] / cnt[s]
            out_last[k] = last[s]
            k += 1
            cnt[s] = 0
        if cnt[s] == 0:
            bucket[s] = b
            mn[s] = v
            mx[s] = v
            sm[s] = 0.0
        if v < mn[s]:
            mn[s] = v
        if v > mx[s]:
            mx[s] = v
        sm[s] += v
        cnt[s] += 1
        last[s] = v
        last_ts[s] = ts[i]
    hb = horizon_us // period_us
    for s in range(len(cnt)):
        if cnt[s] > 0 and bucket[s] < hb:
            out_slot[k] = s
            out_ts[k] = last_ts[s]
            out_min[k] = mn[s]
            out_max[k] = mx[s]
            out_mean[k] = sm[s] / cnt[s]
            out_last[k] = last[s]
            k += 1
            cnt[s] = 0
    return k


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _on_change(slot_of, sig, val, deadband, sent, has_sent, keep):  # type: ignore[no-untyped-def]
    """Keep a sample when it differs from the last one kept for its slot by more than ``deadband``."""
    k = 0
    for i in range(len(sig)):
        s = slot_of[sig[i]]
        if s < 0:
            continue
        v = val[i]
        if has_sent[s]:
            p = sent[s]
            if np.isnan(v) and np.isnan(p):
                continue
            if not (np.isnan(v) or np.isnan(p)) and abs(v - p) <= deadband:
                continue
        sent[s] = v
        has_sent[s] = True
        keep[k] = i
        k += 1
    return k


def periodic_update(
    slot_of: np.ndarray,
    sig: np.ndarray,
    ts_us: np.ndarray,
    value: np.ndarray,
    period_us: int,
    state: dict[str, np.ndarray],
) -> tuple[np.ndarray, ...]:
    """Feed one micro-batch; returns ``(slot, ts_us, min, max, mean, last)`` of the closed windows."""
    if period_us <= 0:
        raise ValueError("period_us must be > 0")
    n = len(sig)
    cap = n + len(state["cnt"])
    out_slot = np.empty(cap, np.int32)
    out_ts = np.empty(cap, np.int64)
    outs = [np.empty(cap, np.float64) for _ in range(4)]
    horizon = int(ts_us.max()) if n else -1
    k = _periodic(
        np.ascontiguousarray(slot_of, np.int32),
        np.ascontiguousarray(sig, np.int32),
        np.ascontiguousarray(ts_us, np.int64),
        np.ascontiguousarray(value, np.float64),
        np.int64(period_us),
        np.int64(horizon),
        state["bucket"],
        state["mn"],
        state["mx"],
        state["sm"],
        state["cnt"],
        state["last"],
        state["last_ts"],
        out_slot,
        out_ts,
        *outs,
    )
    return (out_slot[:k], out_ts[:k], *(o[:k] for o in outs))


def periodic_state(n_slots: int) -> dict[str, np.ndarray]:
    return {
        "bucket": np.zeros(n_slots, np.int64),
        "mn": np.zeros(n_slots, np.float64),
        "mx": np.zeros(n_slots, np.float64),
        "sm": np.zeros(n_slots, np.float64),
        "cnt": np.zeros(n_slots, np.int64),
        "last": np.zeros(n_slots, np.float64),
        "last_ts": np.zeros(n_slots, np.int64),
    }


def on_change_update(
    slot_of: np.ndarray,
    sig: np.ndarray,
    value: np.ndarray,
    deadband: float,
    state: dict[str, np.ndarray],
) -> np.ndarray:
    """Row indices of the samples to keep (changed by more than ``deadband`` since the last kept)."""
    keep = np.empty(len(sig), np.int64)
    k = _on_change(
        np.ascontiguousarray(slot_of, np.int32),
        np.ascontiguousarray(sig, np.int32),
        np.ascontiguousarray(value, np.float64),
        np.float64(deadband),
        state["sent"],
        state["has_sent"],
        keep,
    )
    return keep[:k]


def on_change_state(n_slots: int) -> dict[str, np.ndarray]:
    return {"sent": np.zeros(n_slots, np.float64), "has_sent": np.zeros(n_slots, np.bool_)}


def grow_state(state: dict[str, np.ndarray], n_slots: int) -> None:
    """Extend every state array to ``n_slots`` slots (new slots start empty)."""
    for key, arr in state.items():
        if len(arr) < n_slots:
            grown = np.zeros(n_slots, arr.dtype)
            grown[: len(arr)] = arr
            state[key] = grown
