"""Wire messages between edge and cloud: versioned, columnar, compressed telemetry batches and events.

A telemetry batch carries a device id, a boot id, a sequence number that survives restarts and
samples ``(VSS path, source timestamp in microseconds, float value)`` held as columns.

Binary layout, schema version 1::

    b"CPW" | version u8 | codec u8 (1 = zstd) | zstd(msgpack map)

    map = {"d": device_id, "b": boot_id, "q": seq,
           "n": [names], "c": [samples per name],       # samples grouped by name, time order kept
           "t0": first timestamp (us), "tk": dtype code, "t": timestamp deltas, byte-shuffled,
           "v": float64 values XOR-ed with the previous value of the same name, byte-shuffled,
           "s": [[name index, ts_us, text], ...]}       # rare string-valued samples

Grouping by name and delta/XOR coding turn periodic CAN signals into long runs of equal bytes,
which zstd squeezes to a few bits per sample. Everything is vectorised with NumPy: there is no
per-sample Python on either side. JSON (a payload starting with ``{``) is accepted for debugging.
Every malformed or unknown message raises :class:`~core.errors.WireError` with a reason code.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import numpy as np
import zstandard

from core.errors import WireError
from core.topics import check_device_id

SCHEMA_VERSION: Final = 1
TELEMETRY_MAGIC: Final = b"CPW"
EVENT_MAGIC: Final = b"CPE"
CODEC_ZSTD: Final = 1
MAX_SAMPLES: Final = 1_000_000  # per batch; the edge sends far fewer
MAX_NAMES: Final = 65_535
MAX_DECOMPRESSED: Final = 64 * 1024 * 1024
ZSTD_LEVEL: Final = 6

# A VSS path: dot-separated identifiers, first one capitalised (``Vehicle.Speed``).
NAME_RE: Final = re.compile(r"^[A-Z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+){1,15}$")

_INT_CODES: Final[dict[int, type[np.signedinteger[Any]]]] = {
    1: np.int8,
    2: np.int16,
    4: np.int32,
    8: np.int64,
}


@dataclass(frozen=True, slots=True)
class Samples:
    """Columnar samples: ``names[sig[i]]`` had ``value[i]`` at ``ts_us[i]``."""

    names: tuple[str, ...]
    sig: np.ndarray  # int32, index into names
    ts_us: np.ndarray  # int64, microseconds since the Unix epoch (source time)
    value: np.ndarray  # float64

    def __post_init__(self) -> None:
        n = len(self.sig)
        if len(self.ts_us) != n or len(self.value) != n:
            raise WireError("bad_columns", "sig, ts_us and value differ in length")

    def __len__(self) -> int:
        return len(self.sig)

    @classmethod
    def empty(cls) -> Samples:
        return cls((), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float64))

    @classmethod
    def from_columns(
        cls,
        names: Sequence[str],
        sig: Any,
        ts_us: Any,
        value: Any,
    ) -> Samples:
        """Build from array-likes, converting dtypes."""
        return cls(
            tuple(names),
            np.ascontiguousarray(sig, dtype=np.int32),
            np.ascontiguousarray(ts_us, dtype=np.int64),
            np.ascontiguousarray(value, dtype=np.float64),
        )

    @classmethod
    def from_records(cls, records: Sequence[tuple[str, int, float]]) -> Samples:
        """Build from ``(name, ts_us, value)`` tuples (tests and tools; not for hot paths)."""
        index: dict[str, int] = {}
        sig = [index.setdefault(name, len(index)) for name, _, _ in records]
        return cls.from_columns(list(index), sig, [r[1] for r in records], [r[2] for r in records])

    def records(self) -> list[tuple[str, int, float]]:
        """``(name, ts_us, value)`` tuples (tests and tools; not for hot paths)."""
        names = self.names
        return [
            (names[s], int(t), float(v))
            for s, t, v in zip(
                self.sig.tolist(), self.ts_us.tolist(), self.value.tolist(), strict=True
            )
        ]

    def slice(self, start: int, stop: int) -> Samples:
        """Rows ``start:stop``, sharing the name table."""
        return Samples(
            self.names, self.sig[start:stop], self.ts_us[start:stop], self.value[start:stop]
        )

    def compact(self) -> Samples:
        """Drop names no row uses and renumber ``sig`` accordingly."""
        used, inverse = np.unique(self.sig, return_inverse=True)
        if len(used) == len(self.names):
            return self
        return Samples(
            tuple(self.names[i] for i in used.tolist()),
            inverse.astype(np.int32),
            self.ts_us,
            self.value,
        )


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    """One telemetry message: a batch of samples from one device."""

    device_id: str
    boot_id: str
    seq: int
    samples: Samples
    text: tuple[tuple[str, int, str], ...] = ()
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Event:
    """A discrete device event (crash, DTC, gate arrival...)."""

    device_id: str
    boot_id: str
    seq: int
    kind: str
    ts_us: int
    priority: int = 5  # 0 = highest
    data: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION


# zstd contexts are not thread-safe (two threads encoding at once crash the interpreter, seen
# in `carpulse demo`): one pair per thread.
_zstd = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_zstd, "c", None)
    if c is None:
        c = _zstd.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c  # type: ignore[no-any-return]


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_zstd, "d", None)
    if d is None:
        d = _zstd.d = zstandard.ZstdDecompressor()
    return d  # type: ignore[no-any-return]


def _shuffle(arr: np.ndarray) -> bytes:
    """Byte-transpose (as Blosc does): byte k of every element, then byte k+1..."""
    return np.ascontiguousarray(arr.view(np.uint8).reshape(-1, arr.itemsize).T).tobytes()


def _unshuffle(buf: bytes, dtype: Any, n: int) -> np.ndarray:
    dt = np.dtype(dtype)
    if len(buf) != n * dt.itemsize:
        raise WireError("bad_column_size", f"expected {n * dt.itemsize} bytes, got {len(buf)}")
    raw = np.frombuffer(buf, np.uint8).reshape(dt.itemsize, n).T
    return np.ascontiguousarray(raw).view(dt).reshape(n)


def _group_starts(counts: np.ndarray) -> np.ndarray:
    """Boolean mask of the first row of each non-empty group."""
    n = int(counts.sum())
    first = np.zeros(n, dtype=bool)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    first[starts[counts > 0]] = True
    return first


def encode_telemetry(batch: TelemetryBatch) -> bytes:
    """Encode a batch to the binary wire format."""
    s = batch.samples
    n = len(s)
    if n > MAX_SAMPLES:
        raise WireError("too_many_samples", f"{n} > {MAX_SAMPLES}")
    if len(s.names) > MAX_NAMES:
        raise WireError("too_many_names", f"{len(s.names)} > {MAX_NAMES}")
    order = np.argsort(s.sig, kind="stable")
    sig = s.sig[order]
    ts = s.ts_us[order]
    val = s.value[order]
    counts = np.bincount(sig, minlength=len(s.names)).astype(np.int64)
    first = _group_starts(counts)
    t0 = int(ts.min()) if n else 0
    dts = np.diff(ts, prepend=np.int64(t0))
    dts[first] = ts[first] - t0  # each name's first sample is relative to t0
    width = 8
    if n:
        lo, hi = int(dts.min()), int(dts.max())
        for w in (1, 2, 4, 8):
            info = np.iinfo(_INT_CODES[w])
            if info.min <= lo and hi <= info.max:
                width = w
                break
    bits = val.view(np.uint64)
    prev = np.empty_like(bits)
    if n:
        prev[1:] = bits[:-1]
        prev[first] = 0
    xored = bits ^ prev
    body = {
        "d": check_device_id(batch.device_id),
        "b": batch.boot_id,
        "q": int(batch.seq),
        "n": list(s.names),
        "c": counts.tolist(),
        "t0": t0,
        "tk": width,
        "t": _shuffle(dts.astype(_INT_CODES[width])),
        "v": _shuffle(xored),
        "s": [[s_name, int(t), str(txt)] for s_name, t, txt in batch.text],
    }
    packed = msgpack.packb(body, use_bin_type=True)
    return TELEMETRY_MAGIC + bytes((batch.schema, CODEC_ZSTD)) + _cctx().compress(packed)


def _require(cond: bool, reason: str, detail: str) -> None:
    if not cond:
        raise WireError(reason, detail)


def _check_names(names: Any) -> tuple[str, ...]:
    _require(isinstance(names, list), "bad_names", "names must be a list")
    _require(len(names) <= MAX_NAMES, "too_many_names", str(len(names)))
    for name in names:
        _require(
            isinstance(name, str) and bool(NAME_RE.match(name)),
            "bad_signal_name",
            f"{name!r} is not a VSS path",
        )
    return tuple(names)


def _decode_binary(payload: bytes) -> TelemetryBatch:
    _require(len(payload) >= 5, "truncated", "shorter than the header")
    version, codec = payload[3], payload[4]
    _require(version == SCHEMA_VERSION, "unknown_schema", f"schema version {version}")
    _require(codec == CODEC_ZSTD, "unknown_codec", f"codec {codec}")
    try:
        # Stream with a hard cap: a frame header may claim any size (decompression bombs).
        with _dctx().stream_reader(payload[5:], read_across_frames=False) as reader:
            raw = reader.read(MAX_DECOMPRESSED + 1)
    except zstandard.ZstdError as err:
        raise WireError("bad_compression", str(err)) from err
    _require(len(raw) <= MAX_DECOMPRESSED, "bad_compression", "decompressed size over the limit")
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_DECOMPRESSED)
    except (ValueError, msgpack.UnpackException, TypeError) as err:
        raise WireError("bad_msgpack", str(err)) from err
    _require(isinstance(body, dict), "bad_body", "body is not a map")
    try:
        device_id, boot_id, seq = body["d"], body["b"], body["q"]
        names = _check_names(body["n"])
        counts_l, t0, width, tbuf, vbuf = body["c"], body["t0"], body["tk"], body["t"], body["v"]
        text_l = body.get("s", [])
    except KeyError as err:
        raise WireError("missing_field", str(err)) from err
    check_device_id(device_id)
    _require(isinstance(boot_id, str) and len(boot_id) <= 64, "bad_boot_id", repr(boot_id))
    _require(isinstance(seq, int) and seq >= 0, "bad_seq", repr(seq))
    _require(isinstance(t0, int), "bad_t0", repr(t0))
    _require(width in _INT_CODES, "bad_ts_width", repr(width))
    _require(
        isinstance(counts_l, list)
        and len(counts_l) == len(names)
        and all(isinstance(c, int) and c >= 0 for c in counts_l),
        "bad_counts",
        "counts must be one non-negative integer per name",
    )
    _require(isinstance(tbuf, bytes) and isinstance(vbuf, bytes), "bad_columns", "not bytes")
    counts = np.asarray(counts_l, dtype=np.int64)
    n = int(counts.sum())
    _require(n <= MAX_SAMPLES, "too_many_samples", str(n))
    dts = _unshuffle(tbuf, _INT_CODES[width], n).astype(np.int64)
    xored = _unshuffle(vbuf, np.uint64, n)
    sig = np.repeat(np.arange(len(names), dtype=np.int32), counts)
    first = _group_starts(counts)
    # Undo the per-name running delta / XOR with segmented cumulative operations.
    ts = np.cumsum(dts)
    group_base = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else dts
    if n:
        before = np.concatenate(([0], ts[:-1]))
        ts = ts - before[group_base] + t0
    bits = np.bitwise_xor.accumulate(xored) if n else xored
    if n:
        prefix = np.concatenate(([np.uint64(0)], bits[:-1]))
        bits = bits ^ prefix[group_base]
    text: list[tuple[str, int, str]] = []
    _require(isinstance(text_l, list), "bad_text", "text must be a list")
    for item in text_l:
        _require(
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and bool(NAME_RE.match(item[0]))
            and isinstance(item[1], int)
            and isinstance(item[2], str),
            "bad_text",
            repr(item)[:80],
        )
        text.append((item[0], item[1], item[2]))
    return TelemetryBatch(
        device_id, boot_id, seq, Samples(names, sig, ts, bits.view(np.float64)), tuple(text)
    )


def _decode_json(payload: bytes) -> TelemetryBatch:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise WireError("bad_json", str(err)) from err
    _require(isinstance(doc, dict), "bad_json", "top level must be an object")
    _require(doc.get("schema") == SCHEMA_VERSION, "unknown_schema", repr(doc.get("schema")))
    device_id = check_device_id(doc.get("device_id"))  # type: ignore[arg-type]
    boot_id, seq, rows = doc.get("boot_id"), doc.get("seq"), doc.get("samples")
    _require(isinstance(boot_id, str), "bad_boot_id", repr(boot_id))
    _require(isinstance(seq, int) and seq >= 0, "bad_seq", repr(seq))
    _require(isinstance(rows, list) and len(rows) <= MAX_SAMPLES, "bad_samples", "list expected")
    records: list[tuple[str, int, float]] = []
    text: list[tuple[str, int, str]] = []
    for i, row in enumerate(rows):
        _require(isinstance(row, dict), "bad_sample", f"sample {i} is not an object")
        name, ts, value = row.get("name"), row.get("ts_us"), row.get("value")
        _require(
            isinstance(name, str) and bool(NAME_RE.match(name)), "bad_signal_name", f"sample {i}"
        )
        _require(isinstance(ts, int), "bad_timestamp", f"sample {i}: ts_us must be an integer")
        if isinstance(value, str):
            text.append((name, ts, value))  # type: ignore[arg-type]
            continue
        _require(isinstance(value, int | float), "bad_value", f"sample {i}")
        records.append((name, ts, float(value)))  # type: ignore[arg-type]
    samples = Samples.from_records(records) if records else Samples.empty()
    return TelemetryBatch(device_id, boot_id, seq, samples, tuple(text))


def decode_telemetry(payload: bytes) -> TelemetryBatch:
    """Decode a telemetry message (binary, or JSON for debugging); raise ``WireError`` if bad."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError("bad_payload", f"expected bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if payload.startswith(TELEMETRY_MAGIC):
        return _decode_binary(payload)
    if payload[:1] == b"{":
        return _decode_json(payload)
    raise WireError("unknown_format", f"starts with {payload[:4]!r}")


