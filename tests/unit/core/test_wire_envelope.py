"""The envelope check's fast paths (issue 22) answer exactly as the slow checks they skip."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from core import wire
from core.errors import WireError
from core.wire import MAX_DECOMPRESSED, MAX_SAMPLES, Samples, TelemetryBatch, encode_telemetry

NAMES = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.Private.Dbc.M.S"]


def _outcome(f: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", f(*args)
    except WireError as err:
        return "refused", err.reason


def _bounded_reader(data: bytes) -> bytes:
    """``_inflate`` as it was before its one-call path: the size check, then the reader."""
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as err:
        raise WireError("bad_compression", str(err)) from err
    if declared > MAX_DECOMPRESSED:
        raise WireError("bad_compression", "declared too much")
    return wire._inflate_chunks(data)


@st.composite
def frames(draw: Any) -> bytes:
    """zstd input as a hostile sender could shape it: sized or not, followed by junk or by a
    second frame, cut short, with a byte changed (a lying content size, a broken block)."""
    content = draw(st.binary(max_size=3000) | st.builds(lambda n: b"\0" * n, st.integers(0, 5000)))
    sized = draw(st.booleans())
    data = zstandard.ZstdCompressor(write_content_size=sized).compress(content)
    tail = draw(st.sampled_from(["none", "junk", "frame"]))
    if tail == "junk":
        data += draw(st.binary(min_size=1, max_size=8))
    elif tail == "frame":
        data += zstandard.ZstdCompressor().compress(draw(st.binary(max_size=50)))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if data and draw(st.booleans()):
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    return data


@given(frames())
@settings(max_examples=400, deadline=None)
def test_inflate_answers_as_the_bounded_reader(data: bytes) -> None:
    assert _outcome(wire._inflate, data) == _outcome(_bounded_reader, data)


def test_a_lying_content_size_is_left_to_the_reader() -> None:
    frame = zstandard.ZstdCompressor().compress(b"a" * 100)
    assert zstandard.frame_content_size(frame) == 100
    # single-segment frame: the content size is the byte after the frame header descriptor
    for said in (50, 101, 0):
        lying = frame[:5] + bytes([said]) + frame[6:]
        assert zstandard.frame_content_size(lying) == said
        assert _outcome(wire._inflate, lying) == _outcome(_bounded_reader, lying)


def test_a_whole_sized_frame_is_inflated_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is really taken (else the comparison above proves nothing)."""

    def no_reader(data: bytes) -> bytes:
        raise AssertionError("the reader was used")

    monkeypatch.setattr(wire, "_inflate_chunks", no_reader)
    raw = b"x" * 70_000 + bytes(range(256)) * 40
    assert wire._inflate(zstandard.ZstdCompressor().compress(raw)) == raw
    with pytest.raises(AssertionError, match="reader"):  # no declared size: the reader
        wire._inflate(zstandard.ZstdCompressor(write_content_size=False).compress(raw))


def _body(names: list[Any], counts: list[Any] | None = None) -> bytes:
    base = {"d": "car-1", "b": "b", "q": 1, "n": names, "c": counts or [0] * len(names)}
    base.update({"t0": 0, "tk": 8, "t": b"", "v": b"", "s": []})
    packed = msgpack.packb(base, use_bin_type=True)
    return b"CPW\x01\x01" + zstandard.ZstdCompressor().compress(packed)


@pytest.mark.parametrize(
    "names",
    [
        [*NAMES, "bad name"],
        [NAMES[0], [NAMES[0]]],  # unhashable: no set lookup answers it
        [NAMES[0], {"n": 1}],
        [NAMES[0], NAMES[1].encode()],  # bytes equal to no str
        [NAMES[0], "Vehicle." + "A" * 300],  # a VSS path, but longer than 256
    ],
)
def test_known_names_never_let_a_bad_one_through(names: list[Any]) -> None:
    good = encode_telemetry(
        TelemetryBatch("car-1", "b", 1, Samples.from_records([(n, 1, 1.0) for n in NAMES]))
    )
    assert wire.telemetry_device(good) == "car-1"  # the names are known now
    assert set(NAMES) <= wire._GOOD_NAMES
    for check in (wire.telemetry_device, wire.decode_telemetry):
        with pytest.raises(WireError) as info:
            check(_body(names))
        assert info.value.reason == "bad_signal_name"
    assert all(type(n) is str and wire.NAME_RE.match(n) for n in wire._GOOD_NAMES)


def test_the_name_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_GOOD_NAMES", 50)
    monkeypatch.setattr(wire, "_GOOD_NAMES", set())
    for k in range(20):
        names = [f"Vehicle.New{k}.S{i}" for i in range(30)]
        assert wire._check_names(names) == tuple(names)
        assert len(wire._GOOD_NAMES) <= 50
    assert wire._check_names([f"Vehicle.Many.S{i}" for i in range(80)])  # more than it holds
    assert len(wire._GOOD_NAMES) <= 50


counts_item = st.one_of(
    st.integers(0, MAX_SAMPLES),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, MAX_SAMPLES, MAX_SAMPLES + 1, -1, 2**63, 2**64 - 1]),
    st.booleans(),
    st.floats(),
    st.none(),
    st.text(max_size=3),
)


@given(st.lists(counts_item, max_size=40))
@settings(max_examples=400, deadline=None)
def test_counts_answer_as_one_by_one(counts: list[Any]) -> None:
    want = _outcome(wire._count_each, counts)
    assert _outcome(wire._check_counts, counts, len(counts)) == want


def test_plain_counts_take_no_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loop(counts: list[Any]) -> int:
        raise AssertionError("counted one by one")

    monkeypatch.setattr(wire, "_count_each", no_loop)
    assert wire._check_counts([500, 0, 1500], 3) == 2000
    assert wire._check_counts([], 0) == 0
    with pytest.raises(AssertionError):
        wire._check_counts([500, -1], 2)
