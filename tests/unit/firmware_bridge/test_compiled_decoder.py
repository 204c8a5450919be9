"""The compiled DBC decoder against cantools: synthetic DBCs, random messages, random layouts."""

from __future__ import annotations

import os
from typing import Any

import cantools
import cantools.database
import numpy as np
import pytest
from cantools.database.can import Message, Signal
from cantools.database.conversion import BaseConversion
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.frames import Frames
from firmware_bridge.compiled import CompiledDecoder
from firmware_bridge.dbc import CantoolsDecoder
from tests.reference.dbc_decode import reference_decode, same_record

pytestmark = pytest.mark.kernel
JIT_OFF = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"
# CARPULSE_FUZZ_EXAMPLES raises the count for a deep run (e.g. 5000) without editing the file.
HSET = settings(
    max_examples=int(os.environ.get("CARPULSE_FUZZ_EXAMPLES", 60 if JIT_OFF else 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Features the corpus lacks: IEEE floats (LE and BE), 64-bit signed/unsigned, extended
# multiplexing (a multiplexed multiplexer), a 64-byte CAN FD message, an int scale with a float
# offset, negative scales, and an extended (29-bit) id.
SYNTH_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Floats: 16 ECU
 SG_ F32LE : 0|32@1- (1,0) [0|0] "" ECU
 SG_ F64BE : 39|64@0- (1,0) [0|0] "" ECU
 SG_ F32S : 96|32@1- (0.5,-3) [0|0] "" ECU
BO_ 257 Wide: 8 ECU
 SG_ U64 : 0|64@1+ (1,0) [0|0] "" ECU
BO_ 258 WideSigned: 8 ECU
 SG_ S64BE : 7|64@0- (1,0) [0|0] "" ECU
BO_ 259 Mixed: 8 ECU
 SG_ IntScaleFloatOff : 3|12@1- (3,0.5) [0|0] "" ECU
 SG_ NegScale : 23|8@0+ (-0.25,10) [0|0] "" ECU
 SG_ Big53 : 24|40@1+ (7,-1000) [0|0] "" ECU
BO_ 260 ExtMux: 8 ECU
 SG_ Mux M : 0|4@1+ (1,0) [0|0] "" ECU
 SG_ SubMux m1M : 4|4@1+ (1,0) [0|0] "" ECU
 SG_ A m1 : 8|16@1+ (0.1,0) [0|0] "" ECU
 SG_ B m2 : 8|16@1- (1,-5) [0|0] "" ECU
 SG_ C m0 : 24|8@1+ (1,0) [0|0] "" ECU
 SG_ D m1 : 24|8@1+ (2,0) [0|0] "" ECU
 SG_ E : 56|8@1+ (1,0) [0|0] "" ECU
BO_ 2147484000 Extended: 64 ECU
 SG_ FdLE : 100|37@1+ (1,0) [0|0] "" ECU
 SG_ FdBE : 300|41@0- (0.01,0) [0|0] "" ECU
 SG_ Tail : 504|8@1+ (1,0) [0|0] "" ECU
SG_MUL_VAL_ 260 SubMux Mux 1-1;
SG_MUL_VAL_ 260 A SubMux 1-1;
SG_MUL_VAL_ 260 B SubMux 2-3;
SG_MUL_VAL_ 260 C SubMux 0-0;
SG_MUL_VAL_ 260 D SubMux 1-1;
VAL_ 259 NegScale 0 "zero" 1 "one" ;
SIG_VALTYPE_ 256 F32LE : 1;
SIG_VALTYPE_ 256 F64BE : 2;
SIG_VALTYPE_ 256 F32S : 1;
"""


def frames_of(rows: list[tuple[int, bool, bytes]], width: int = 8) -> Frames:
    n = len(rows)
    data = np.zeros((n, width), dtype=np.uint8)
    for i, (_, _, payload) in enumerate(rows):
        data[i, : len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    return Frames(
        np.arange(n, dtype=np.int64) * 1000 + 1_600_000_000_000_000,
        np.asarray([r[0] for r in rows], dtype=np.uint32),
        np.asarray([r[1] for r in rows], dtype=bool),
        np.asarray([len(r[2]) for r in rows], dtype=np.uint8),
        data,
    )


def assert_matches(
    db: Any, frames: Frames, *, allow_truncated: bool = False, dec: Any = None
) -> None:
    dec = dec or CompiledDecoder(db, allow_truncated=allow_truncated)
    got, got_stats = dec.decode(frames)
    want, want_stats = reference_decode(db, frames, allow_truncated=allow_truncated)
    records = got.records()
    assert got_stats == want_stats
    assert len(records) == len(want)
    bad = [(a, b) for a, b in zip(records, want, strict=True) if not same_record(a, b)]
    assert not bad, bad[:5]


@pytest.fixture(scope="module")
def synth() -> Any:
    return cantools.database.load_string(SYNTH_DBC, database_format="dbc")


def test_synthetic_dbc_has_the_features(synth: Any) -> None:
    ext = synth.get_message_by_name("ExtMux")
    assert ext.get_signal_by_name("SubMux").multiplexer_signal == "Mux"
    assert synth.get_message_by_name("Floats").get_signal_by_name("F64BE").is_float
    assert synth.get_message_by_name("Extended").is_extended_frame
    assert not CompiledDecoder(synth).fallback_messages


@given(data=st.data())
@HSET
def test_synthetic_random_frames_match_cantools(synth: Any, data: st.DataObject) -> None:
    msgs = synth.messages
    rows = []
    for _ in range(data.draw(st.integers(1, 12))):
        m = data.draw(st.sampled_from(msgs))
        size = data.draw(st.sampled_from([m.length, m.length, 0, max(0, m.length - 3), 64]))
        payload = data.draw(st.binary(min_size=min(size, 64), max_size=min(size, 64)))
        rows.append((m.frame_id, bool(m.is_extended_frame), payload))
    frames = frames_of(rows, width=64)
    for trunc in (False, True):
        assert_matches(synth, frames, allow_truncated=trunc)


def test_special_values_are_bit_identical(synth: Any) -> None:
    import struct

    rows = []
    for f32, f64 in [
        (float("nan"), float("-inf")),
        (-0.0, -0.0),
        (1e-45, 5e-324),  # subnormals
        (3.4028234663852886e38, 1.7976931348623157e308),
    ]:
        # F32LE in bytes 0-3 (little endian), F64BE in bytes 4-11 (big endian), F32S in 12-15.
        payload = struct.pack("<f", f32) + struct.pack(">d", f64) + struct.pack("<f", f32)
        rows.append((256, False, payload))
    rows += [(257, False, b"\xff" * 8), (258, False, b"\x80" + b"\x00" * 7)]
    rows += [(257, False, b"\x01" + b"\x00" * 6 + b"\x80")]  # 2**63 + 1 rounds to 2**63
    frames = frames_of(rows, width=16)
    assert_matches(synth, frames)
    got = CompiledDecoder(synth).decode(frames)[0].records()
    assert np.isnan(got[0][2]) and got[1][2] == float("-inf")
    assert str(got[3][2]) == "-0.0"  # identity floats keep the sign of zero
    assert got[-1][2] == 2.0**63


def test_unknown_short_failed_are_counted(synth: Any) -> None:
    rows = [
        (0x7FF, False, b"\x00" * 8),  # unknown 11-bit id
        (260, True, b"\x00" * 8),  # id of a standard message, but extended: unknown
        (0x1000, False, b"\x00" * 8),  # no 11-bit frame has this id: unknown, no crash
        (2147484000 & 0x1FFFFFFF, False, bytes(64)),  # an extended message's id, standard frame
        (259, False, b"\x01\x02"),  # short
        (260, False, b"\x05" + b"\x00" * 7),  # Mux 5: no such branch -> failed
        (260, False, b"\x11" + b"\x00" * 7),  # Mux 1, SubMux 1: decoded
    ]
    samples, stats = CompiledDecoder(synth).decode(frames_of(rows, width=64))
    assert (stats.unknown_id, stats.short_dlc, stats.failed, stats.decoded) == (4, 1, 1, 1)
    names = {samples.names[s] for s in samples.sig.tolist()}
    assert names == {f"Vehicle.Private.Dbc.ExtMux.{s}" for s in ("Mux", "SubMux", "A", "D", "E")}
    assert_matches(synth, frames_of(rows, width=64))


def test_truncated_frames_keep_fully_received_signals(synth: Any) -> None:
    rows = [(259, False, b"\xff\x7f\x03"), (260, False, b"\x21\x00")]
    dec = CompiledDecoder(synth, allow_truncated=True)
    samples, stats = dec.decode(frames_of(rows))
    assert stats.short_dlc == 2 and stats.decoded == 2
    names = [samples.names[s] for s in samples.sig.tolist()]
    # Only signals wholly inside the received bytes, like cantools' allow_truncated=True.
    assert names == [
        "Vehicle.Private.Dbc.Mixed.IntScaleFloatOff",
        "Vehicle.Private.Dbc.Mixed.NegScale",
        "Vehicle.Private.Dbc.ExtMux.Mux",
        "Vehicle.Private.Dbc.ExtMux.SubMux",
    ]
    assert_matches(synth, frames_of(rows), allow_truncated=True)


def test_choices_stay_numbers_and_tables_are_available(synth: Any) -> None:
    dec = CompiledDecoder(synth)
    samples, _ = dec.decode(frames_of([(259, False, bytes(8))]))
    assert samples.value.dtype == np.float64
    assert dec.choices("Vehicle.Private.Dbc.Mixed.NegScale") == {0: "zero", 1: "one"}
    assert dec.choices("Vehicle.Private.Dbc.Mixed.Big53") == {}


def test_mapping_names_the_outputs(synth: Any) -> None:
    dec = CompiledDecoder(synth, {("Wide", "U64"): "Vehicle.Powertrain.Odometer"})
    samples, _ = dec.decode(frames_of([(257, False, bytes(8))]))
    assert samples.records() == [("Vehicle.Powertrain.Odometer", 1_600_000_000_000_000, 0.0)]


def test_one_at_a_time_equals_batch(synth: Any) -> None:
    rng = np.random.default_rng(7)
    rows = [
        (int(m.frame_id), bool(m.is_extended_frame), rng.bytes(m.length))
        for m in synth.messages
        for _ in range(5)
    ]
    frames = frames_of(rows, width=64)
    dec = CompiledDecoder(synth)
    batch, _ = dec.decode(frames)
    single = [
        r for i in range(len(frames)) for r in dec.decode(frames.slice(i, i + 1))[0].records()
    ]
    assert batch.records() == single or all(
        same_record(a, b) for a, b in zip(batch.records(), single, strict=True)
    )
    assert len(single) == len(batch)


def test_held_results_are_never_overwritten(synth: Any) -> None:
    dec = CompiledDecoder(synth)
    first, _ = dec.decode(frames_of([(257, False, b"\x01" + bytes(7))]))
    second, _ = dec.decode(frames_of([(257, False, b"\x02" + bytes(7))]))
    assert first.value.tolist() == [1.0] and second.value.tolist() == [2.0]
    part = second.value[:1]  # a view alone keeps the memory in use
    del second
    third, _ = dec.decode(frames_of([(257, False, b"\x03" + bytes(7))]))
    assert part.tolist() == [2.0] and third.value.tolist() == [3.0]


def test_dropped_results_give_their_memory_back(synth: Any) -> None:
    dec = CompiledDecoder(synth)
    frames = frames_of([(257, False, bytes(8))] * 10)
    dec.decode(frames)  # result dropped at once
    block = id(dec._block)
    dec.decode(frames)
    assert id(dec._block) == block  # same warm memory, no page faults


def test_empty_batch_and_database() -> None:
    empty = frames_of([])
    samples, stats = CompiledDecoder(cantools.database.can.Database()).decode(empty)
    assert len(samples) == 0 and stats.frames == 0
    samples, stats = CompiledDecoder(cantools.database.can.Database()).decode(
        frames_of([(1, False, b"\x00")])
    )
    assert stats.unknown_id == 1 and len(samples) == 0


def test_overflowing_integer_scaling_falls_back_to_cantools() -> None:
    big = Signal(
        "Big", 0, 40, conversion=BaseConversion.factory(scale=2**40, offset=3, choices=None)
    )
    small = Signal("Small", 40, 8)
    db = cantools.database.can.Database(messages=[Message(0x10, "Odd", 8, [big, small])])
    dec = CompiledDecoder(db)
    assert "Odd" in dec.fallback_messages
    rows = [(0x10, False, bytes([i] * 8)) for i in range(4)] + [(0x11, False, bytes(8))]
    assert_matches(db, frames_of(rows), dec=dec)
    samples, _ = dec.decode(frames_of(rows))
    assert samples.value[0] == 3.0 and samples.value[2] == float((0x0101010101 << 40) + 3)


# ----- random message layouts, built with cantools' own classes (strict=False) -----------------

SCALES = [1, 2, -3, 7, 0.1, 0.5, -0.25, 1e-3, 1.0, 3.0000001]
OFFSETS = [0, 5, -40, 0.5, -273.15, 1e10, 0.0]


def _physical_bits(start: int, size: int, byte_order: str) -> set[int]:
    """Payload bits (byte * 8 + bit) a signal covers, in cantools' numbering."""
    if byte_order == "little_endian":
        return set(range(start, start + size))
    network = 8 * (start // 8) + 7 - start % 8
    return {8 * (n // 8) + 7 - n % 8 for n in range(network, network + size)}


@st.composite
def random_message(draw: st.DrawFn) -> Message:
    length = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 12, 64]))
    nbits = 8 * length
    signals: list[Signal] = []
    muxed = draw(st.booleans())
    tidy = draw(st.integers(0, 3)) > 0
    used: set[int] = set()
    for k in range(draw(st.integers(1, 7))):
        is_float = draw(st.integers(0, 9)) == 0
        size = draw(st.sampled_from([32, 64])) if is_float else draw(st.integers(1, 64))
        kw: dict[str, Any] = {}
        if muxed and k == 0:
            size, is_float = draw(st.integers(1, 4)), False
            kw["is_multiplexer"] = True
        elif muxed and draw(st.booleans()):
            kw["multiplexer_ids"] = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
            kw["multiplexer_signal"] = "S0"
        scale = draw(st.sampled_from(SCALES))
        offset = draw(st.sampled_from(OFFSETS))
        if kw.get("is_multiplexer"):
            scale, offset = draw(st.sampled_from([(1, 0), (1, 0), (2, 1), (0.5, 0)]))
        start = draw(st.integers(0, nbits - 1))
        be = draw(st.sampled_from(["little_endian", "big_endian"]))
        if tidy:  # most layouts fit without overlap; the others test cantools' odd formats
            bits = _physical_bits(start, size, be)
            if max(bits) >= nbits or bits & used:
                continue
            used |= bits
        signals.append(
            Signal(
                f"S{k}",
                start,
                size,
                byte_order=be,
                is_signed=draw(st.booleans()),
                conversion=BaseConversion.factory(scale, offset, None, is_float),
                **kw,
            )
        )
    if muxed and (not signals or signals[0].name != "S0"):
        for sig in signals:  # the selector did not fit: plain signals then
            sig.multiplexer_ids, sig.multiplexer_signal = None, None
    return Message(draw(st.integers(0, 0x7FF)), "Rand", length, signals, strict=False)


@given(data=st.data())
@HSET
def test_random_layouts_match_cantools(data: st.DataObject) -> None:
    try:
        msg = data.draw(random_message())
        db = cantools.database.can.Database(messages=[msg], strict=False)
    except Exception:  # a layout cantools itself refuses (bitstruct limits): nothing to compare
        return
    rows = []
    for _ in range(data.draw(st.integers(1, 8))):
        size = data.draw(st.sampled_from([msg.length, msg.length, max(0, msg.length - 2)]))
        payload = data.draw(st.binary(min_size=size, max_size=size))
        rows.append((msg.frame_id, False, payload))
    frames = frames_of(rows, width=64)
    for trunc in (False, True):
        assert_matches(db, frames, allow_truncated=trunc)


def test_agrees_with_cantools_decoder_class(synth: Any) -> None:
    rng = np.random.default_rng(3)
    rows = [
        (int(m.frame_id), bool(m.is_extended_frame), rng.bytes(m.length)) for m in synth.messages
    ]
    frames = frames_of(rows * 3, width=64)
    got, got_stats = CompiledDecoder(synth).decode(frames)
    want, want_stats = CantoolsDecoder(synth).decode(frames)
    assert got_stats == want_stats
    assert all(same_record(a, b) for a, b in zip(got.records(), want.records(), strict=True))


@pytest.mark.skipif(JIT_OFF, reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
def test_kernels_are_really_compiled(synth: Any) -> None:
    import numba

    from firmware_bridge import decode_kernel

    CompiledDecoder(synth).decode(frames_of([(257, False, bytes(8))]))
    kernel = decode_kernel._decode
    assert isinstance(kernel, numba.core.registry.CPUDispatcher)
    assert kernel.signatures
    # One compiled version whatever the DBC: the DBC is data, not code.
    CompiledDecoder(cantools.database.can.Database()).decode(frames_of([]))
    assert len(kernel.signatures) == 1


def test_malformed_frame_blocks_are_refused_with_the_field_named(synth: Any) -> None:
    from core.errors import DecodeError

    good = frames_of([(257, False, bytes(8)), (258, False, bytes(8))])
    dec = CompiledDecoder(synth)
    short_dlc = Frames(good.ts_us, good.can_id, good.extended, good.dlc[:1], good.data)
    with pytest.raises(DecodeError, match=r"Frames\.dlc"):
        dec.decode(short_dlc)
    flat = Frames(good.ts_us, good.can_id, good.extended, good.dlc, good.data.reshape(-1))
    with pytest.raises(DecodeError, match=r"Frames\.data"):
        dec.decode(flat)
    # A DLC larger than the stored bytes (a hand-built block) is treated as the bytes there are.
    wide = Frames(good.ts_us, good.can_id, good.extended, good.dlc + 8, good.data)
    samples, stats = dec.decode(wide)
    assert stats.decoded == 2 and len(samples) == 2


def test_wide_selector_values_are_exact() -> None:
    case = 2**60 + 1  # float(case) == 2**60: a selector through float64 would miss it
    mux = Signal("Sel", 0, 64, is_multiplexer=True)
    child = Signal("Child", 0, 8, multiplexer_ids=[case], multiplexer_signal="Sel")
    db = cantools.database.can.Database(
        messages=[Message(0x20, "WideMux", 8, [mux, child], strict=False)], strict=False
    )
    rows = [(0x20, False, case.to_bytes(8, "little")), (0x20, False, (2**60).to_bytes(8, "little"))]
    samples, stats = CompiledDecoder(db).decode(frames_of(rows))
    assert stats.decoded == 1 and stats.failed == 1
    assert samples.records()[-1] == (
        "Vehicle.Private.Dbc.WideMux.Child",
        1_600_000_000_000_000,
        1.0,
    )
    assert_matches(db, frames_of(rows))


def test_outputs_grow_when_a_batch_has_more_samples_than_expected(synth: Any) -> None:
    dec = CompiledDecoder(synth)
    rng = np.random.default_rng(11)
    rows = [(m.frame_id, bool(m.is_extended_frame), rng.bytes(m.length)) for m in synth.messages]
    frames = frames_of(rows * 50, width=64)
    dec._per_frame = 0.0  # expect nothing: the kernel must stop, the outputs grow, decode resumes
    got, stats = dec.decode(frames)
    want, want_stats = reference_decode(synth, frames)
    assert stats == want_stats and len(got) == len(want) > 100
    assert all(same_record(a, b) for a, b in zip(got.records(), want, strict=True))
    assert dec._per_frame > 1.0  # and the next batch is sized from this one
