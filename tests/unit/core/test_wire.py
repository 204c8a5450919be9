"""The wire contract: lossless round trips, clear rejections, no crash on garbage."""

from __future__ import annotations

import contextlib
import json

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import WireError
from core.wire import (
    Event,
    Samples,
    TelemetryBatch,
    decode_event,
    decode_telemetry,
    encode_event,
    encode_telemetry,
    split_by_time,
    telemetry_to_json,
)

NAMES = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.Private.Dbc.M.S"]


def _per_name(s: Samples) -> dict[str, list[tuple[int, int]]]:
    """Samples per name in order, values as raw bits (so NaN and -0.0 compare exactly)."""
    out: dict[str, list[tuple[int, int]]] = {}
    bits = s.value.view(np.uint64)
    for i, (sig, ts) in enumerate(zip(s.sig.tolist(), s.ts_us.tolist(), strict=True)):
        out.setdefault(s.names[sig], []).append((ts, int(bits[i])))
    return out


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
rows = st.lists(st.tuples(st.integers(0, 2), st.integers(-(2**62), 2**62), floats), max_size=300)


@given(rows=rows, seq=st.integers(0, 2**63 - 1))
@settings(max_examples=200, deadline=None)
def test_binary_round_trip_is_lossless(rows: list[tuple[int, int, float]], seq: int) -> None:
    s = Samples.from_columns(
        NAMES, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    )
    batch = TelemetryBatch(
        "car-1", "b00t", seq, s, (("Vehicle.VehicleIdentification.VIN", 5, "WVW"),)
    )
    out = decode_telemetry(encode_telemetry(batch))
    assert (out.device_id, out.boot_id, out.seq, out.text) == ("car-1", "b00t", seq, batch.text)
    assert _per_name(out.samples) == _per_name(s)


def test_json_debug_form_round_trips() -> None:
    s = Samples.from_records([("Vehicle.Speed", 10, 1.5), ("Vehicle.Speed", 20, 2.0)])
    batch = TelemetryBatch("car-1", "b", 3, s)
    out = decode_telemetry(telemetry_to_json(batch))
    assert out.samples.records() == s.records()


def test_unknown_schema_version_is_rejected_with_reason() -> None:
    payload = bytearray(encode_telemetry(TelemetryBatch("car-1", "b", 0, Samples.empty())))
    payload[3] = 99
    with pytest.raises(WireError) as info:
        decode_telemetry(bytes(payload))
    assert info.value.reason == "unknown_schema"


def _forge(body: dict) -> bytes:
    return b"CPW\x01\x01" + zstandard.ZstdCompressor().compress(
        msgpack.packb(body, use_bin_type=True)
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"d": "car-1"}, "missing_field"),
        (
            {"d": "../x", "b": "", "q": 0, "n": [], "c": [], "t0": 0, "tk": 8, "t": b"", "v": b""},
            "bad_device_id",
        ),
        (
            {
                "d": "car-1",
                "b": "",
                "q": -1,
                "n": [],
                "c": [],
                "t0": 0,
                "tk": 8,
                "t": b"",
                "v": b"",
            },
            "bad_seq",
        ),
        (
            {
                "d": "car-1",
                "b": "",
                "q": 0,
                "n": ["bad name"],
                "c": [0],
                "t0": 0,
                "tk": 8,
                "t": b"",
                "v": b"",
            },
            "bad_signal_name",
        ),
        (
            {
                "d": "car-1",
                "b": "",
                "q": 0,
                "n": ["Vehicle.Speed"],
                "c": [2],
                "t0": 0,
                "tk": 8,
                "t": b"",
                "v": b"",
            },
            "bad_column_size",
        ),
        (
            {
                "d": "car-1",
                "b": "",
                "q": 0,
                "n": ["Vehicle.Speed"],
                "c": [1, 2],
                "t0": 0,
                "tk": 8,
                "t": b"",
                "v": b"",
            },
            "bad_counts",
        ),
        (
            {"d": "car-1", "b": "", "q": 0, "n": [], "c": [], "t0": 0, "tk": 3, "t": b"", "v": b""},
            "bad_ts_width",
        ),
    ],
)
def test_malformed_bodies_are_rejected_with_reason(body: dict, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_telemetry(_forge(body))
    assert info.value.reason == reason


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_garbage_never_crashes_the_reader(data: bytes) -> None:
    for candidate in (data, b"CPW\x01\x01" + data, b"{" + data):
        with contextlib.suppress(WireError):
            decode_telemetry(candidate)
        with contextlib.suppress(WireError):
            decode_event(b"CPE\x01" + data)


def test_decompression_bomb_is_refused() -> None:
    bomb = b"CPW\x01\x01" + zstandard.ZstdCompressor().compress(b"\0" * (80 * 1024 * 1024))
    with pytest.raises(WireError) as info:
        decode_telemetry(bomb)
    assert info.value.reason == "bad_compression"


def test_event_round_trip() -> None:
    ev = Event("car-1", "b", 7, "crash", 123, 0, {"speed_kmh": 104.0})
    assert decode_event(encode_event(ev)) == ev


def test_json_rejects_bad_rows_with_reason() -> None:
    doc = {"schema": 1, "device_id": "car-1", "boot_id": "b", "seq": 0, "samples": [{"name": "x"}]}
    with pytest.raises(WireError) as info:
        decode_telemetry(json.dumps(doc).encode())
    assert info.value.reason == "bad_signal_name"


def test_split_by_time_caps_span_and_size() -> None:
    ts = np.arange(0, 3_000_000, 1000)  # 3 s at 1 kHz
    s = Samples.from_columns(["Vehicle.Speed"], np.zeros(len(ts)), ts, np.ones(len(ts)))
    parts = split_by_time(s, max_samples=400, max_interval_us=1_000_000)
    assert sum(len(p) for p in parts) == len(ts)
    assert all(len(p) <= 400 for p in parts)
    assert all(int(p.ts_us[-1] - p.ts_us[0]) < 1_000_000 for p in parts)
    assert len(parts) == 9  # 3 windows x ceil(1000 / 400)


def test_encoding_from_several_threads_at_once() -> None:
    # zstd contexts are per thread: a shared one crashed `carpulse demo` (replay thread + main)
    from concurrent.futures import ThreadPoolExecutor

    from core.wire import Samples, TelemetryBatch, decode_telemetry, encode_telemetry

    n = 20_000
    samples = Samples.from_columns(["Vehicle.Speed"], np.zeros(n), np.arange(n), np.arange(n) * 0.5)

    def work(k: int) -> bool:
        ok = True
        for q in range(20):
            raw = encode_telemetry(TelemetryBatch(f"car-{k}", "b", q, samples))
            ok &= decode_telemetry(raw).seq == q
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))
