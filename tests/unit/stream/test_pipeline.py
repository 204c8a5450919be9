"""The telemetry micro-batch logic without Kafka: bad input, dedupe, partitions, detectors, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.config import StreamSettings
from core.wire import Samples, TelemetryBatch, encode_telemetry
from stream.lines import SkewPolicy
from stream.partition_models import PartitionModels, _forward_fill
from stream.pipeline import T_DEDUPE, T_MODELS, T_STATE, TelemetryPipeline
from stream.registry import DeviceRegistry
from stream.state import ENGINE_RPM, SPEED

NOW = 1_800_000_000_000_000


class Tables:
    """The three Faust tables as plain dicts, written the way the agent writes them."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}
        self.partition_of: dict[tuple[str, str], int] = {}

    def lookup(self, table: str, key: str) -> bytes | None:
        return self.data.get((table, key))

    def apply(self, writes: list[tuple[int, str, str, bytes]]) -> None:
        for partition, table, key, value in writes:
            self.data[(table, key)] = value
            self.partition_of[(table, key)] = partition


def tb(device: str, seq: int, t0: int, speed: float = 50.0, n: int = 10, boot: str = "b") -> bytes:
    ts = t0 + np.arange(n) * 100_000
    s = Samples.from_columns(
        [SPEED, ENGINE_RPM], np.r_[np.zeros(n), np.ones(n)], np.r_[ts, ts],
        np.r_[np.full(n, speed), np.full(n, 1500.0)],
    )  # fmt: skip
    return encode_telemetry(TelemetryBatch(device, boot, seq, s))


def make(registry: DeviceRegistry | None = None, **kw: object) -> TelemetryPipeline:
    settings = StreamSettings(**kw)  # type: ignore[arg-type]
    reg = registry or DeviceRegistry({"car-1": "VIN1", "car-2": "VIN2"})
    return TelemetryPipeline(settings, reg, SkewPolicy(), now_us=lambda: NOW)


def test_bad_input_is_dead_lettered_with_reasons_and_nothing_stops() -> None:
    p, t = make(max_batch_samples=50), Tables()
    t0 = NOW - 10_000_000
    weird = TelemetryBatch(
        "car-1", "b", 5,
        Samples.from_records(
            [(SPEED, t0, math.inf), (SPEED, NOW + 3 * 86_400_000_000, 1.0), (SPEED, t0 + 1, 7.0)]
        ),
    )  # fmt: skip
    records = [
        (0, b"\x00\x01junk"),
        (0, b'{"schema": 1, "device_id": "car-1"'),
        (0, tb("stranger", 1, t0)),
        (0, tb("car-1", 2, t0, n=100)),  # 200 samples > 50
        (0, encode_telemetry(weird)),
        (0, tb("car-1", 1, t0)),
    ]
    res = p.process(records, t.lookup)
    reasons = sorted(h["reason"].decode() for _, h in res.dead)
    assert reasons == [
        "bad_json", "clock_ahead", "non_finite", "oversized", "unknown_device", "unknown_format"
    ]  # fmt: skip
    assert p.counters.dead_lettered == 6
    # good rows of the weird batch and the whole good batch are written
    assert sum(line.split(" ")[1].count(",") + 1 for line in res.lines) == 1 + 20
    unknown = next(h for _, h in res.dead if h["reason"] == b"unknown_device")
    assert b"stranger" in unknown["detail"]


def test_duplicates_are_dropped_across_batches_and_table_round_trips() -> None:
    p, t = make(), Tables()
    first = p.process([(1, tb("car-1", q, NOW - 10**8 + q * 10**6)) for q in range(5)], t.lookup)
    t.apply(first.writes)
    again = make().process(  # a new worker after a takeover: only the tables carry over
        [(1, tb("car-1", q, NOW - 10**8 + q * 10**6)) for q in range(3, 7)], t.lookup
    )
    assert len(first.lines) == 50 and len(again.lines) == 20  # seq 5 and 6 only
    assert {w[0] for w in first.writes} == {1}  # every write tagged with the source partition


def test_state_and_detectors_per_partition_with_checkpoints() -> None:
    p, t = make(checkpoint_interval_s=0.0), Tables()
    recs = [(0, tb("car-1", q, NOW - 10**8 + q * 10**6)) for q in range(40)]
    recs += [(3, tb("car-2", q, NOW - 10**8 + q * 10**6, speed=80.0)) for q in range(40)]
    recs.append((3, tb("car-2", 40, NOW - 10**8 + 40 * 10**6, speed=400.0)))  # a spike
    res = p.process(recs, t.lookup)
    t.apply(res.writes)
    assert t.partition_of[(T_MODELS, "p0")] == 0 and t.partition_of[(T_MODELS, "p3")] == 3
    assert t.partition_of[(T_STATE, "VIN2")] == 3 and t.partition_of[(T_DEDUPE, "car-1")] == 0
    spikes = [json.loads(v) for _, v in res.anomalies]
    assert {(a["vin"], a["signal"]) for a in spikes} == {("VIN2", SPEED)}
    assert spikes[0]["value"] == 400.0 and spikes[0]["score"] > 6
    state = json.loads(t.data[(T_STATE, "VIN2")])
    assert state["health"] == "warn" and state["moving"] is True
    assert [json.loads(v)["vin"] for _, v in res.state_updates] == ["VIN1", "VIN2"]
    preds = [json.loads(v) for _, v in res.predictions]
    assert {x["kind"] for x in preds} == {"oil_life"} and all(0.99 < x["value"] < 1 for x in preds)
    # the checkpoint restores the detectors exactly
    restored = PartitionModels.from_bytes(t.data[(T_MODELS, "p3")])
    live = p.models_for(3, t.lookup)
    assert restored.anomaly.parts[0].state.equals(live.anomaly.parts[0].state)
    assert restored.trips.equals(live.trips)
    assert restored.vehicles == live.vehicles == {"VIN2": 0}


