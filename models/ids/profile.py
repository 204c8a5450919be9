"""The CAN intrusion profile file: what one vehicle model's clean bus looks like, learned and shipped.

``carpulse ids learn`` writes it, the edge agent reads it (``[edge.intrusion] profile``). JSON, so a
reviewer can diff two versions; version 1 looks like::

    {"format": "carpulse.can-ids-profile", "version": 1, "vehicle_model": "gt350",
     "learned_at": "2026-12-04T22:50:00Z", "frames": 40929,
     "logs": [{"name": "evox.log", "frames": 40929, "sha256": "..."}],
     "params": {"min_flips": 32, "rate_gap": 0.75, "gap_factor": 0.5, "rate_margin": 1.1},
     "ids": [{"id": "0x080", "extended": false, "dlc_mask": 256, "frozen_mask": "00ff...",
              "frozen_value": "005a...", "gap_min_us": 4900, "tau_us": 80000.0,
              "rate_max": 9.1, "period_us": 10000.0, "n_train": 4093}, ...]}

``rate_max: null`` means no rate rule for that id (too few frames to learn one), ``gap_min_us: -1``
no gap rule. The file is an input from outside the agent: :func:`read_profile` refuses anything
that is not exactly this shape (size, types, ranges, sorted unique ids) with a ``ProfileError``
naming the file and the field, and never hands the kernels an array they could misread.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from core.errors import ProfileError
from core.frames import Frames
from models.ids.detector import EXT_BIT, CanIds, CanIdsProfile

FORMAT: Final = "carpulse.can-ids-profile"
VERSION: Final = 1
MAX_BYTES: Final = 8 * 1024 * 1024  # a real car has a few hundred ids: ~100 kB
MAX_IDS: Final = 20_000
MAX_US: Final = 3_600_000_000  # an hour, in us: longer gaps or time constants are not a bus's
Hex8 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class IdEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, StringConstraints(pattern=r"^0x[0-9a-f]{3,8}$")]
    extended: bool
    dlc_mask: int = Field(ge=0, lt=2**64)
    frozen_mask: Hex8
    frozen_value: Hex8
    gap_min_us: int = Field(ge=-1, le=MAX_US)
    tau_us: float = Field(gt=0, le=MAX_US, allow_inf_nan=False)
    rate_max: float | None = Field(gt=0, le=1e9, allow_inf_nan=False)
    period_us: float = Field(ge=0, le=MAX_US, allow_inf_nan=False)
    n_train: int = Field(ge=0, lt=2**62)


class LogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=256)
    frames: int = Field(ge=0)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    min_flips: int = Field(32, ge=1, le=64, description="Frozen bits flipped to flag a payload.")
    rate_gap: float = Field(0.75, gt=0, le=10, allow_inf_nan=False)
    gap_factor: float = Field(0.5, gt=0, le=10, allow_inf_nan=False)
    rate_margin: float = Field(1.1, ge=1, le=100, allow_inf_nan=False)


class ProfileDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["carpulse.can-ids-profile"]
    version: Literal[1]
    vehicle_model: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")]
    learned_at: str = Field(max_length=40)
    frames: int = Field(ge=0)
    logs: list[LogEntry] = Field(max_length=10_000)
    params: Params
    ids: list[IdEntry] = Field(min_length=1, max_length=MAX_IDS)


@dataclass
class LoadedProfile:
    """A checked profile: the detector's arrays plus what the file says about itself."""

    profile: CanIdsProfile
    vehicle_model: str
    params: Params
    meta: dict[str, Any] = field(default_factory=dict)

    def detector(self) -> CanIds:
        return CanIds(self.profile, min_flips=self.params.min_flips, rate_gap=self.params.rate_gap)


def _hex(row: np.ndarray) -> str:
    return bytes(row.astype(np.uint8).tolist()).hex()


