"""Per-entity detector state: structure-of-arrays indexed by slot, serialised to bytes exactly."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from core.errors import DecodeError

_MAGIC = b"CPST"
_VERSION = 1
_HEAD = struct.Struct("<4sHI")  # magic, version, header length


class SlotState:
    """Named arrays whose first axis is the slot (vehicle x signal, or vehicle model).

    Detectors keep every per-entity number here, so one kernel call updates many slots and the
    whole state goes to a Faust table as one ``bytes`` value. ``params`` holds the detector's
    constructor arguments (JSON-able) so a restore can check it is the same detector.
    """

    def __init__(
        self,
        kind: str,
        params: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        fill: Mapping[str, float] | None = None,
    ) -> None:
        self.kind = kind
        self.params = dict(params)
        self.arrays: dict[str, np.ndarray] = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        # Value a new slot starts with, per array (0 when not given).
        self.fill: dict[str, float] = {k: 0.0 for k in self.arrays}
        if fill:
            self.fill.update(fill)
        sizes = {a.shape[0] for a in self.arrays.values()}
        if len(sizes) > 1:
            raise ValueError(f"{kind}: arrays disagree on the number of slots: {sorted(sizes)}")

    @property
    def n_slots(self) -> int:
        return next(iter(self.arrays.values())).shape[0] if self.arrays else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def bytes_per_slot(self) -> int:
        """Bytes of state one slot costs (what a fleet of N entities multiplies)."""
        return sum(a[0].nbytes if a.shape[0] else a.itemsize for a in self.arrays.values())

    def ensure(self, n_slots: int) -> None:
        """Grow every array to ``n_slots`` slots; new slots start from their fill value.

        Growth is exact (the state of a fleet is the same whatever order its slots appeared in);
        give detectors ``n_slots`` up front to avoid repeated copies.
        """
        have = self.n_slots
        if n_slots <= have:
            return
        new = n_slots
        for name, a in self.arrays.items():
            grown = np.full((new, *a.shape[1:]), self.fill[name], dtype=a.dtype)
            grown[:have] = a
            self.arrays[name] = grown

    def to_bytes(self) -> bytes:
        header = {
            "kind": self.kind,
            "params": self.params,
            "fill": self.fill,
            "arrays": [
                {"name": k, "dtype": a.dtype.str, "shape": list(a.shape)}
                for k, a in self.arrays.items()
            ],
        }
        head = json.dumps(header, sort_keys=True, allow_nan=True).encode()
        parts = [_HEAD.pack(_MAGIC, _VERSION, len(head)), head]
        parts.extend(a.tobytes() for a in self.arrays.values())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, kind: str | None = None) -> SlotState:
        """Restore exactly what ``to_bytes`` wrote; a wrong or truncated blob raises DecodeError."""
        if len(data) < _HEAD.size:
            raise DecodeError(f"detector state: {len(data)} bytes is shorter than the header")
        magic, version, hlen = _HEAD.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise DecodeError(f"detector state: bad magic/version {magic!r}/{version}")
        try:
            header = json.loads(data[_HEAD.size : _HEAD.size + hlen])
        except ValueError as err:
            raise DecodeError(f"detector state: header is not JSON: {err}") from err
        if kind is not None and header["kind"] != kind:
            raise DecodeError(f"detector state is for {header['kind']!r}, not {kind!r}")
        pos = _HEAD.size + hlen
        arrays: dict[str, np.ndarray] = {}
        for spec in header["arrays"]:
            dtype = np.dtype(spec["dtype"])
            shape = tuple(spec["shape"])
            size = int(np.prod(shape)) * dtype.itemsize
            if pos + size > len(data):
                raise DecodeError(f"detector state: array {spec['name']!r} is truncated")
            arrays[spec["name"]] = (
                np.frombuffer(data, dtype, int(np.prod(shape)), pos).reshape(shape).copy()
            )
            pos += size
        if pos != len(data):
            raise DecodeError(f"detector state: {len(data) - pos} trailing bytes")
        return cls(header["kind"], header["params"], arrays, header["fill"])

    def equals(self, other: SlotState) -> bool:
        """Bit-exact equality (NaN equal to NaN), for tests and restore checks."""
        if self.kind != other.kind or self.params != other.params:
            return False
        if self.arrays.keys() != other.arrays.keys():
            return False
        return all(
            a.dtype == other.arrays[k].dtype
            and a.shape == other.arrays[k].shape
            and a.tobytes() == other.arrays[k].tobytes()
            for k, a in self.arrays.items()
        )


def as_batch(
    slots: Any, x: Any, ts: Any = None, n_features: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert a micro-batch to (int64 slots, float64 values, float64 timestamps)."""
    s = np.ascontiguousarray(slots, dtype=np.int64).reshape(-1)
    v = np.ascontiguousarray(x, dtype=np.float64)
    if n_features is None:
        v = v.reshape(-1)
    elif v.ndim == 1 and n_features == v.shape[0] and s.shape[0] == 1:
        v = v.reshape(1, -1)
    if v.shape[0] != s.shape[0]:
        raise ValueError(f"batch: {s.shape[0]} slots but {v.shape[0]} values")
    if n_features is not None and (v.ndim != 2 or v.shape[1] != n_features):
        raise ValueError(f"batch: values must have shape (n, {n_features}), got {v.shape}")
    if s.size and s.min() < 0:
        raise ValueError(f"batch: negative slot index {int(s.min())}")
    t = (
        np.zeros(s.shape[0])
        if ts is None
        else np.ascontiguousarray(ts, dtype=np.float64).reshape(-1)
    )
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"batch: {s.shape[0]} slots but {t.shape[0]} timestamps")
    return s, v, t


class SlotStateful:
    """Bytes round trip shared by every detector whose whole state is one ``SlotState``.

    A subclass sets ``kind`` and keeps its state in ``self.state``; its constructor takes its
    stored params as keyword arguments plus ``n_slots``.
    """

    kind: str
    state: SlotState

    def __init__(self, **params: Any) -> None:  # pragma: no cover - subclasses define their own
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return self.state.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        st = SlotState.from_bytes(data, cls.kind)
        det = cls(**st.params, n_slots=st.n_slots)
        det.state = st
        return det
