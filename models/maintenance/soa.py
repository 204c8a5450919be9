"""Structure-of-arrays state indexed by vehicle slot, serialisable to bytes and back exactly."""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Self

import numpy as np


class SlotState:
    """Base for dataclasses whose fields are equal-length arrays (one row per vehicle slot)."""

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        with np.load(io.BytesIO(raw)) as z:
            kw: dict[str, Any] = {f.name: z[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**kw)


def check_slots(slot: np.ndarray, n_slots: int) -> np.ndarray:
    s = np.ascontiguousarray(slot, dtype=np.int64)
    if len(s) and (s.min() < 0 or s.max() >= n_slots):
        raise ValueError(f"slot out of range 0..{n_slots - 1}: {int(s.min())}..{int(s.max())}")
    return s


def as_f64(x: np.ndarray, n: int, name: str) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return a