def test_a_takeover_reads_the_checkpoint_instead_of_its_stale_cache() -> None:
    p, t = make(checkpoint_interval_s=0.0), Tables()
    t.apply(p.process([(0, tb("car-1", 0, NOW - 10**8))], t.lookup).writes)
    other = make(checkpoint_interval_s=0.0)
    t.apply(other.process([(0, tb("car-1", 1, NOW - 10**8 + 10**6))], t.lookup).writes)
    models = p.models_for(0, t.lookup)  # the table now holds the other worker's blob
    assert models.anomaly.parts[0].state["count"].sum() == 40


def test_bad_checkpoint_starts_fresh_and_is_counted() -> None:
    p, t = make(), Tables()
    t.data[(T_MODELS, "p0")] = b"not a checkpoint"
    res = p.process([(0, tb("car-1", 0, NOW - 10**8))], t.lookup)
    assert len(res.lines) == 10 and p.counters.reasons["bad_checkpoint"] == 1


@pytest.mark.kernel
def test_forward_fill_per_slot() -> None:
    got = _forward_fill(
        np.array([0, 0, 1, 1]), np.array([5, 20, 5, 30]),
        np.array([0, 1, 0]), np.array([10, 25, 1]), np.array([80.0, 90.0, 70.0]),
    )  # fmt: skip
    assert got[0] == 70.0 and got[1] == 80.0 and math.isnan(got[2]) and got[3] == 90.0


@pytest.mark.kernel
def test_warm_up_compiles_the_stream_kernels() -> None:
    import os

    import numba

    from stream.partition_models import warm_up
    from stream.trips import _trip_loop

    warm_up()
    if os.environ.get("NUMBA_DISABLE_JIT") != "1":
        assert isinstance(_trip_loop, numba.core.registry.CPUDispatcher)
        assert _trip_loop.signatures


def test_cached_dedupe_and_state_give_way_to_a_restored_table_value() -> None:
    p, t = make(), Tables()
    batches = [tb("car-1", q, NOW - 10**8 + q * 10**6) for q in range(6)]
    t.apply(p.process([(0, b) for b in batches[:3]], t.lookup).writes)
    t.apply(p.process([(0, b) for b in batches[3:]], t.lookup).writes)  # from its own cache
    assert p.process([(0, batches[4])], t.lookup).lines == []  # a resend: dropped
    state_after_6 = json.loads(t.data[(T_STATE, "VIN1")])
    # a takeover and back: the table now holds an older value (equal bytes, another object)
    fresh = make()
    t2 = Tables()
    t2.apply(fresh.process([(0, b) for b in batches[:3]], t2.lookup).writes)
    t.data.update({k: bytes(bytearray(v)) for k, v in t2.data.items()})
    res = p.process([(0, b) for b in batches[3:]], t.lookup)  # seqs 3..5 are new again
    assert len(res.lines) == 30
    t.apply(res.writes)
    assert json.loads(t.data[(T_STATE, "VIN1")])["signals"] == state_after_6["signals"]
    # a dtc entry written by the events agent is merged into the cached state
    t.data[(T_STATE, "VIN1|dtc")] = json.dumps(["P0301"]).encode()
    res = p.process([(0, tb("car-1", 6, NOW - 10**8 + 6 * 10**6))], t.lookup)
    t.apply(res.writes)
    assert json.loads(t.data[(T_STATE, "VIN1")])["active_dtcs"] == ["P0301"]


def test_a_partition_whose_batch_fails_dead_letters_it_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth behind the record checks: a failure in the per-partition stage (the
    detectors, a checkpoint) dead-letters that partition's records instead of stopping the agent."""
    p, t = make(), Tables()
    t0 = NOW - 10_000_000
    real = p.models_for

    def models_for(partition: int, lookup: object) -> object:
        if partition == 1:
            raise OverflowError("a detector overflowed")
        return real(partition, lookup)  # type: ignore[arg-type]

    monkeypatch.setattr(p, "models_for", models_for)
    res = p.process([(0, tb("car-1", 1, t0)), (1, tb("car-2", 1, t0))], t.lookup)
    assert [h["reason"] for _, h in res.dead] == [b"internal_error:OverflowError"]
    assert res.dead[0][0] == tb("car-2", 1, t0)
    assert res.lines and all("device=car-1 " in line for line in res.lines)
    assert {w[0] for w in res.writes} == {0}  # nothing of partition 1 is checkpointed
