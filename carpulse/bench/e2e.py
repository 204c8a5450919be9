"""``carpulse bench e2e``: the whole path on this machine against InfluxDB's own ingest ceiling.

Simulated vehicles (the real edge publisher, TLS, QoS 1) -> Mosquitto -> ingest bridge -> Apache
Kafka (KRaft, SASL_SSL) -> Faust worker -> InfluxDB 1.x, all started here on free ports in a
temporary directory.

1. ``influx_ceiling_samples_per_s``: line protocol of the same shape straight to ``/write``, the
   best of batch sizes 5k/10k/20k lines, one writer and two concurrent writers (nothing of ours in
   between but the line generation, done beforehand).
2. ``faust_only_samples_per_s``: telemetry records produced straight into Kafka; the worker alone.
3. ``samples_per_s``: the offered load steps up (x ``--growth``) until InfluxDB visibility lags:
   a step keeps up when the vehicles could publish at >= 90 % of the offered rate and every
   sample is queryable within ``--lag-limit-s`` of the last publish. The figure is the best
   achieved rate of a step that kept up.
4. ``p50_ms``/``p99_ms``: at half that rate, every sample's source timestamp -> the moment an
   InfluxQL poll (every 50 ms) first sees it. Vehicles send a batch every 100 ms, so this
   includes up to 100 ms of edge batching.
5. ``own_cpu_ratio``: CPU time (``/proc``) of carpulse's own processes (bridge + stream worker)
   per sample, over InfluxDB's per sample, measured over the same step: at every step, and at
   the top level for the highest step that kept up. Unlike the throughput ratio, which two
   shared cores bound near 0.27, this carries to a deployment where each part has its machines.

6. ``crm_cpu_us_per_event``: a CRM worker's CPU per CRM event on the same stack, beside the
   rules alone in this process (``carpulse.bench.e2e_crm``); ``--crm-events 0`` leaves it out.

``--runs N`` repeats the whole benchmark on fresh stacks and reports each headline figure's median.

Throughput steps use synthetic past timestamps (one day per step), so steps never mix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from carpulse.stack import stop_processes
from core.argtypes import count
from core.config import CarpulseSettings
from core.errors import StackError
from core.wire import Samples, TelemetryBatch, encode_telemetry
from stream.lines import batch_lines

log = logging.getLogger(__name__)

SIGNALS = tuple(f"Vehicle.Bench.S{i}" for i in range(16))
PER_FRAME = 4  # signals sharing a timestamp, as on a CAN frame
FRAME_US = 1000
DAY_US = 86_400_000_000
BASE_US = 1_600_000_000_000_000  # 2020-09-13: throughput steps live in the past


def synth(
    device: str, seq: int, t0_us: int, n: int, rng: np.random.Generator, boot: str = "bench"
) -> TelemetryBatch:
    """``n`` samples: 16 signals, 4 per frame, frames ``FRAME_US`` apart from ``t0_us``.

    Each phase uses its own ``boot`` id: the worker drops a repeated (device, boot, seq).
    """
    n -= n % PER_FRAME
    frames = n // PER_FRAME
    ts = t0_us + np.repeat(np.arange(frames, dtype=np.int64) * FRAME_US, PER_FRAME)
    sig = (np.arange(n) % len(SIGNALS)).astype(np.int32)
    val = np.round(rng.normal(50, 20, n), 2)
    return TelemetryBatch(device, boot, seq, Samples.from_columns(SIGNALS, sig, ts, val))


class Influx:
    """Sync InfluxQL helper (polling threads) against the stack's InfluxDB 1.x."""

    def __init__(self, url: str, db: str) -> None:
        self.url, self.db = url, db

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"db": db or self.db, "q": q, "epoch": "u"})
        with urllib.request.urlopen(f"{self.url}/query?{params}", timeout=30) as resp:
            doc = json.load(resp)
        result = doc["results"][0]
        if "error" in result:
            raise StackError(f"InfluxQL {q!r}: {result['error']}")
        return result.get("series", [])  # type: ignore[no-any-return]

    def create(self, db: str) -> None:
        params = urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'})
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/query?{params}", method="POST"), timeout=30
        ).close()

    def count(self, t0_us: int, t1_us: int) -> int:
        """Samples visible in ``[t0_us, t1_us)`` (one signal counted, times the signal count)."""
        q = (
            f'SELECT COUNT("{SIGNALS[0]}") FROM telemetry '
            f"WHERE time >= {t0_us}u AND time < {t1_us}u"
        )
        series = self.query(q)
        return int(series[0]["values"][0][1]) * len(SIGNALS) if series else 0

    def wait_count(self, t0_us: int, t1_us: int, want: int, timeout: float) -> float | None:
        """Wall time at which ``want`` samples were visible, or ``None`` on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(t0_us, t1_us) >= want:
                return time.monotonic()
            time.sleep(0.1)
        return None


# ----- 1. InfluxDB's own ceiling ------------------------------------------------------------------
async def _post_all(url: str, bodies: list[bytes], writers: int) -> None:
    queue = list(reversed(bodies))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def writer() -> None:
            while queue:
                body = queue.pop()
                async with session.post(url, data=io.BytesIO(body)) as resp:
                    if resp.status != 204:
                        raise StackError(f"InfluxDB refused a write: {await resp.text()}")

        await asyncio.gather(*(writer() for _ in range(writers)))


def influx_ceiling(influx: Influx, total_lines: int, rng: np.random.Generator) -> dict[str, Any]:
    db = "ceiling"
    influx.create(db)
    url = f"{influx.url}/write?db={db}&precision=u"
    results: dict[str, float] = {}
    run = total_samples = 0
    for size in (5000, 10000, 20000):
        for writers in (1, 2):
            run += 1
            # Fresh series time range per run, lines made beforehand: only InfluxDB is timed.
            lines: list[str] = []
            seq = 0
            while len(lines) < total_lines:
                t0 = BASE_US - run * DAY_US + seq * 10_000 * FRAME_US
                b = synth(f"ceil-v{seq % 8}", seq, t0, 4 * size, rng)
                lines.extend(batch_lines(b, "telemetry"))
                seq += 1
            bodies = [
                ("\n".join(lines[i : i + size]) + "\n").encode() for i in range(0, len(lines), size)
            ]
            t = time.perf_counter()
            asyncio.run(_post_all(url, bodies, writers))
            elapsed = time.perf_counter() - t
            results[f"{size}x{writers}"] = len(lines) * PER_FRAME / elapsed
            total_samples += len(lines) * PER_FRAME
    best = max(results, key=lambda k: results[k])
    return {
        "samples": total_samples,
        "samples_per_s": results[best],
        "best": best,
        "runs": {k: round(v) for k, v in results.items()},
    }


# ----- the pipeline processes --------------------------------------------------------------------
@contextlib.contextmanager
def pipeline(config: Path, log_dir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    from carpulse.stack import pipeline_env

    env = pipeline_env(config, "bench")
    # a few simulated vehicles carry a fleet's load: the per-device limit is not what is measured
    env.setdefault("CARPULSE_BRIDGE__RATE_PER_DEVICE", "100000")
    env.setdefault("CARPULSE_BRIDGE__BURST_PER_DEVICE", "100000")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("bridge", "worker"):
            # CARPULSE_E2E_PROFILE=DIR runs each process under cProfile (DIR/<name>.prof).
            prof = os.environ.get("CARPULSE_E2E_PROFILE")
            wrap = ["-m", "cProfile", "-o", f"{prof}/{name}.prof"] if prof else []
            with open(log_dir / f"{name}.log", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *wrap, "-m", "carpulse", "stream", name],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield procs
    finally:
        stop_processes(procs)


class Fleet:
    """Connected simulated vehicles, each publishing from its own thread on a schedule."""

    def __init__(self, s: CarpulseSettings, vehicles: int) -> None:
        # The benchmark drives the real edge publisher on purpose: it measures the whole path.
        # Imported here only, so that the stream package itself never depends on edge.
        from carpulse.local_files import local_device_mqtt
        from edge.publisher import MqttPublisher

        self.ids = [f"bench-v{i}" for i in range(vehicles)]
        from carpulse.stack import Stack

        Stack(s.stack).provision_devices(self.ids)  # one ACL update for the fleet, not one each
        self.pubs = [MqttPublisher(local_device_mqtt(s, d), "bench", window=64) for d in self.ids]
        for p in self.pubs:
            p.connect(announce=False)
        from core.topics import device_topic

        self.topics = [device_topic(d, "telemetry") for d in self.ids]

    def close(self) -> None:
        for p in self.pubs:
            with contextlib.suppress(Exception):
                p.close()

    def run(self, schedules: list[list[tuple[float, bytes]]]) -> float:
        """Publish ``(offset_s, payload)`` per vehicle; returns the wall time the last PUBACK came."""
        t0 = time.monotonic() + 0.05

        def drive(i: int) -> None:
            pub, topic = self.pubs[i], self.topics[i]
            for offset, payload in schedules[i]:
                delay = t0 + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pub.publish(topic, payload)
            pub.flush()

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(self.pubs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - t0

    def live(
        self, rate: float, seconds: float, period_s: float, rng: np.random.Generator
    ) -> tuple[float, list[tuple[int, int, np.ndarray]]]:
        """Publish current-time samples at ``rate``; returns (duration, [(vehicle, max_ts, ts)])."""
        per_batch = max(PER_FRAME, int(rate * period_s / len(self.pubs)))
        sent: list[tuple[int, int, np.ndarray]] = []
        lock = threading.Lock()
        t0 = time.monotonic() + 0.05

        def drive(i: int) -> None:
            pub, topic = self.pubs[i], self.topics[i]
            seq = 0
            while True:
                due = t0 + (seq + 1) * period_s + i * period_s / len(self.pubs)
                if due - t0 > seconds:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now_us = int(time.time() * 1e6)
                frames = per_batch // PER_FRAME
                step = max(1, int(period_s * 1e6) // frames)
                start = now_us - (frames - 1) * step
                b = synth(self.ids[i], seq, start, per_batch, rng, boot=f"lat-{t0:.0f}")
                # Spread the frames over the last period instead of FRAME_US apart.
                ts = start + np.repeat(np.arange(frames, dtype=np.int64) * step, PER_FRAME)
                # The polled signal S0 sits in the newest frame, so "S0 visible" means "batch visible".
                sig = ((np.arange(len(ts)) - (len(ts) - 1)) % len(SIGNALS)).astype(np.int32)
                b = TelemetryBatch(
                    b.device_id, b.boot_id, seq, Samples(b.samples.names, sig, ts, b.samples.value)
                )
                pub.publish(topic, encode_telemetry(b))
                with lock:
                    sent.append((i, int(ts[-1]), ts))
                seq += 1
            pub.flush()

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(self.pubs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - t0, sent


def step_schedules(
    fleet: Fleet, rate: float, seconds: float, batch: int, day: int, rng: np.random.Generator
) -> tuple[list[list[tuple[float, bytes]]], int, int, int]:
    """Pre-encoded payloads for one step; returns (schedules, samples, t0_us, t1_us)."""
    v = len(fleet.ids)
    per_vehicle = rate * seconds / v
    n_batches = max(1, round(per_vehicle / batch))
    interval = seconds / n_batches
    t0_us = BASE_US + day * DAY_US
    schedules: list[list[tuple[float, bytes]]] = []
    total = 0
    for i, dev in enumerate(fleet.ids):
        sched = []
        for j in range(n_batches):
            start = t0_us + (i * n_batches + j) * batch * FRAME_US
            b = synth(dev, j, start, batch, rng, boot=f"step-{day}")
            total += len(b.samples)
            sched.append((j * interval + i * interval / v, encode_telemetry(b)))
        schedules.append(sched)
    return schedules, total, t0_us, t0_us + DAY_US


def own_cpu(per_sample: dict[str, float]) -> dict[str, Any]:
    """A step's CPU per sample of each process, and carpulse's own (bridge + stream worker)
    against InfluxDB's for the same samples: ``own_cpu_ratio`` (issue 22's aim: <= 0.5)."""
    own = per_sample.get("bridge", 0.0) + per_sample.get("worker", 0.0)
    influx = per_sample.get("influxdb", 0.0)
    return {
        "cpu_us_per_sample": per_sample,
        "own_cpu_us_per_sample": round(own, 3),
        "own_cpu_ratio": round(own / influx, 3) if influx > 0 else None,
    }


class CpuMeter:
    """CPU seconds of each pipeline process (``/proc``), to see where a step's time went."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[name] = (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
        return out

    def per_sample_us(self, before: dict[str, float], samples: int) -> dict[str, float]:
        after = self.snapshot()
        return {
            k: round((after[k] - before.get(k, 0.0)) * 1e6 / max(1, samples), 3)
            for k in after
            if k in before
        }