def telemetry_to_json(batch: TelemetryBatch) -> bytes:
    """The JSON debugging form of a batch (accepted by :func:`decode_telemetry`)."""
    rows: list[dict[str, Any]] = [
        {"name": n, "ts_us": t, "value": v} for n, t, v in batch.samples.records()
    ]
    rows += [{"name": n, "ts_us": t, "value": v} for n, t, v in batch.text]
    doc = {
        "schema": batch.schema,
        "device_id": batch.device_id,
        "boot_id": batch.boot_id,
        "seq": batch.seq,
        "samples": rows,
    }
    return json.dumps(doc).encode()


def encode_event(event: Event) -> bytes:
    """Encode an event (msgpack, uncompressed: events are small and latency-sensitive)."""
    body = {
        "d": check_device_id(event.device_id),
        "b": event.boot_id,
        "q": int(event.seq),
        "k": event.kind,
        "t": int(event.ts_us),
        "p": int(event.priority),
        "x": event.data,
    }
    return EVENT_MAGIC + bytes((event.schema,)) + msgpack.packb(body, use_bin_type=True)


def decode_event(payload: bytes) -> Event:
    """Decode an event; raise ``WireError`` if malformed or of an unknown version."""
    _require(
        isinstance(payload, bytes) and payload.startswith(EVENT_MAGIC) and len(payload) > 4,
        "unknown_format",
        "not an event message",
    )
    _require(payload[3] == SCHEMA_VERSION, "unknown_schema", f"schema version {payload[3]}")
    try:
        body = msgpack.unpackb(payload[4:], raw=False, max_bin_len=1 << 20, max_str_len=1 << 20)
    except (ValueError, msgpack.UnpackException, TypeError) as err:
        raise WireError("bad_msgpack", str(err)) from err
    _require(isinstance(body, dict), "bad_body", "body is not a map")
    try:
        ev = Event(
            check_device_id(body["d"]),
            body["b"],
            body["q"],
            body["k"],
            body["t"],
            body["p"],
            body.get("x") or {},
        )
    except KeyError as err:
        raise WireError("missing_field", str(err)) from err
    _require(isinstance(ev.kind, str) and bool(ev.kind), "bad_kind", repr(ev.kind))
    _require(isinstance(ev.seq, int) and ev.seq >= 0, "bad_seq", repr(ev.seq))
    _require(isinstance(ev.ts_us, int), "bad_timestamp", repr(ev.ts_us))
    _require(isinstance(ev.data, dict), "bad_data", "data must be a map")
    return ev


def split_by_time(samples: Samples, max_samples: int, max_interval_us: int) -> list[Samples]:
    """Cut time-ordered samples into batches of at most ``max_samples`` spanning < ``max_interval_us``."""
    n = len(samples)
    if n == 0:
        return []
    window = (samples.ts_us - samples.ts_us[0]) // max(1, max_interval_us)
    cuts = np.flatnonzero(np.diff(window)) + 1
    bounds = [0, *cuts.tolist(), n]
    out: list[Samples] = []
    for a, b in itertools.pairwise(bounds):
        for start in range(a, b, max_samples):
            out.append(samples.slice(start, min(b, start + max_samples)))
    return out
