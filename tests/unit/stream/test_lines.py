"""Line protocol from telemetry batches: exact values, the clock-skew policy, dead-letter details."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import SinkError
from core.wire import Samples, TelemetryBatch
from stream.lines import INFLUX_MAX_ABS_US, LineStats, SkewPolicy, batch_lines
from stream.sinks.influx import backoff_s, chunks, parse_retry_after
from stream.sinks.writer import pack, unpack

NOW = 1_800_000_000_000_000


def parse(lines: list[str]) -> dict[tuple[str, str, int], float]:
    """A deliberately plain line-protocol reader (our names and devices need no escapes)."""
    out: dict[tuple[str, str, int], float] = {}
    for line in lines:
        head, fields, ts = line.split(" ")
        measurement, tag = head.split(",")
        assert measurement == "telemetry"
        device = tag.removeprefix("device=")
        for f in fields.split(","):
            name, value = f.split("=")
            out[(device, name, int(ts))] = float(value)
    return out


def batch(records: list[tuple[str, int, float]], device: str = "car-1") -> TelemetryBatch:
    return TelemetryBatch(device, "b", 7, Samples.from_records(records))


names = st.sampled_from(["Vehicle.Speed", "Vehicle.A.B", "Vehicle.Powertrain.X_1"])
values = st.floats(allow_nan=True, allow_infinity=True, width=64)
stamps = st.integers(NOW - 10**12, NOW + 86_400 * 10**6)  # up to the one-day limit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, stamps, values), max_size=60))
def test_lines_hold_exactly_the_finite_samples(records: list[tuple[str, int, float]]) -> None:
    stats = LineStats()
    lines = batch_lines(batch(records), "telemetry", stats, now_us=NOW)
    want: dict[tuple[str, str, int], float] = {}
    for name, ts, value in records:  # the last sample of a (name, ts) wins, as in InfluxDB
        if math.isfinite(value):
            want[("car-1", name, ts)] = value
    got = parse(lines)
    assert got == want
    assert all(repr(v) == repr(want[k]) for k, v in got.items())  # -0.0 and 1e-300 stay exact
    assert stats.non_finite == sum(not math.isfinite(v) for _, _, v in records)
    assert stats.lines == len(lines) == len({t for _, t, v in records if math.isfinite(v)})
    assert stats.samples == len(records)


def test_one_line_per_timestamp_in_time_order() -> None:
    lines = batch_lines(
        batch([("Vehicle.B.X", 20, 2.0), ("Vehicle.A.Y", 10, 1.0), ("Vehicle.B.Y", 20, 3.5)]),
        "telemetry",
        now_us=NOW,
    )
    assert lines == [
        "telemetry,device=car-1 Vehicle.A.Y=1.0 10",
        "telemetry,device=car-1 Vehicle.B.X=2.0,Vehicle.B.Y=3.5 20",
    ]


def test_measurement_is_escaped() -> None:
    lines = batch_lines(batch([("Vehicle.A.Y", 10, 1.0)]), "my data,x", now_us=NOW)
    assert lines == ["my\\ data\\,x,device=car-1 Vehicle.A.Y=1.0 10"]


def test_clock_skew_policy_rejects_future_and_too_old_with_reasons() -> None:
    day = 86_400_000_000
    records = [
        ("Vehicle.Speed", NOW, 1.0),
        ("Vehicle.Speed", NOW + 2 * day, 2.0),  # device clock a day+ ahead
        ("Vehicle.Speed", NOW - 40 * day, 3.0),  # older than a 30-day retention
        ("Vehicle.Speed", INFLUX_MAX_ABS_US + 1, 4.0),  # beyond 2262
        ("Vehicle.Speed", NOW + 1, float("nan")),
        ("Vehicle.Speed", NOW + 2, float("-inf")),
    ]
    stats = LineStats()
    policy = SkewPolicy(max_future_s=86_400, max_age_s=30 * 86_400)
    lines = batch_lines(batch(records), "telemetry", stats, policy, now_us=NOW)
    assert lines == [f"telemetry,device=car-1 Vehicle.Speed=1.0 {NOW}"]
    assert (stats.clock_ahead, stats.clock_behind, stats.non_finite) == (2, 1, 2)
    reasons = {r: json.loads(d) for r, d in stats.rejects}
    assert set(reasons) == {"clock_ahead", "clock_behind", "non_finite"}
    assert reasons["clock_ahead"]["count"] == 2
    assert reasons["clock_ahead"]["device"] == "car-1" and reasons["clock_ahead"]["seq"] == 7
    assert reasons["clock_behind"]["examples"] == [["Vehicle.Speed", NOW - 40 * day, "3.0"]]
    assert reasons["non_finite"]["examples"][0][2] == "nan"


def test_default_policy_keeps_old_logs_and_everything_sane() -> None:
    records = [("Vehicle.Speed", 5, 1.0), ("Vehicle.Speed", -(10**15), 2.0)]  # 1970, 1938
    stats = LineStats()
    assert len(batch_lines(batch(records), "telemetry", stats, now_us=NOW)) == 2
    assert stats.rejects == []


def test_all_rejected_batch_gives_no_lines() -> None:
    stats = LineStats()
    assert batch_lines(batch([("Vehicle.Speed", 1, math.nan)]), "t", stats, now_us=NOW) == []
    assert stats.lines == 0 and stats.non_finite == 1


def test_vectorised_path_is_fast_enough() -> None:
    n = 20_000
    names_ = [f"Vehicle.Private.Msg{i // 4}.Sig{i}" for i in range(40)]
    samples = Samples.from_columns(
        names_,
        np.arange(n) % 40,
        NOW + np.repeat(np.arange(n // 4), 4) * 1000,
        np.random.default_rng(1).normal(size=n),
    )
    b = TelemetryBatch("car-1", "b", 1, samples)
    best = min(_timed(lambda: batch_lines(b, "telemetry", now_us=NOW)) for _ in range(3))
    assert n / best > 200_000  # measured ~2.6 M samples/s; a per-sample regression shows here


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    import time

    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def test_chunks_respect_lines_and_bytes() -> None:
    lines = [f"m x={i} {i}" for i in range(1000)]
    bodies = chunks(lines, 300)
    assert [b.count(b"\n") for b in bodies] == [300, 300, 300, 100]
    assert b"".join(bodies).decode().splitlines() == lines
    small = chunks(lines, 1000, max_bytes=2000)
    assert all(len(b) <= 2000 for b in small)
    assert b"".join(small).decode().splitlines() == lines


def test_retry_after_and_backoff() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None
    for attempt in range(1, 12):
        d = backoff_s(attempt)
        assert 0 <= d <= min(30.0, 0.1 * 2**attempt)
    assert backoff_s(1, retry_after=5.0) >= 5.0


def test_pack_unpack_round_trip_and_garbage() -> None:
    lines = [f"telemetry,device=c x={i}.25 {i}" for i in range(20_000)]
    records = pack(lines)
    assert len(records) > 1 and all(len(r) < 1024 * 1024 for r in records)
    assert [line for r in records for line in unpack(r)] == lines
    with pytest.raises(SinkError, match="not gzip line protocol"):
        unpack(b"\x00not gzip")
    with pytest.raises(SinkError):
        unpack(gzip.compress(b"\xff\xfe"))


def test_value_texts_are_exact_through_the_cache_and_its_overflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream.lines as lines_mod

    monkeypatch.setattr(lines_mod, "TEXT_CACHE_MAX", 4)
    rng = np.random.default_rng(5)
    for round_ in range(3):  # cold cache, warm cache, and cleared when over the limit
        values = np.r_[0.0, -0.0, 0.1, rng.normal(0, 1e6, 7)]
        ts = NOW - 10_000 + np.arange(len(values))
        b = TelemetryBatch(
            "d", "b", round_, Samples.from_columns(["x"], np.zeros(len(values)), ts, values)
        )
        got = parse(batch_lines(b, "telemetry", now_us=NOW))
        want = {("d", "x", int(t)): float(v) for t, v in zip(ts, values, strict=True)}
        assert got == want
        assert [math.copysign(1, got[("d", "x", int(ts[i]))]) for i in (0, 1)] == [1, -1]
        assert len(lines_mod._TEXTS.texts) <= 10


def test_a_large_write_is_split_for_influxdb_to_parse_on_several_cores() -> None:
    import asyncio

    from core.config import InfluxSettings
    from stream.sinks.influx import MAX_IN_FLIGHT, SPLIT_MIN_LINES, InfluxSink

    class Recorder(InfluxSink):
        def __init__(self) -> None:
            super().__init__(InfluxSettings(batch_lines=5000))
            self.bodies: list[bytes] = []

        async def _write_internal(self, body: bytes, family: str = "telemetry") -> None:
            self.bodies.append(body)

    for n, want in ((SPLIT_MIN_LINES - 1, [SPLIT_MIN_LINES - 1]), (4001, [2001, 2000]),
                    (12_000, [5000, 5000, 2000])):  # fmt: skip
        sink = Recorder()
        lines = [f"m x={i}i {i}" for i in range(n)]
        asyncio.run(sink.write(lines))
        assert sorted((b.count(b"\n") for b in sink.bodies), reverse=True) == want
        assert b"".join(sorted(sink.bodies)).count(b"\n") == n and MAX_IN_FLIGHT == 2


# ----- the compiled renderer against the plain reference (tests/reference/line_protocol.py) -----
odd_names = st.sampled_from(
    ["Vehicle.Speed", "Vehicle.A.B", "Vehicle.Powertrain.X_1", "Vehicle.Private.Dbc.M_1.S 2"]
)
any_stamps = st.integers(-INFLUX_MAX_ABS_US - 5, INFLUX_MAX_ABS_US + 5)


@pytest.mark.kernel
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(odd_names, any_stamps, values), max_size=80),
    st.sampled_from(["", ",vin=VIN\\ 1,ownership=o-1", ",vin=车辆\\,1"]),
    st.sampled_from(["car-1", "gate 7,x=y"]),
)
def test_compiled_lines_equal_the_reference_byte_for_byte(
    records: list[tuple[str, int, float]], tags: str, device: str
) -> None:
    from tests.reference.line_protocol import batch_lines_ref

    b = TelemetryBatch(device, "b", 7, Samples.from_records(records))
    policy = SkewPolicy(max_future_s=10**9)
    got = batch_lines(b, "tele metry", now_us=NOW, tags=tags, policy=policy)
    assert got == batch_lines_ref(b, "tele metry", now_us=NOW, tags=tags, policy=policy)


@pytest.mark.kernel
def test_line_renderer_is_compiled() -> None:
    from stream.line_kernel import _render

    batch_lines(batch([("Vehicle.Speed", NOW, 1.5)]), "telemetry", now_us=NOW)
    if not hasattr(_render, "signatures"):  # NUMBA_DISABLE_JIT=1: the plain function itself
        pytest.skip("numba's JIT is disabled in this run")
    assert _render.signatures


def test_value_table_rebuilds_keep_every_text_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known values come from the sorted table, new ones from the call's own table, mixed in one
    batch; rebuilds (forced often here) and a full cache never change a byte."""
    import stream.lines as lines_mod
    from tests.reference.line_protocol import batch_lines_ref

    monkeypatch.setattr(lines_mod, "REBUILD_MIN", 3)
    monkeypatch.setattr(lines_mod, "TEXT_CACHE_MAX", 40)
    monkeypatch.setattr(lines_mod, "_TEXTS", lines_mod.ValueTexts())
    rng = np.random.default_rng(11)
    pool = np.r_[0.0, -0.0, 5e-324, -1.7976931348623157e308, np.round(rng.normal(0, 50, 30), 2)]
    for seq in range(30):
        values = rng.choice(pool, 25)
        ts = NOW - 10**9 + seq * 100 + np.arange(25) // 3
        b = TelemetryBatch(
            "car-1", "b", seq, Samples.from_columns(["x", "y"], np.arange(25) % 2, ts, values)
        )
        assert batch_lines(b, "telemetry", now_us=NOW) == batch_lines_ref(
            b, "telemetry", now_us=NOW
        )
        assert len(lines_mod._TEXTS.texts) <= 40
    assert lines_mod._TEXTS.indexed > 0  # the hash index was used