# ----- the benchmark -----------------------------------------------------------------------------
def bench_e2e(argv: list[str]) -> dict[str, Any]:
    """Sustained end-to-end rate, InfluxDB's ceiling, the worker alone, and latency at half rate."""
    ap = argparse.ArgumentParser(prog="carpulse bench e2e")
    ap.add_argument("--vehicles", type=count(), default=8)
    ap.add_argument("--batch-samples", type=count(), default=2000, help="samples per MQTT message")
    ap.add_argument("--start-rate", type=float, default=20_000.0, help="first offered samples/s")
    ap.add_argument("--growth", type=float, default=1.5)
    ap.add_argument("--max-steps", type=count(), default=12)  # stops at the first step that lags
    ap.add_argument("--step-seconds", type=float, default=8.0)
    ap.add_argument("--lag-limit-s", type=float, default=1.0)
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument(
        "--latency-rate", type=float, default=None, help="default: half the sustained rate"
    )
    ap.add_argument("--ceiling-lines", type=count(), default=200_000)
    ap.add_argument("--faust-only-samples", type=count(), default=1_000_000)
    ap.add_argument(
        "--crm-events", type=count(0), default=2000, help="CRM phase's records (0: no CRM phase)"
    )
    ap.add_argument("--crm-vehicles", type=count(), default=200, help="cars seeded in its CRM")
    ap.add_argument(
        "--crm-db", default=None, help="PostgreSQL server URL for the CRM phase (default SQLite)"
    )
    ap.add_argument("--keep", type=Path, default=None, help="keep the stack and logs in this dir")
    ap.add_argument(
        "--runs", type=count(), default=1, help="whole runs (fresh stack each); figures are medians"
    )
    args = ap.parse_args(argv)
    runs = []
    for i in range(args.runs):
        if args.keep is not None:
            root = args.keep / f"run-{i + 1}" if args.runs > 1 else args.keep
            root.mkdir(parents=True, exist_ok=True)
            runs.append(_run(args, root))
            continue
        with tempfile.TemporaryDirectory(prefix="carpulse-e2e-") as tmp:
            runs.append(_run(args, Path(tmp)))
        log.info("run %d of %d: own_cpu_ratio %s", i + 1, args.runs, runs[-1]["own_cpu_ratio"])
    return runs[0] if args.runs == 1 else medians(runs)


