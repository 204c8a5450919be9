"""``carpulse bench e2e``'s CRM phase: the CRM worker's CPU per CRM event, beside the rules alone.

On the benchmark's stack, a CRM worker (``carpulse crm worker``, SQLite, the shipped rules) takes
``--crm-events`` records from the four topics it consumes, in a fixed mix of what a fleet sends
(``CRM_MIX``: service-due predictions, anomalies, DTCs, gate plates, crashes), one CRM event per
record. Its CPU (``/proc``) over that phase, divided by the events its ``/metrics`` counted, is
``crm_cpu_us_per_event``. The baseline, measured in the same run on a second database seeded the
same way, is the same records through ``crm.agents.handle_record`` in this process: the rules
and their transactions without Kafka and Faust. ``crm_overhead_ratio`` is the worker's figure
over it: what the stream around the rules costs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from carpulse.stack import free_port, pipeline_env, stop_processes
from core.config import CarpulseSettings
from core.errors import StackError
from core.topics import KAFKA_ALERTS, KAFKA_ANOMALIES, KAFKA_EVENTS, KAFKA_PREDICTIONS
from core.wire import Event, encode_event

log = logging.getLogger(__name__)

GATE = "bench-gate"
# (kind, share in %): what a dealer's CRM sees most are predictions; crashes are rare but costly
CRM_MIX = (("service_due", 40), ("anomaly", 20), ("dtc", 15), ("gate", 15), ("crash", 10))
DTC_CODES = ("P0301", "P0420", "P0171", "P0128", "U0100", "B0001", "C0035", "P0700")
ECT = "Vehicle.Powertrain.CombustionEngine.ECT"
START_US = 1_767_225_600_000_000  # 2026-01-01: after the seeded ownerships began

Record = tuple[str, bytes, bytes]  # (topic, key, value)


def crm_records(
    vins: list[str], devices: list[str], plates: list[str], n: int, seed: int = 11
) -> list[Record]:
    """``n`` Kafka records of ``CRM_MIX``, each one CRM event, spread over the seeded fleet."""
    rng = np.random.default_rng(seed)
    kinds = [k for k, share in CRM_MIX for _ in range(share)]
    out: list[Record] = []
    for i in range(n):
        kind = kinds[int(rng.integers(len(kinds)))]
        car = int(rng.integers(len(vins)))
        vin, device = vins[car], devices[car]
        ts = START_US + i * 60_000_000  # a minute apart: every event is a new one
        if kind == "service_due":
            doc: dict[str, Any] = {
                "vin": vin, "kind": "service_due", "ts_us": ts,
                "days": float(rng.uniform(1, 200)), "km": 30_000.0,
                "odo": float(rng.uniform(20_000, 30_000)), "cycle": f"c{i // 50}",
            }  # fmt: skip
            out.append((KAFKA_PREDICTIONS, vin.encode(), json.dumps(doc).encode()))
        elif kind == "anomaly":
            win = [ts - k * 1_000_000 for k in range(16, 0, -1)]
            doc = {
                "vin": vin, "signal": ECT, "ts_us": ts, "value": 118.5, "score": 0.999,
                "threshold": 0.99, "detector": "bench",
                "window": {"ts_us": win, "values": [90.0 + k for k in range(16)]},
            }  # fmt: skip
            out.append((KAFKA_ANOMALIES, vin.encode(), json.dumps(doc).encode()))
        elif kind == "dtc":
            code = DTC_CODES[int(rng.integers(len(DTC_CODES)))]
            ev = Event(device, "bench-crm", i, "dtc", ts, 5, {"codes": [code]})
            out.append((KAFKA_EVENTS, device.encode(), encode_event(ev)))
        elif kind == "gate":
            data = {"plate": plates[car], "camera": "gate-1", "confidence": 0.93}
            ev = Event(GATE, "bench-crm", i, "gate.plate", ts, 5, data)
            out.append((KAFKA_EVENTS, GATE.encode(), encode_event(ev)))
        else:
            doc = {
                "kind": "crash", "vin": vin, "device": device, "ts_us": ts,
                "location": {"lat": 31.23, "lon": 121.47, "ts_us": ts},
                "data": {"trigger": "airbag"},
            }  # fmt: skip
            out.append((KAFKA_ALERTS, vin.encode(), json.dumps(doc).encode()))
    return out


def seeded_store(url: str, vehicles: int) -> tuple[Any, list[str], list[str], list[str]]:
    """A migrated CRM with ``vehicles`` cars, owners and plates (``crm.demo.seed_demo``);
    (store, VINs, device ids, plates)."""
    from crm import store as st
    from crm.demo import demo_devices, seed_demo
    from crm.migrate import migrate

    store = st.CrmStore.from_url(url)
    migrate(store.engine)
    devices = [f"bench-crm-{d}" for d in demo_devices(vehicles)]
    vins = seed_demo(store, vehicles, devices=devices)
    plates = [f"沪D{i:05d}" for i in range(vehicles)]  # seed_demo's plates
    return store, vins, devices, plates


def engine_alone(url: str, records: list[Record], vehicles: int) -> dict[str, Any]:
    """The baseline: the records through ``handle_record`` here, no Kafka, no Faust."""
    from crm.agents import handle_record
    from crm.engine import RuleEngine
    from crm.rules import shipped_rules

    store, *_ = seeded_store(url, vehicles)
    engine = RuleEngine(shipped_rules(), webhook_url=None)
    stats: Counter[str] = Counter()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for topic, _key, value in records:
        handle_record(store, engine, topic, value, stats, frozenset({GATE}))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    store.engine.dispose()
    events = max(1, stats["events"])
    return {
        "events": stats["events"],
        "fired": stats["fired"],
        "parked": stats["parked"],
        "cpu_us_per_event": round(cpu * 1e6 / events, 1),
        "events_per_s": round(events / wall, 1),
    }


def metric(port: int, name: str) -> float | None:
    """One unlabelled sample of the worker's ``/metrics``, or ``None`` while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _produce(s: CarpulseSettings, records: list[Record]) -> None:
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(**s.kafka.client_options(), acks="all")
        await producer.start()
        try:
            futs = [await producer.send(t, v, key=k) for t, k, v in records]
            await asyncio.gather(*futs)
        finally:
            await producer.stop()

    asyncio.run(run())