def test_a_long_tail_of_rare_values_is_folded_into_the_index() -> None:
    """Fewer than REBUILD_MIN new values, each in a different lookup, still reach the index
    after REBUILD_CALLS lookups that missed: then the same values are all found in it."""
    import stream.lines as lines_mod

    texts = lines_mod.ValueTexts()
    common = np.arange(5000, dtype=np.float64) / 4
    texts.lookup(common.view(np.int64))
    texts._rebuild()
    rare = np.arange(lines_mod.REBUILD_CALLS, dtype=np.float64) + 0.3
    for i, v in enumerate(rare):
        vix, _, local = texts.lookup(np.r_[common[:100], v].view(np.int64))
        assert vix[-1] < 0 and local[0].tobytes() == repr(float(v)).encode()  # a miss
        assert (i < len(rare) - 1) == (texts.indexed == 5000)
    vix, table, local = texts.lookup(np.r_[common[:100], rare].view(np.int64))
    assert (vix >= 0).all() and len(local[0]) == 0  # every value found in the index
    data, off = table
    assert [data[off[j] : off[j + 1]].tobytes().decode() for j in vix[-3:]] == [
        repr(float(v)) for v in rare[-3:]
    ]


def test_write_bodies_are_plain_gzip_that_any_influxdb_reads() -> None:
    from stream.sinks.influx import gzip_fast

    body = "\n".join(f"telemetry,device=car-1 x={i / 7!r} {NOW + i}" for i in range(5000)).encode()
    packed = gzip_fast(body)
    assert gzip.decompress(packed) == body and len(packed) < len(body) / 3