MEDIAN_KEYS = (
    "samples_per_s",
    "influx_ceiling_samples_per_s",
    "ratio",
    "p50_ms",
    "p99_ms",
    "faust_only_samples_per_s",
    "own_cpu_ratio",
    "own_cpu_us_per_sample",
    "influx_cpu_us_per_sample",
    "bridge_cpu_us_per_sample",
    "worker_cpu_us_per_sample",
    "crm_cpu_us_per_event",
    "crm_events_per_s",
    "crm_overhead_ratio",
)


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each headline figure's median over whole runs, with every run kept beside it."""
    out: dict[str, Any] = {}
    for key in MEDIAN_KEYS:
        vals = [r[key] for r in runs if r.get(key) is not None]
        out[key] = float(np.median(vals)) if vals else None
    out["runs"] = runs
    return out


def headline_cpu(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU figures of the highest step that kept up (the first step when none did)."""
    kept = [s for s in steps if s["kept_up"]]
    step = kept[-1] if kept else steps[0]
    per = step["cpu_us_per_sample"]
    return {
        "own_cpu_ratio": step["own_cpu_ratio"],
        "own_cpu_us_per_sample": step["own_cpu_us_per_sample"],
        "influx_cpu_us_per_sample": per.get("influxdb"),
        "bridge_cpu_us_per_sample": per.get("bridge"),
        "worker_cpu_us_per_sample": per.get("worker"),
        "own_cpu_step_offered": step["offered"],
    }


def _run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from carpulse.stack import throwaway_stack
    from core.config import load_settings

    rng = np.random.default_rng(7)
    # down again when it fails to come up, too: a failed start leaves no broker running
    with throwaway_stack(root / "stack") as stack:
        s = load_settings(stack.config_file)
        influx = Influx(s.influx.url, s.influx.database)
        cpu = CpuMeter({st.name: st.pid for st in stack.status() if st.pid})
        before = cpu.snapshot()
        ceiling = influx_ceiling(influx, args.ceiling_lines, rng)
        ceiling["cpu_us_per_sample"] = cpu.per_sample_us(before, ceiling.pop("samples"))
        log.info("InfluxDB ceiling: %s", ceiling)
        influx.create(s.influx.database)
        with pipeline(stack.config_file, root) as procs:
            cpu.pids.update(bridge=procs[0].pid, worker=procs[1].pid, vehicles=os.getpid())
            fleet = Fleet(s, args.vehicles)
            try:
                ready = _warm_up(fleet, influx, rng, procs)
                log.info("pipeline ready after %.1fs", ready)
                before = cpu.snapshot()
                faust_only, n_only = _faust_only(s, influx, args.faust_only_samples, rng)
                faust_cpu = cpu.per_sample_us(before, n_only)
                log.info("faust only: %.0f samples/s, CPU us/sample %s", faust_only, faust_cpu)
                steps, sustained = _steps(fleet, influx, args, rng, cpu)
                lat_rate = args.latency_rate or sustained / 2
                p50, p99, lat_rate = _latency(fleet, influx, lat_rate, args, rng)
            finally:
                fleet.close()
        crm: dict[str, Any] = {}
        if args.crm_events > 0:  # after the telemetry phases: the CRM worker has the CPU alone
            from carpulse.bench.e2e_crm import crm_phase

            crm = crm_phase(
                s, stack.config_file, root, args.crm_events, args.crm_vehicles,
                lambda pid: CpuMeter({"crm": pid}).snapshot()["crm"], args.crm_db,
            )  # fmt: skip
            log.info("CRM phase: %s", crm)
    ceil = ceiling["samples_per_s"]
    return {
        "samples_per_s": round(sustained),
        "influx_ceiling_samples_per_s": round(ceil),
        "ratio": round(sustained / ceil, 3) if ceil else None,
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "faust_only_samples_per_s": round(faust_only),
        "faust_only_ratio": round(faust_only / ceil, 3) if ceil else None,
        "faust_only_cpu_us_per_sample": faust_cpu,
        "latency_rate_samples_per_s": round(lat_rate),
        "ceiling": ceiling,
        **headline_cpu(steps),
        "steps": steps,
        **crm,
        "worker_ready_s": round(ready, 1),
        "vehicles": args.vehicles,
        "batch_samples": args.batch_samples,
    }


def _warm_up(fleet: Fleet, influx: Influx, rng: np.random.Generator, procs: list[Any]) -> float:
    """Publish one batch and wait until it is queryable (Faust takes a while to join its group)."""
    t = time.monotonic()
    t0_us = BASE_US - 50 * DAY_US
    b = synth(fleet.ids[0], 0, t0_us, 400, rng, boot="warm-up")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        # Republished until seen: before the bridge has subscribed, the broker drops it. Same
        # points each time, so the repeats cost nothing.
        fleet.run([[(0.0, encode_telemetry(b))]] + [[] for _ in fleet.ids[1:]])
        if influx.wait_count(t0_us, t0_us + DAY_US, len(b.samples), 3) is not None:
            return time.monotonic() - t
    dead = [p.args for p in procs if p.poll() is not None]
    raise StackError(f"the pipeline did not deliver a warm-up batch in 180 s (exited: {dead})")


def _faust_only(
    s: CarpulseSettings, influx: Influx, total: int, rng: np.random.Generator
) -> tuple[float, int]:
    """Records straight into the telemetry topic: the worker and InfluxDB alone."""
    from aiokafka import AIOKafkaProducer

    from core.topics import KAFKA_TELEMETRY

    t0_us = BASE_US - 40 * DAY_US
    batch = 5000
    payloads = []
    for j in range(max(1, total // batch)):
        dev = f"bench-k{j % 8}"
        b = synth(dev, j, t0_us + j * batch * FRAME_US, batch, rng, boot="faust-only")
        payloads.append((dev.encode(), encode_telemetry(b)))
    n = len(payloads) * batch

    async def produce() -> float:
        producer = AIOKafkaProducer(
            **s.kafka.client_options(), acks="all", max_request_size=16 * 1024 * 1024
        )
        await producer.start()
        try:
            t = time.monotonic()
            futs = [await producer.send(KAFKA_TELEMETRY, v, key=k) for k, v in payloads]
            await asyncio.gather(*futs)
            return t
        finally:
            await producer.stop()

    t_start = asyncio.run(produce())
    # Cheap polls (the newest record's range only) until it shows, then count everything: a
    # COUNT over millions of points every 100 ms would take InfluxDB's CPU from the writes.
    last0 = t0_us + (len(payloads) - 1) * batch * FRAME_US
    q = f'SELECT LAST("{SIGNALS[0]}") FROM telemetry WHERE time >= {last0}u AND time < {t0_us + DAY_US}u'
    deadline = time.monotonic() + 300
    while not influx.query(q) and time.monotonic() < deadline:
        time.sleep(0.05)
    done = influx.wait_count(t0_us, t0_us + DAY_US, n, max(1.0, deadline - time.monotonic()))
    if done is None:
        raise StackError(f"faust-only: {n} samples not visible within 300 s")
    return n / (done - t_start), n


def _steps(
    fleet: Fleet,
    influx: Influx,
    args: argparse.Namespace,
    rng: np.random.Generator,
    cpu: CpuMeter,
) -> tuple[list[dict[str, Any]], float]:
    steps: list[dict[str, Any]] = []
    sustained = 0.0
    rate = args.start_rate
    for k in range(args.max_steps):
        schedules, total, t0_us, t1_us = step_schedules(
            fleet, rate, args.step_seconds, args.batch_samples, k, rng
        )
        start = time.monotonic()
        before = cpu.snapshot()
        duration = fleet.run(schedules)
        published = time.monotonic()
        done = influx.wait_count(t0_us, t1_us, total, args.lag_limit_s + 0.5)
        if done is None:  # drain the backlog before the next phase, and say how long it took
            done = influx.wait_count(t0_us, t1_us, total, 300)
        lag = (done - published) if done is not None else float("inf")
        achieved = total / duration
        kept_up = achieved >= 0.9 * rate and lag <= args.lag_limit_s
        steps.append(
            {
                "offered": round(rate),
                "achieved": round(achieved),
                "lag_s": round(lag, 2),
                "end_to_end_s": round((done or published) - start, 2),
                "kept_up": kept_up,
                **own_cpu(cpu.per_sample_us(before, total)),
            }
        )
        log.info("step %d: %s", k, steps[-1])
        if not kept_up:
            break
        sustained = max(sustained, achieved)
        rate *= args.growth
    return steps, sustained


def _latency(
    fleet: Fleet,
    influx: Influx,
    rate: float,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """Per-sample source timestamp -> first InfluxQL poll that sees it, in ms."""
    rate = max(rate, 1000.0)
    seen: list[tuple[int, dict[str, int]]] = []  # (poll wall time us, device -> last ts)
    stop = threading.Event()
    since_us = int(time.time() * 1e6) - 1_000_000

    def poll() -> None:
        while not stop.is_set():
            # A sliding 5 s window keeps each poll cheap (LAST scans the range it is given).
            since = max(since_us, int(time.time() * 1e6) - 5_000_000)
            q = f'SELECT LAST("{SIGNALS[0]}") FROM telemetry WHERE time >= {since}u GROUP BY device'
            try:
                series = influx.query(q)
            except OSError:
                continue
            now_us = int(time.time() * 1e6)
            seen.append((now_us, {x["tags"]["device"]: x["values"][0][0] for x in series}))
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        _, sent = fleet.live(rate, args.latency_seconds, 0.1, rng)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            last = seen[-1][1] if seen else {}
            if all(last.get(fleet.ids[i], 0) >= mx for i, mx, _ in sent):
                break
            time.sleep(0.1)
    finally:
        stop.set()
        poller.join()
    latencies: list[np.ndarray] = []
    for i, mx, ts in sent:
        dev = fleet.ids[i]
        visible = next((t for t, last in seen if last.get(dev, 0) >= mx), None)
        if visible is None:
            raise StackError(f"latency: a batch of {dev} never became visible")
        latencies.append((visible - ts) / 1000.0)
    lat = np.concatenate(latencies)
    # Edge-side sampling uses the same clock; a poll can precede the batch's newest sample's
    # wall time only by clock granularity, hence the clip.
    lat = np.clip(lat, 0, None)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), rate
