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
Every malformed or unknown message raises :class:`~core.errors.WireError` with a reason code:
each field is type- and range-checked (``core.checks``: int64 times and sequence numbers, bounded
strings, scalar ids) and the sizes are capped before anything is allocated for them (decompressed
bytes, samples, text samples, msgpack arrays and strings), so hostile input never raises anything
else and never costs more than a bounded amount of memory.
"""

from __future__ import annotations

import contextlib
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

from core.checks import (
    MAX_ID_LEN,
    MAX_TEXT_LEN,
    MAX_TREE_ITEMS,
    bounded_str,
    check_tree,
    finite,
    int64,
    is_clean_text,
    is_int64,
)
from core.errors import WireError
from core.topics import check_device_id

SCHEMA_VERSION: Final = 1
TELEMETRY_MAGIC: Final = b"CPW"
EVENT_MAGIC: Final = b"CPE"
CODEC_ZSTD: Final = 1
MAX_SAMPLES: Final = 200_000  # per batch; the edge sends at most a few thousand
MAX_TEXT_SAMPLES: Final = 10_000  # string-valued samples per batch
MAX_NAMES: Final = 65_535
# 200k samples are 3.2 MB before compression: a small message that inflates past this is a bomb.
MAX_DECOMPRESSED: Final = 8 * 1024 * 1024
MAX_JSON_BYTES: Final = 8 * 1024 * 1024  # the JSON debugging form
MAX_EVENT_BYTES: Final = 64 * 1024
_READ_CHUNK: Final = 256 * 1024
ZSTD_LEVEL: Final = 6

# A VSS path: dot-separated identifiers, first one capitalised (``Vehicle.Speed``).
NAME_RE: Final = re.compile(r"^[A-Z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+){1,15}\Z")
# An event kind: ``crash``, ``dtc``, ``gate.plate``...
KIND_RE: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

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


# Signal names already found to be VSS paths. A device sends the same few names in every batch:
# the regex runs once per name, not once per name and message (issue 22). Only names that passed
# the full check go in; bounded (cleared when full), so a device sending ever new names costs
# the regex again and some memory, never a wrong answer.
MAX_GOOD_NAMES: Final = 16_384
_GOOD_NAMES: set[str] = set()


def _require(cond: bool, reason: str, detail: str) -> None:
    if not cond:
        raise WireError(reason, detail)


def _check_names(names: Any) -> tuple[str, ...]:
    _require(type(names) is list, "bad_names", "names must be a list")
    _require(len(names) <= MAX_NAMES, "too_many_names", str(len(names)))
    try:  # the usual case: every name was seen before (one set lookup each, in C)
        known = all(map(_GOOD_NAMES.__contains__, names))
    except TypeError:  # an unhashable name (a list, a map): the loop below refuses it
        known = False
    if not known:
        for name in names:
            _require(
                type(name) is str and len(name) <= 256 and bool(NAME_RE.match(name)),
                "bad_signal_name",
                f"{str(name)[:80]!r} is not a VSS path",
            )
        if len(_GOOD_NAMES) + len(names) > MAX_GOOD_NAMES:
            _GOOD_NAMES.clear()
        _GOOD_NAMES.update(names[:MAX_GOOD_NAMES])
    return tuple(names)


def _inflate(data: bytes) -> bytes:
    """Decompress at most ``MAX_DECOMPRESSED`` bytes, refusing a frame that claims or makes more."""
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as err:
        raise WireError("bad_compression", str(err)) from err
    if declared > MAX_DECOMPRESSED:  # refused before a byte is allocated for it
        raise WireError("bad_compression", f"frame declares {declared} bytes > {MAX_DECOMPRESSED}")
    # the usual case: one call into a buffer of the declared size (issue 22); not for a declared
    # 0, for which zstandard answers b"" without reading the frame
    if declared > 0:
        with contextlib.suppress(zstandard.ZstdError):
            # succeeds only for exactly one whole frame that makes exactly what it declares,
            # where the reader below gives the same bytes; anything else is the reader's to judge
            return _dctx().decompress(data, read_across_frames=False, allow_extra_data=False)
    return _inflate_chunks(data)


def _inflate_chunks(data: bytes) -> bytes:
    """The bounded reader: a frame that declares no size, lies about it, or is not alone."""
    chunks: list[bytes] = []
    total = 0
    try:
        # A frame header may lie or say nothing: read in chunks and stop past the cap.
        with _dctx().stream_reader(data, read_across_frames=False) as reader:
            while chunk := reader.read(_READ_CHUNK):
                total += len(chunk)
                if total > MAX_DECOMPRESSED:
                    raise WireError("bad_compression", f"inflates past {MAX_DECOMPRESSED} bytes")
                chunks.append(chunk)
    except zstandard.ZstdError as err:
        raise WireError("bad_compression", str(err)) from err
    return b"".join(chunks)


def _unpack(raw: bytes, max_array: int, max_map: int, max_str: int, max_bin: int) -> Any:
    """msgpack with every length capped before it is allocated."""
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bin,
            max_str_len=max_str,
            max_array_len=max_array,
            max_map_len=max_map,
            max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as err:
        raise WireError("bad_msgpack", str(err)[:200]) from err


def _check_counts(counts_l: Any, n_names: int) -> int:
    """Per-name sample counts checked in Python (no NumPy array of a hostile int): their sum."""
    _require(
        type(counts_l) is list and len(counts_l) == n_names,
        "bad_counts",
        "counts must be one non-negative integer per name",
    )
    if not counts_l:
        return 0
    # the usual case in C loops (issue 22); anything else gets its reason from _count_each
    if set(map(type, counts_l)) == {int} and min(counts_l) >= 0:
        total = sum(counts_l)
        if total <= MAX_SAMPLES:
            return total
    return _count_each(counts_l)


def _count_each(counts_l: list[Any]) -> int:
    """The counts one by one: the first one out of range, or the sum past the cap, says why."""
    total = 0
    for c in counts_l:
        _require(type(c) is int and 0 <= c <= MAX_SAMPLES, "bad_counts", "count out of range")
        total += c
        _require(total <= MAX_SAMPLES, "too_many_samples", f"more than {MAX_SAMPLES}")
    return total


def _check_text(text_l: Any) -> list[tuple[str, int, str]]:
    _require(type(text_l) is list, "bad_text", "text must be a list")
    _require(len(text_l) <= MAX_TEXT_SAMPLES, "too_many_samples", f"{len(text_l)} text samples")
    text: list[tuple[str, int, str]] = []
    for item in text_l:
        _require(
            type(item) is list
            and len(item) == 3
            and type(item[0]) is str
            and bool(NAME_RE.match(item[0]))
            and is_int64(item[1])
            and type(item[2]) is str
            and len(item[2]) <= MAX_TEXT_LEN
            and is_clean_text(item[2]),
            "bad_text",
            "a text sample must be [VSS path, int64 ts_us, string]",
        )
        text.append((item[0], item[1], item[2]))
    return text


@dataclass(frozen=True, slots=True)
class _Body:
    """A binary telemetry body with every field checked, its sample columns still packed."""

    device_id: str
    boot_id: str
    seq: int
    names: tuple[str, ...]
    counts: list[int]
    n: int
    t0: int
    width: int
    tbuf: bytes
    vbuf: bytes
    text: list[tuple[str, int, str]]


def _check_binary(payload: bytes) -> _Body:
    """Header, bounded inflate, msgpack and every field but the samples' values: what the ingest
    bridge checks before it forwards the bytes (no per-sample work but the text samples)."""
    _require(len(payload) >= 5, "truncated", "shorter than the header")
    version, codec = payload[3], payload[4]
    _require(version == SCHEMA_VERSION, "unknown_schema", f"schema version {version}")
    _require(codec == CODEC_ZSTD, "unknown_codec", f"codec {codec}")
    raw = _inflate(payload[5:])
    body = _unpack(raw, MAX_NAMES, 32, MAX_TEXT_LEN, MAX_DECOMPRESSED)
    _require(isinstance(body, dict), "bad_body", "body is not a map")
    try:
        device_id, boot_id, seq = body["d"], body["b"], body["q"]
        names = _check_names(body["n"])
        counts_l, t0, width, tbuf, vbuf = body["c"], body["t0"], body["tk"], body["t"], body["v"]
        text_l = body.get("s", [])
    except KeyError as err:
        raise WireError("missing_field", str(err)) from err
    check_device_id(device_id)
    bounded_str(boot_id, "bad_boot_id", "boot id", max_len=MAX_ID_LEN)
    int64(seq, "bad_seq", "seq", minimum=0)
    int64(t0, "bad_t0", "t0")
    _require(type(width) is int and width in _INT_CODES, "bad_ts_width", "width must be 1/2/4/8")
    n = _check_counts(counts_l, len(names))
    _require(type(tbuf) is bytes and type(vbuf) is bytes, "bad_columns", "not bytes")
    for buf, size in ((tbuf, n * width), (vbuf, n * 8)):
        if len(buf) != size:
            raise WireError("bad_column_size", f"expected {size} bytes, got {len(buf)}")
    text = _check_text(text_l)
    return _Body(device_id, boot_id, seq, names, counts_l, n, t0, width, tbuf, vbuf, text)


def telemetry_body(payload: bytes) -> _Body:
    """A binary telemetry message's fields, every one checked as ``decode_telemetry`` checks them,
    with the sample columns still packed: for a decoder of its own that unpacks them (the stream
    worker's compiled pass, ``stream.wire_kernel``). Raises ``WireError``."""
    _require(payload.startswith(TELEMETRY_MAGIC), "unknown_format", f"starts with {payload[:4]!r}")
    return _check_binary(payload)


def _decode_binary(payload: bytes) -> TelemetryBatch:
    b = _check_binary(payload)
    n, names = b.n, b.names
    counts = np.asarray(b.counts, dtype=np.int64)
    dts = _unshuffle(b.tbuf, _INT_CODES[b.width], n).astype(np.int64)
    xored = _unshuffle(b.vbuf, np.uint64, n)
    sig = np.repeat(np.arange(len(names), dtype=np.int32), counts)
    first = _group_starts(counts)
    # Undo the per-name running delta / XOR with segmented cumulative operations. The sums wrap
    # modulo 2**64 exactly as the encoder's differences did: every result is an int64.
    ts = np.cumsum(dts)
    group_base = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else dts
    if n:
        before = np.concatenate(([0], ts[:-1]))
        ts = ts - before[group_base] + np.int64(b.t0)
    bits = np.bitwise_xor.accumulate(xored) if n else xored
    if n:
        prefix = np.concatenate(([np.uint64(0)], bits[:-1]))
        bits = bits ^ prefix[group_base]
    return TelemetryBatch(
        b.device_id, b.boot_id, b.seq, Samples(names, sig, ts, bits.view(np.float64)),
        tuple(b.text),
    )  # fmt: skip


def _decode_json(payload: bytes) -> TelemetryBatch:
    _require(len(payload) <= MAX_JSON_BYTES, "too_large", f"{len(payload)} bytes of JSON")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise WireError("bad_json", str(err)[:200]) from err
    _require(type(doc) is dict, "bad_json", "top level must be an object")
    _require(doc.get("schema") == SCHEMA_VERSION, "unknown_schema", "schema must be 1")
    device_id = check_device_id(doc.get("device_id"))  # type: ignore[arg-type]
    boot_id, seq, rows = doc.get("boot_id"), doc.get("seq"), doc.get("samples")
    bounded_str(boot_id, "bad_boot_id", "boot_id", max_len=MAX_ID_LEN)
    int64(seq, "bad_seq", "seq", minimum=0)
    _require(type(rows) is list and len(rows) <= MAX_SAMPLES, "bad_samples", "list expected")
    records: list[tuple[str, int, float]] = []
    text: list[tuple[str, int, str]] = []
    for i, row in enumerate(rows):
        _require(type(row) is dict, "bad_sample", f"sample {i} is not an object")
        name, ts, value = row.get("name"), row.get("ts_us"), row.get("value")
        _require(
            type(name) is str and len(name) <= 256 and bool(NAME_RE.match(name)),
            "bad_signal_name",
            f"sample {i}",
        )
        int64(ts, "bad_timestamp", f"sample {i}: ts_us")
        if type(value) is str:
            _require(len(text) < MAX_TEXT_SAMPLES, "too_many_samples", "text samples")
            bounded_str(value, "bad_value", f"sample {i}: value")
            text.append((name, ts, value))  # type: ignore[arg-type]
            continue
        records.append((name, ts, finite(value, "bad_value", f"sample {i}: value")))  # type: ignore[arg-type]
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


def telemetry_device(payload: bytes) -> str:
    """Check a telemetry message but leave its samples packed; return the device id it names.

    This is the ingest bridge's check: the header, the bounded inflate, the msgpack body and
    every field (ids, sequence number, counts, column sizes, text samples) are checked exactly as
    ``decode_telemetry`` checks them, with the same ``WireError`` reasons, but the timestamp and
    value columns are not rebuilt: the stream worker decodes them, once. The JSON debugging form
    is decoded in full.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError("bad_payload", f"expected bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if payload.startswith(TELEMETRY_MAGIC):
        return _check_binary(payload).device_id
    return decode_telemetry(payload).device_id


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
    _require(len(payload) <= MAX_EVENT_BYTES, "too_large", f"{len(payload)} bytes")
    _require(payload[3] == SCHEMA_VERSION, "unknown_schema", f"schema version {payload[3]}")
    body = _unpack(payload[4:], MAX_TREE_ITEMS, MAX_TREE_ITEMS, MAX_TEXT_LEN, MAX_TEXT_LEN)
    _require(type(body) is dict, "bad_body", "body is not a map")
    try:
        device, boot, seq, kind = body["d"], body["b"], body["q"], body["k"]
        ts_us, priority, data = body["t"], body["p"], body.get("x")
    except KeyError as err:
        raise WireError("missing_field", str(err)) from err
    check_device_id(device)
    bounded_str(boot, "bad_boot_id", "boot id", max_len=MAX_ID_LEN)
    int64(seq, "bad_seq", "seq", minimum=0)
    _require(type(kind) is str and bool(KIND_RE.fullmatch(kind)), "bad_kind", "bad event kind")
    int64(ts_us, "bad_timestamp", "ts_us")
    _require(type(priority) is int and 0 <= priority <= 255, "bad_priority", "priority 0-255")
    data = {} if data is None else data
    _require(type(data) is dict, "bad_data", "data must be a map")
    check_tree(data, "bad_data", "data")
    return Event(device, boot, seq, kind, ts_us, priority, data)


MAX_STATUS_BYTES: Final = 4096
STATUS_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def decode_status(payload: bytes) -> dict[str, Any]:
    """Check a device's ``status`` message (``{"state", "boot_id", "ts_us"}`` JSON, retained)."""
    _require(
        isinstance(payload, bytes) and 0 < len(payload) <= MAX_STATUS_BYTES,
        "bad_status",
        "a status is 1 to 4096 bytes of JSON",
    )
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise WireError("bad_status", str(err)[:200]) from err
    _require(type(doc) is dict, "bad_status", "a status is a JSON object")
    state = doc.get("state")
    _require(type(state) is str and bool(STATUS_RE.fullmatch(state)), "bad_status", "bad state")
    bounded_str(doc.get("boot_id", ""), "bad_boot_id", "boot_id", max_len=MAX_ID_LEN)
    int64(doc.get("ts_us", 0), "bad_timestamp", "ts_us")
    return check_tree(doc, "bad_status", "status")  # type: ignore[no-any-return]


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