@pytest.mark.kernel
def test_timestamps_around_the_kept_high_digits_equal_the_reference() -> None:
    """The renderer keeps a timestamp's high digits from the line before: lines crossing a
    10**8 boundary, going back below it, negative, zero, short and the extremes, in one batch."""
    from tests.reference.line_protocol import batch_lines_ref

    edges = [
        0, 7, 99_999_999, 100_000_000, 100_000_001, 199_999_999, 200_000_000, -1, -99_999_999,
        -100_000_000, -100_000_001, NOW - 1, NOW, NOW + 1, NOW // 10**8 * 10**8 - 1,
        NOW // 10**8 * 10**8, 10**15 + 5, INFLUX_MAX_ABS_US, -INFLUX_MAX_ABS_US,
    ]  # fmt: skip
    rng = np.random.default_rng(5)
    ts = np.r_[edges, rng.choice(edges, 40) + rng.integers(-3, 3, 40)]
    values = np.round(rng.normal(0, 50, len(ts)), 2)
    b = TelemetryBatch(
        "car-1", "b", 1, Samples.from_columns(["x", "y", "z"], np.arange(len(ts)) % 3, ts, values)
    )
    policy = SkewPolicy(max_future_s=10**9)
    import stream.lines as lines_mod

    for _ in range(2):  # the values new, then found in the index
        got = batch_lines(b, "telemetry", now_us=NOW, policy=policy)
        assert got == batch_lines_ref(b, "telemetry", now_us=NOW, policy=policy)
        kept = (ts >= -INFLUX_MAX_ABS_US) & (ts <= NOW + 10**15)
        assert [int(line.rsplit(" ", 1)[1]) for line in got] == sorted(set(ts[kept].tolist()))
        lines_mod._TEXTS._rebuild()