def to_doc(
    prof: CanIdsProfile, vehicle_model: str, params: Params, logs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The JSON document of a fitted profile (``ids`` sorted by key, as the detector needs)."""
    ids = []
    for j, key in enumerate(prof.keys.tolist()):
        ext = bool(key & int(EXT_BIT))
        cid = key & 0x1FFFFFFF
        rate = float(prof.rate_max[j])
        ids.append(
            {
                "id": f"0x{cid:08x}" if ext else f"0x{cid:03x}",
                "extended": ext,
                "dlc_mask": int(prof.dlc_mask[j]),
                "frozen_mask": _hex(prof.frozen_mask[j]),
                "frozen_value": _hex(prof.frozen_val[j]),
                "gap_min_us": int(prof.gap_min[j]),
                "tau_us": float(prof.tau[j]),
                "rate_max": rate if math.isfinite(rate) else None,
                "period_us": float(prof.period[j]),
                "n_train": int(prof.n_train[j]),
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "vehicle_model": vehicle_model,
        "learned_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "frames": int(prof.n_train.sum()),
        "logs": logs,
        "params": params.model_dump(),
        "ids": ids,
    }


def from_doc(doc: ProfileDoc) -> CanIdsProfile:
    """The detector's arrays from a validated document; ids must be sorted and unique."""
    k = len(doc.ids)
    keys = np.empty(k, np.uint64)
    for j, e in enumerate(doc.ids):
        cid = int(e.id, 16)
        if cid > (0x1FFFFFFF if e.extended else 0x7FF):
            raise ValueError(
                f"ids[{j}]: {e.id} does not fit a {'29' if e.extended else '11'}-bit id"
            )
        keys[j] = cid | (int(EXT_BIT) if e.extended else 0)
    if k > 1 and not np.all(keys[1:] > keys[:-1]):
        raise ValueError("ids must be sorted (standard ids first) and unique")

    def hexes(name: str) -> np.ndarray:
        return np.frombuffer(
            bytes.fromhex("".join(getattr(e, name) for e in doc.ids)), np.uint8
        ).reshape(k, 8)

    return CanIdsProfile(
        keys=keys,
        dlc_mask=np.array([e.dlc_mask for e in doc.ids], np.uint64),
        frozen_mask=hexes("frozen_mask").copy(),
        frozen_val=hexes("frozen_value").copy(),
        gap_min=np.array([e.gap_min_us for e in doc.ids], np.int64),
        tau=np.array([e.tau_us for e in doc.ids], np.float64),
        rate_max=np.array([np.inf if e.rate_max is None else e.rate_max for e in doc.ids]),
        period=np.array([e.period_us for e in doc.ids], np.float64),
        n_train=np.array([e.n_train for e in doc.ids], np.int64),
    )


def parse_profile(raw: bytes, where: str) -> LoadedProfile:
    """Check and load a profile document; ``ProfileError`` names ``where`` and the bad field."""
    if len(raw) > MAX_BYTES:
        raise ProfileError(f"{where}: {len(raw)} bytes, more than a profile's {MAX_BYTES}")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ProfileError(f"{where}: not a JSON profile ({err})") from err
    if not isinstance(obj, dict):
        raise ProfileError(f"{where}: not a JSON object")
    if obj.get("format") != FORMAT:
        raise ProfileError(f"{where}: format must be {FORMAT!r} (carpulse ids learn writes it)")
    if obj.get("version") != VERSION:
        raise ProfileError(
            f"{where}: profile version {obj.get('version')!r}; this agent reads version {VERSION}"
        )
    try:
        doc = ProfileDoc.model_validate(obj)
        prof = from_doc(doc)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ProfileError(f"{where}: {loc}: {first['msg']}{more}") from err
    except ValueError as err:
        raise ProfileError(f"{where}: {err}") from err
    meta = {"learned_at": doc.learned_at, "frames": doc.frames, "logs": len(doc.logs)}
    return LoadedProfile(prof, doc.vehicle_model, doc.params, meta)


def read_profile(path: Path | str) -> LoadedProfile:
    """Read and check a profile file (at most ``MAX_BYTES`` are read)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise ProfileError(f"intrusion profile {p}: {err.strerror or err}") from err
    return parse_profile(raw, f"intrusion profile {p}")


def learn(
    logs: list[tuple[str, bytes, Frames]], vehicle_model: str, params: Params | None = None
) -> dict[str, Any]:
    """Fit a profile on clean logs (``(name, raw bytes, frames)``) and return its document."""
    params = params or Params()
    segs = [f for _, _, f in logs if len(f)]
    if not segs:
        raise ProfileError("no frames to learn from in the given logs")
    for name, _, f in logs:
        if len(f) > 1 and np.any(np.diff(f.ts_us) < 0):
            raise ProfileError(
                f"{name}: timestamps go backwards (an edited log cannot teach timing)"
            )
    prof = CanIdsProfile.fit(segs, gap_factor=params.gap_factor, rate_margin=params.rate_margin)
    meta = [
        {"name": Path(name).name[:256], "frames": len(f), "sha256": hashlib.sha256(raw).hexdigest()}
        for name, raw, f in logs
    ]
    doc = to_doc(prof, vehicle_model, params, meta)
    parse_profile(json.dumps(doc).encode(), "the learned profile")  # what we write, we can read
    return doc
