"""Structure-of-arrays state indexed by vehicle slot, serialisable to bytes and back exactly."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from typing import Any, Final, Self

import numpy as np

# The checkpoint layout of ``SlotState``: magic, header length (4 bytes, little-endian), a JSON
# header ``[[field, dtype, shape], ...]``, then each array's bytes in that order. ``np.savez``
# (the first layout, still read) wrote a zip with a .npy header per array: ~1 ms per state of
# zip and header bookkeeping, six states per partition checkpoint each second (BENCHMARKS.md,
# issue 22); this is a join of the arrays' bytes.
_MAGIC: Final = b"CPSOA\x01"
_ZIP_MAGIC: Final = b"PK\x03\x04"  # np.savez, before
_KINDS: Final = frozenset("biuf")  # bool, integers, floats: what the states hold; never objects


class SlotState:
    """Base for dataclasses whose fields are equal-length arrays (one row per vehicle slot)."""

    def to_bytes(self) -> bytes:
        arrays = [
            (f.name, np.ascontiguousarray(getattr(self, f.name)))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        ]
        for name, a in arrays:
            if a.dtype.kind not in _KINDS:
                raise TypeError(f"{type(self).__name__}.{name}: dtype {a.dtype} is not numeric")
        head = json.dumps([[n, a.dtype.str, list(a.shape)] for n, a in arrays]).encode()
        parts = [_MAGIC, len(head).to_bytes(4, "little"), head]
        parts.extend(a.tobytes() for _, a in arrays)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        """What ``to_bytes`` wrote, or an ``np.savez`` blob of the first layout; anything else
        (truncated, another layout, a field missing, a non-numeric dtype) raises ValueError."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if raw[: len(_ZIP_MAGIC)] == _ZIP_MAGIC:
            with np.load(io.BytesIO(raw)) as z:  # allow_pickle stays False
                kw: dict[str, Any] = {name: z[name] for name in names}
            return cls(**kw)
        return cls(**_read(raw, cls.__name__, names))


def _read(raw: bytes, what: str, names: list[str]) -> dict[str, np.ndarray]:
    view = memoryview(raw)
    start = len(_MAGIC) + 4
    if len(raw) < start or bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise ValueError(f"{what}: not a slot-state blob")
    hlen = int.from_bytes(view[len(_MAGIC) : start], "little")
    if start + hlen > len(raw):
        raise ValueError(f"{what}: header truncated")
    try:
        head = json.loads(bytes(view[start : start + hlen]))
        specs = [(str(n), np.dtype(d), tuple(int(x) for x in shape)) for n, d, shape in head]
    except (ValueError, TypeError) as err:
        raise ValueError(f"{what}: bad header: {err}") from err
    pos = start + hlen
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape in specs:
        if dtype.kind not in _KINDS or any(x < 0 for x in shape):
            raise ValueError(f"{what}.{name}: dtype {dtype} shape {shape} not allowed")
        size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if pos + size > len(raw):
            raise ValueError(f"{what}.{name}: truncated")
        out[name] = np.frombuffer(view[pos : pos + size], dtype).reshape(shape).copy()
        pos += size
    if pos != len(raw):
        raise ValueError(f"{what}: {len(raw) - pos} bytes after the last array")
    missing = [n for n in names if n not in out]
    if missing or len(out) != len(names):
        raise ValueError(f"{what}: fields {missing} missing (or unknown ones present)")
    return out


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
