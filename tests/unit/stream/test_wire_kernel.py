"""The worker's compiled decode (``stream.wire_kernel``) answers exactly as ``core.wire``'s."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import WireError
from core.wire import Samples, TelemetryBatch, decode_telemetry, encode_telemetry
from stream import wire_kernel
from stream.wire_kernel import decode_telemetry_fast

NAMES = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.Private.Dbc.M.S"]


def _outcome(payload: Any) -> list[tuple[str, Any]]:
    """Both decoders' answers: the batch's fields with columns as raw bytes, or the reason."""
    out = []
    for f in (decode_telemetry, decode_telemetry_fast):
        try:
            b = f(payload)
        except WireError as err:
            out.append(("refused", err.reason))
            continue
        s = b.samples
        cols = tuple((c.dtype.str, c.tobytes()) for c in (s.sig, s.ts_us, s.value))
        out.append(("ok", (b.device_id, b.boot_id, b.seq, b.text, s.names, cols)))
    return out


def _same(payload: Any) -> tuple[str, Any]:
    core, fast = _outcome(payload)
    assert fast == core
    return core


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
# small steps (1- and 2-byte deltas), then any int64 (8-byte deltas that wrap modulo 2**64)
stamps = st.one_of(st.integers(-300, 300), st.integers(-(2**63), 2**63 - 1))
rows = st.lists(st.tuples(st.integers(0, 2), stamps, floats), max_size=300)


@pytest.mark.kernel
@given(rows=rows, t0=st.integers(-(2**40), 2**40))
@settings(max_examples=300, deadline=None)
def test_every_batch_decodes_to_the_same_columns(rows: list[Any], t0: int) -> None:
    s = Samples.from_columns(
        NAMES, [r[0] for r in rows], [t0 + r[1] if abs(r[1]) < 1000 else r[1] for r in rows],
        [r[2] for r in rows],
    )  # fmt: skip
    batch = TelemetryBatch("car-1", "b00t", 7, s, (("Vehicle.VehicleIdentification.VIN", 5, "W"),))
    assert _same(encode_telemetry(batch))[0] == "ok"


@pytest.mark.kernel
def test_each_time_delta_width_and_the_bench_shape() -> None:
    rng = np.random.default_rng(3)
    for step in (1, 200, 70_000, 10**12):  # 1, 2, 4 and 8-byte deltas
        n = 2000
        ts = 1_600_000_000_000_000 + np.repeat(np.arange(n // 4) * step, 4)
        s = Samples.from_columns(
            [f"Vehicle.Bench.S{i}" for i in range(16)], np.arange(n) % 16, ts,
            np.round(rng.normal(50, 20, n), 2),
        )  # fmt: skip
        payload = encode_telemetry(TelemetryBatch("bench-v0", "b", 1, s))
        assert _same(payload)[0] == "ok"
        got = decode_telemetry_fast(payload).samples
        assert sorted(got.ts_us.tolist()) == sorted(ts.tolist())


def _forge(body: dict[str, Any]) -> bytes:
    return b"CPW\x01\x01" + zstandard.ZstdCompressor().compress(
        msgpack.packb(body, use_bin_type=True)
    )


GOOD = {"d": "car-1", "b": "", "q": 0, "n": NAMES[:2], "c": [1, 2], "t0": 5, "tk": 2}


@pytest.mark.parametrize(
    "payload",
    [
        b"", b"CPW", b"CPW\x02\x01", b"CPW\x01\x02xx", b"XYZ\x01\x01", b"{not json", b'{"schema": 1}',
        _forge({**GOOD, "t": b"\x01" * 6, "v": b"\x00" * 24}),
        _forge({**GOOD, "t": b"\x01" * 5, "v": b"\x00" * 24}),  # a column one byte short
        _forge({**GOOD, "t": b"\x01" * 6, "v": b"\x00" * 25}),
        _forge({**GOOD, "c": [1, -2], "t": b"", "v": b""}),
        _forge({**GOOD, "c": [2**40, 1], "t": b"", "v": b""}),
        _forge({**GOOD, "tk": 3, "t": b"\x01" * 9, "v": b"\x00" * 24}),
        _forge({**GOOD, "t0": 2**63, "t": b"\x01" * 6, "v": b"\x00" * 24}),
        _forge({**GOOD, "c": [0, 0], "t": b"", "v": b""}),
        _forge({**GOOD, "tk": 8, "t": b"\xff" * 24, "v": b"\xff" * 24}),
        bytearray(b"CPW\x01\x01"), memoryview(b"CPW"), "CPW", None,
    ],
)  # fmt: skip
def test_hostile_payloads_get_the_same_answer(payload: Any) -> None:
    _same(payload)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_garbage_after_a_good_header_gets_the_same_answer(tail: bytes) -> None:
    _same(b"CPW\x01\x01" + tail)


@pytest.mark.kernel
def test_the_decode_is_compiled() -> None:
    if not wire_kernel.COMPILED:  # NUMBA_DISABLE_JIT=1: core.wire's decode is used instead
        pytest.skip("numba's JIT is disabled in this run")
    decode_telemetry_fast(encode_telemetry(TelemetryBatch("c", "b", 0, Samples.empty())))
    assert wire_kernel._unpack.signatures
