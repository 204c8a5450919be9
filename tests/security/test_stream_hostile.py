"""The real Faust worker fed hostile records straight from Kafka (what a bridge of another
version, or any producer with the bridge's rights, could write): each is dead-lettered with its
reason, the worker stays up, and the partition goes on to the legitimate records after them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from core.errors import WireError
from core.topics import KAFKA_ALERTS, KAFKA_DEADLETTER, KAFKA_EVENTS, KAFKA_TELEMETRY
from core.wire import (
    Event,
    Samples,
    TelemetryBatch,
    decode_telemetry,
    encode_event,
    encode_telemetry,
)
from tests.integration.helpers import influx_query, wait_for
from tests.integration.stream_util import (
    consume,
    create_topics,
    produce,
    spawn_worker,
    stop,
    worker_env,
)
from tests.security import hostile

pytestmark = [pytest.mark.security, pytest.mark.integration]

CAR, GATE, VIN = "sec-stream-car", "sec-stream-gate", "VINSECSTREAM00001"


def _count(stack: object) -> int:
    try:
        series = influx_query(stack, f"SELECT COUNT(*) FROM telemetry WHERE device='{CAR}'")  # type: ignore[arg-type]
    except AssertionError:  # no database before the worker's first write
        return 0
    return int(sum(v or 0 for v in series[0]["values"][0][1:])) if series else 0


def _rebadge(payload: bytes) -> bytes:
    """One of the shared hostile payloads, sent as this test's car."""
    if payload.startswith(b"{"):
        doc = json.loads(payload)
        doc["device_id"] = CAR
        return json.dumps(doc).encode()
    if payload.startswith(b"CPW"):
        try:
            return hostile.pack({**hostile.body_of(payload), "d": CAR})
        except (ValueError, msgpack.ExtraData):  # not msgpack inside (12 MiB of zeros)
            return payload
    body = msgpack.unpackb(payload[4:], raw=False)
    return payload[:4] + msgpack.packb({**body, "d": CAR}, use_bin_type=True)


def _refused(payload: bytes) -> bool:
    try:
        decode_telemetry(payload)
    except WireError:
        return True
    return False  # e.g. a value of 10**30: a finite float, so a sample like any other


def test_worker_dead_letters_hostile_records_and_keeps_going(local_stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = tmp_path / "registry.json"
    reg.write_text(
        json.dumps([{"device_id": CAR, "vin": VIN}, {"device_id": GATE, "role": "gate"}])
    )
    env = worker_env(local_stack, CARPULSE_STREAM__REGISTRY=str(reg))
    create_topics(local_stack, [KAFKA_TELEMETRY, KAFKA_EVENTS, KAFKA_DEADLETTER])
    now = int(time.time() * 1e6)
    started_ms = now // 1000
    good = [
        TelemetryBatch(CAR, "boot", q, Samples.from_columns(
            ["Vehicle.Speed"], np.zeros(10), now - 60_000_000 + q * 1_000_000 + np.arange(10),
            np.full(10, 30.0 + q)))
        for q in range(10)
    ]  # fmt: skip
    evil = [_rebadge(p) for p in [*hostile.ISSUE_TELEMETRY, *hostile.bombs()]]
    evil = [p for p in evil if _refused(p)]
    # hostile records between good ones, all in the car's partition (same key)
    telemetry = (
        [encode_telemetry(b) for b in good[:5]] + evil + [encode_telemetry(b) for b in good[5:]]
    )
    key = CAR.encode()
    events = [_rebadge(p) for p in hostile.ISSUE_EVENTS] + [
        encode_event(Event(GATE, "g", 1, "gate.plate", now, 3, {"plate": "沪A12345"})),
        encode_event(Event(CAR, "boot", 99, "crash", now, 0, {"peak_g": 7.5})),
    ]
    worker = spawn_worker(local_stack, tmp_path / "worker.log", env)
    try:
        produce(local_stack, [(KAFKA_TELEMETRY, key, v) for v in telemetry])
        produce(local_stack, [(KAFKA_EVENTS, key, v) for v in events])
        try:
            wait_for(lambda: worker.poll() is not None or _count(local_stack) == 100, 180,
                     "the good samples in InfluxDB")  # fmt: skip
            assert worker.poll() is None, "the worker died"
            alerts = consume(local_stack, KAFKA_ALERTS,
                             lambda rs: any(json.loads(r.value).get("vin") == VIN for r in rs), 30)  # fmt: skip
        except AssertionError:
            raise AssertionError((tmp_path / "worker.log").read_text()[-4000:]) from None
        dead = consume(local_stack, KAFKA_DEADLETTER, lambda rs: False, 5)
        assert worker.poll() is None, "the worker died"
    finally:
        stop([worker])
    mine = [json.loads(r.value) for r in alerts if json.loads(r.value).get("vin") == VIN]
    assert [a["data"] for a in mine] == [{"peak_g": 7.5}]  # the one legitimate crash
    reasons = [dict(r.headers)["reason"].decode() for r in dead if r.timestamp >= started_ms]
    assert not [r for r in reasons if r.startswith("internal_error")], reasons
    for reason in ("bad_timestamp", "bad_seq", "bad_boot_id", "bad_compression", "bad_text",
                   "not_a_gate", "bad_dtc"):  # fmt: skip
        assert reason in reasons, (reason, sorted(set(reasons)))
    assert _count(local_stack) == 100  # nothing of the hostile records reached InfluxDB
