"""Two Faust workers share the partitions; one is killed with -9 mid-stream, the other takes over.

InfluxDB must end with exactly the source's samples and values; resends after the takeover are
dropped by the dedupe table the survivor restored from the changelog (one crash alert per crash,
however often it is resent), and the trip kernel state survives (each trip's distance covers the
whole drive, not only the part after the takeover).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.errors import WireError
from core.topics import KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_TELEMETRY, KAFKA_TRIPS
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

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SPEED = "Vehicle.Speed"
RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
DEVICES = [f"so-car-{i}" for i in range(8)]
MOVING_S, STOP_S = 100, 10


def batches(device: int, t0: int) -> list[TelemetryBatch]:
    """One-second batches at 10 Hz: a drive, a stop, and a sample 70 s later closing the trip."""
    out = []
    n = MOVING_S + STOP_S
    for q in range(n + 1):
        ts = t0 + (q if q < n else q + 70) * 1_000_000 + np.arange(10) * 100_000
        moving = q < MOVING_S
        speed = 30.0 + device + (np.arange(10) % 5) * 0.25 if moving else np.zeros(10)
        rpm = np.full(10, 1200.0 + 10 * device if moving else 0.0)
        s = Samples.from_columns(
            [SPEED, RPM], np.r_[np.zeros(10), np.ones(10)], np.r_[ts, ts], np.r_[speed, rpm]
        )
        out.append(TelemetryBatch(DEVICES[device], "boot-1", q, s))
    return out


def influx_values(stack) -> dict[tuple[str, str, int], float]:  # type: ignore[no-untyped-def]
    try:
        series = influx_query(stack, "SELECT * FROM telemetry WHERE device =~ /^so-car-/")
    except AssertionError:
        return {}
    if not series:
        return {}
    cols = series[0]["columns"]
    dev = cols.index("device")
    got = {}
    for row in series[0]["values"]:
        for i, c in enumerate(cols):
            if i not in (0, dev) and row[i] is not None:
                got[(row[dev], c, row[0])] = float(row[i])
    return got


def where(stack, missing: set[tuple[str, int]]) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """The Kafka (partition, offset) of the records whose samples are missing."""
    out = []
    for r in consume(stack, KAFKA_TELEMETRY, lambda r: False, 3):
        try:
            b = decode_telemetry(r.value)
        except WireError:  # other tests' hostile records share the topic
            continue
        second = b.seq if b.seq < MOVING_S + STOP_S else b.seq + 70
        if (b.device_id, second) in missing:
            out.append((r.partition, r.offset))
    return sorted(out)


def test_two_workers_one_killed_lose_nothing_and_dedupe(local_stack, tmp_path: Path) -> None:
    env = worker_env(
        local_stack,
        CARPULSE_STREAM__SESSION_TIMEOUT_S="8",
        CARPULSE_STREAM__CHECKPOINT_INTERVAL_S="0",
        CARPULSE_STREAM__TAKE_WITHIN_S="0.1",
    )
    create_topics(local_stack, [KAFKA_TELEMETRY, KAFKA_EVENTS])
    t0 = (int(time.time()) - 3600) * 1_000_000
    per_device = [batches(i, t0) for i in range(len(DEVICES))]
    expected = {
        (b.device_id, name, ts): v
        for bs in per_device
        for b in bs
        for name, ts, v in b.samples.records()
    }
    half = MOVING_S // 2

    def records(lo: int, hi: int) -> list[tuple[str, bytes, bytes]]:
        return [
            (KAFKA_TELEMETRY, bs[q].device_id.encode(), encode_telemetry(bs[q]))
            for q in range(lo, hi)
            for bs in per_device
        ]

    crashes = [
        (KAFKA_EVENTS, d.encode(), encode_event(Event(d, "boot-1", 10_000, "crash", t0, 0)))
        for d in DEVICES
    ]
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    a = spawn_worker(local_stack, logs[0], env, "info")
    b = spawn_worker(local_stack, logs[1], env, "info")
    try:

        def debug() -> str:
            return "\n".join(f"{p.name}: {p.read_text()[-2500:]}" for p in logs)

        try:
            produce(local_stack, records(0, half) + crashes)
            want_half = 20 * half * len(DEVICES)
            wait_for(lambda: len(influx_values(local_stack)) >= want_half, 60, "first half")
            wait_for(
                lambda: len(consume(local_stack, KAFKA_ALERTS, lambda r: False, 1)) >= 8,
                30,
                "one alert per crash",
            )
        except AssertionError as err:
            raise AssertionError(f"{err}\n{debug()}") from None
        # mid-stream: b dies without a goodbye; the rest and resends of what it had done follow
        produce(local_stack, records(half, half + 10))
        b.send_signal(signal.SIGKILL)
        killed, killed_wall = time.monotonic(), time.time()
        ready_at_kill = logs[0].read_text().count("[^---Recovery]: Worker ready")
        b.wait(10)
        produce(local_stack, records(half - 20, len(per_device[0])) + crashes)
        try:
            wait_for(lambda: influx_values(local_stack) == expected, 90, "every sample once")
        except AssertionError as err:
            got = influx_values(local_stack)
            missing = Counter((d, (ts - t0) // 1_000_000) for d, _, ts in set(expected) - set(got))
            wrong = sum(got.get(k) != v for k, v in expected.items() if k in got)
            summary = f"missing (device, second): {sorted(missing.items())[:20]}; wrong: {wrong}"
            summary += f"; at (partition, offset): {where(local_stack, set(missing))[:20]}"
            # Known, not fixed (BENCHMARKS.md, "Apache Kafka under everything"): the survivor's
            # Faust recovery after the takeover sometimes never finishes, so nobody consumes the
            # dead worker's partitions; nothing is stored wrong or twice. Anything else fails.
            ready = logs[0].read_text().count("[^---Recovery]: Worker ready") - ready_at_kill
            if wrong == 0 and ready == 0 and len(got) <= len(expected):
                pytest.xfail(f"known Faust recovery stall after the takeover: {summary}")
            raise AssertionError(f"{err}\n{summary}\n{debug()}") from None
        caught_up_s = time.monotonic() - killed

        # output topics are shared by the session's tests: keep this one's vehicles
        def ours(records: list) -> list:  # type: ignore[type-arg]
            return [r for r in records if json.loads(r.value).get("vin") in DEVICES]

        trips = ours(consume(local_stack, KAFKA_TRIPS, lambda r: len(ours(r)) >= len(DEVICES), 60))
        alerts = consume(local_stack, KAFKA_ALERTS, lambda r: False, 3)
        assert a.poll() is None, debug()
    finally:
        stop([a, b])
    # the survivor's log says when it had the dead worker's partitions and state
    stamp_re = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.](\d{3})")
    ready = [
        m.groups()
        for line in logs[0].read_text().splitlines()
        if "[^---Recovery]: Worker ready" in line and (m := stamp_re.search(line))
    ]
    assert len(ready) >= 2  # a second assignment after the kill
    stamp = time.mktime(time.strptime(ready[-1][0], "%Y-%m-%d %H:%M:%S"))
    takeover_s = stamp + int(ready[-1][1]) / 1000 - killed_wall
    # holes Faust's rebalance race left in a partition, refilled by seeking back (stream.offsets)
    holes = logs[0].read_text().count("(Faust rebalance race); seeking back")
    figures = {
        "takeover_s": round(takeover_s, 2),
        "caught_up_s": round(caught_up_s, 2),
        "holes_refilled": holes,
    }
    (tmp_path / "takeover.json").write_text(json.dumps(figures))
    print(f"\ntakeover after kill -9 (session timeout 8 s): {figures}")
    alerts = ours(alerts)
    assert len(alerts) == len(DEVICES), [json.loads(r.value)["device"] for r in alerts]
    by_vin = {}
    for r in trips:
        rec = json.loads(r.value)
        by_vin.setdefault(rec["vin"], []).append(rec)
    assert sorted(by_vin) == sorted(DEVICES)
    for i, d in enumerate(DEVICES):
        (trip,) = by_vin[d]
        mean_kmh = 30.0 + i + 0.5
        assert trip["dist_km"] == pytest.approx(mean_kmh * MOVING_S / 3600, rel=0.03), trip
        assert trip["start_us"] == t0