def _wait_events(port: int, want: float, timeout: float, proc: subprocess.Popen[bytes]) -> float:
    """Wall time at which the worker had handled ``want`` CRM events in all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the CRM worker exited with {proc.returncode} (see crm.log)")
        got = metric(port, "carpulse_crm_events_total")
        if got is not None and got >= want:
            return time.monotonic()
        time.sleep(0.05)
    raise StackError(f"the CRM worker did not handle {want:.0f} events in {timeout:.0f} s")


def crm_phase(
    s: CarpulseSettings,
    config: Path,
    root: Path,
    n: int,
    vehicles: int,
    cpu_of: Any,
    db: str | None = None,
) -> dict[str, Any]:
    """Run the phase; ``cpu_of(pid)`` is the process's CPU seconds so far (``CpuMeter``);
    ``db``: a PostgreSQL server's URL, on which both CRMs get a fresh database (default SQLite
    files in ``root``)."""
    from carpulse.bench.crm import fresh_url
    from stream.bridge import ensure_topics

    topics = [KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_ANOMALIES]
    asyncio.run(ensure_topics(s.kafka, s.kafka.partitions, s.kafka.replication, topics))
    (root / "worker").mkdir(exist_ok=True)
    (root / "alone").mkdir(exist_ok=True)
    url, alone_url = fresh_url(db, root / "worker"), fresh_url(db, root / "alone")
    store, vins, devices, plates = seeded_store(url, vehicles)
    store.engine.dispose()
    warm = crm_records(vins, devices, plates, 20, seed=5)
    records = crm_records(vins, devices, plates, n)
    base = engine_alone(alone_url, records, vehicles)
    port = free_port()
    env = pipeline_env(
        config, "bench",
        CARPULSE_METRICS__CRM_PORT=str(port),
        CARPULSE_STREAM__GATE_DEVICES=json.dumps([GATE]),
        CARPULSE_STREAM__SESSION_TIMEOUT_S="6",  # the group forms in seconds, not 30 s
    )  # fmt: skip
    cmd = [sys.executable, "-m", "carpulse", "crm", "worker", "--db", url, "--interval", "3600"]
    with open(root / "crm.log", "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        t = time.monotonic()
        _produce(s, warm)  # the group joins and reads these first: not timed
        _wait_events(port, len(warm), 180, proc)
        log.info("CRM worker ready after %.1fs", time.monotonic() - t)
        time.sleep(1.0)  # its first commits and privacy sync settle
        before = cpu_of(proc.pid)
        counted = metric(port, "carpulse_crm_events_total") or 0.0
        t0 = time.monotonic()
        _produce(s, records)
        done = _wait_events(port, counted + len(records), 300, proc)
        cpu = cpu_of(proc.pid) - before
        parked = metric(port, "carpulse_crm_events_parked_total")
    finally:
        stop_processes([proc])
    per_event = cpu * 1e6 / len(records)
    return {
        "crm_events": len(records),
        "crm_mix": dict(CRM_MIX),
        "crm_cpu_us_per_event": round(per_event, 1),
        "crm_events_per_s": round(len(records) / (done - t0), 1),
        "crm_parked": parked,  # 0: every event's car, owner and plate is known
        "crm_engine_alone": base,
        "crm_overhead_ratio": round(per_event / base["cpu_us_per_event"], 3)
        if base["cpu_us_per_event"]
        else None,
        "crm_worker_pid_cpu_s": round(cpu, 2),
        "crm_vehicles": vehicles,
        "crm_database": url.split(":", 1)[0],
    }
