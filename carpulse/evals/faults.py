"""``carpulse eval faults``: one fault per scenario, mid-stream, then InfluxDB against the source.

The real path: edge agents (``carpulse edge run``, a tick source, the durable queue) -> Mosquitto
(TLS, device certificates) -> two ingest bridges -> Apache Kafka (KRaft) -> two Faust workers ->
InfluxDB 1.x, plus the CRM worker. Each scenario gets fresh vehicle ids, starts its agents, waits
until every vehicle is visible in InfluxDB, injects its fault, keeps the agents running until
every vehicle delivers again, stops them (a clean stop drains the queue), waits until InfluxDB
holds what the agents accepted, and compares sample by sample (``carpulse.faults_probe``).

Scenarios (``--scenarios`` picks some, in this order):

================== ============================================================================
kafka-restart      the single broker stopped (SIGTERM) and restarted after ``--down-s``
worker-kill        kill -9 of one of two Faust workers (restarted after recovery)
bridge-kill        kill -9 of one of two ingest bridges (restarted after ``--down-s``)
mosquitto-restart  Mosquitto stopped and restarted after ``--down-s``
influx-outage      InfluxDB stopped for ``--outage-s``
edge-kill          kill -9 of one vehicle's agent ``--kills`` times at random moments
kafka-leader       3 brokers: kill -9 of the node leading most telemetry partitions
kafka-controller   3 brokers: kill -9 of the active KRaft controller
================== ============================================================================

Every scenario also sends ``--crashes`` crash events (each twice, as an edge resends) from a
crash-only device, half before and half after the fault; the CRM must end with exactly one
crash inbox card per crash. ``recovery_s`` is the time from the fault (a kill) or from the end
of an outage (a restart) until every vehicle's samples stamped after that moment are visible in
InfluxDB; it includes the edge batching (``--batch-s``) and, for an edge kill, the agent's start.
There is one vehicle per Kafka partition (``--vehicles``, default 4), so whichever worker or
broker is hit carries some vehicle. ``drain_s``: from the agents' clean stop until InfluxDB held
every accepted sample; ``late``: samples missing when the scenario ended that arrived before the
rig was stopped (``lost`` is what is still missing then); ``kafka.repeats``: resent records the
worker's dedupe had to drop.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from carpulse.faults_probe import (
    Progress,
    Tally,
    accepted_samples,
    compare,
    source_samples,
)
from carpulse.faults_rig import CrashSender, Rig, Vehicle, wait_until
from core.argtypes import count
from core.errors import StackError

SINGLE = (
    "kafka-restart",
    "worker-kill",
    "bridge-kill",
    "mosquitto-restart",
    "influx-outage",
    "edge-kill",
)
TRIPLE = ("kafka-leader", "kafka-controller")
SCENARIOS = SINGLE + TRIPLE
CODES = {
    "kafka-restart": "kr",
    "worker-kill": "wk",
    "bridge-kill": "bk",
    "mosquitto-restart": "mr",
    "influx-outage": "io",
    "edge-kill": "ek",
    "kafka-leader": "kl",
    "kafka-controller": "kc",
}
WINDOW_NOTE = (
    "samples the tick source had produced that were still being batched in the agent's memory "
    "when it was killed (never accepted into the durable queue, so never promised)"
)
KAFKA_NOTE = (
    "kafka.records: the scenario's telemetry records in Kafka; kafka.repeats: records repeating "
    "a (device, boot, seq) already there (an agent resent a row it had no PUBACK for, or a "
    "bridge a message it had no Kafka ack for); the worker's dedupe must drop them; with samples "
    "lost: kafka.lost_in_kafka, how many of them Kafka holds (the stream lost them; the rest never "
    "reached Kafka), and kafka.lost_records, the records holding them"
)
DUPLICATES_NOTE = (
    "points InfluxDB acknowledged for the scenario (its writePointsOk counters; one point per "
    "sample) minus the distinct points it holds: samples the stream wrote more than once. "
    "worker-kill may have some: a worker killed between a micro-batch's InfluxDB write and its "
    "dedupe state (or offset commit) reaching Kafka has that batch written again by the next "
    "owner of its partitions (at least once into an idempotent sink: InfluxDB keeps one point "
    "per series and time, so what it stores stays exact); every other scenario must have none"
)
#: scenarios where a re-written micro-batch is the design (DUPLICATES_NOTE), not a fault
REWRITES_ALLOWED = frozenset({"worker-kill"})


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def device_ids(prefix: str, n: int, partitions: int) -> list[str]:
    """``n`` device ids whose Kafka partitions (the bridge keys records by device id, default
    partitioner) go round the ``partitions``: with n >= partitions every partition carries a
    vehicle, so whichever worker or broker a fault hits, some vehicle depends on it."""
    from aiokafka.partitioner import murmur2

    out: list[str] = []
    i = 0
    while len(out) < n:
        want = len(out) % partitions
        d = f"{prefix}v{i}"
        if (murmur2(d.encode()) & 0x7FFFFFFF) % partitions == want:
            out.append(d)
        i += 1
    return out


class Scenario:
    """One scenario on a rig: its vehicles, its crash device, the fault, the comparison."""

    def __init__(self, rig: Rig, name: str, run_id: str, args: argparse.Namespace) -> None:
        self.rig, self.name, self.args = rig, name, args
        self.run_prefix = f"f{run_id}-"  # every vehicle of this evaluation
        self.prefix = f"{self.run_prefix}{CODES[name]}-"
        assert rig.settings is not None
        ids = device_ids(self.prefix, args.vehicles, rig.settings.kafka.partitions)
        self.vehicles = [
            Vehicle(
                rig,
                d,
                signals=args.signals,
                hz=args.hz,
                batch_s=args.batch_s,
                kernels_dir=args.kernels_dir,
            )
            for d in ids
        ]
        self.info: dict[str, Any] = {}
        self.recovery: list[float] = []

    @property
    def devices(self) -> list[str]:
        return [v.device_id for v in self.vehicles]

    def run(self) -> dict[str, Any]:
        rig, args = self.rig, self.args
        rig.check_alive()
        # Writes and points over every vehicle of the run: a late write of an earlier scenario
        # lands in this window as a point, not as a duplicate.
        window0 = (
            rig.writes.read(),
            rig.influx.count(self.run_prefix),
            rig.influx.status_points(),
        )
        crash = CrashSender(rig, f"{self.prefix}c")
        t_start = time.monotonic()
        try:
            with Progress(rig.influx, self.prefix, "Vehicle.Eval.Tick0") as progress:
                self.progress = progress
                for v in self.vehicles:
                    v.start()
                wait_until(
                    lambda: (
                        set(rig.influx.last_per_device(self.prefix, "Vehicle.Eval.Tick0"))
                        >= set(self.devices)
                    ),
                    args.ready_timeout_s,
                    "every vehicle in InfluxDB",
                )
                crash.send(args.crashes // 2)
                time.sleep(args.lead_s)
                getattr(self, "fault_" + self.name.replace("-", "_"))()
                crash.send(args.crashes - args.crashes // 2)
                time.sleep(args.tail_s)
                for v in self.vehicles:
                    v.stop()
        finally:
            for v in self.vehicles:
                if v.proc is not None and v.proc.poll() is None:
                    v.proc.kill()
                    v.proc.wait(30)
            crash.close()
        self.stopped = time.monotonic()
        out = self.settle(window0, crash, time.monotonic() - t_start)
        rig.check_alive()
        return out

    # ----- waiting and counting ----------------------------------------------------------------
    def wait_recovered(self, since: float, devices: list[str] | None = None) -> float | None:
        """Seconds from ``since`` (wall time) until every vehicle's newer samples are visible;
        ``None`` after ``--recovery-timeout-s`` (the scenario goes on: the component comes
        back, the agents stop and drain, and the comparison says what that cost)."""
        devs = devices or self.devices
        timeout = self.args.recovery_timeout_s
        try:
            t = wait_until(
                lambda: self.progress.recovered_at(devs, since), timeout, f"recovery of {devs}"
            )
        except StackError as err:
            say(f"{self.name}: {err}")
            self.info["recovery_timed_out"] = self.info.get("recovery_timed_out", 0) + 1
            return None
        self.recovery.append(float(t) - since)
        return float(t) - since

    def settle(
        self, window0: tuple[int, int, int], crash: CrashSender, elapsed: float
    ) -> dict[str, Any]:
        rig, args = self.rig, self.args
        self.per: list[tuple[str, dict[Any, float], dict[Any, float]]] = []
        for v in self.vehicles:
            src = source_samples(v.journal, v.signals, v.period_us)
            self.per.append((v.device_id, src, accepted_samples(v.queue)))
        want = sum(len(a) for _, _, a in self.per)
        seen: list[tuple[float, int]] = []

        def settled() -> bool:
            """All accepted samples visible, or no new one for ``--quiet-s`` (some are lost)."""
            n = rig.influx.count(self.prefix)
            if not seen or n != seen[-1][1]:
                seen.append((time.monotonic(), n))
            return n >= want or time.monotonic() - seen[-1][0] > args.quiet_s

        drain_s: float | None = None
        try:
            wait_until(settled, args.settle_s, "InfluxDB to hold every accepted sample")
            if seen[-1][1] >= want:
                drain_s = round(seen[-1][0] - self.stopped, 2)
            wait_until(lambda: crash.inbox() >= crash.sent, args.quiet_s, "the CRM inbox")
        except StackError as err:
            say(f"{self.name}: {err}")
        time.sleep(2.0)  # writes of resent records still on their way
        total = self.compare()
        writes, points = rig.writes.read(), rig.influx.count(self.run_prefix)
        # device_status points (one per online/offline change) are writes too, not duplicates
        status = rig.influx.status_points() - window0[2]
        total.duplicates = (writes - window0[0]) - (points - window0[1]) - status
        if self.name == "influx-outage":
            self.info["duplicates_note"] = (
                "points written between the last counter read and the stop are not counted"
            )
        out: dict[str, Any] = {
            "source": total.source,
            "stored": total.stored,
            "lost": total.lost,
            "duplicates": total.duplicates,
            "recovery_s": (
                round(max(self.recovery), 2)
                if self.recovery and "recovery_timed_out" not in self.info
                else None
            ),
            "drain_s": drain_s,
            "accepted": total.accepted,
            "unexpected": total.unexpected,
            "in_memory_at_kill": total.window,
            "crm": {"crashes": crash.sent, "inbox": crash.inbox()},
            # where the lost samples are: in Kafka (the stream lost them) or not (the ingest)
            "kafka": rig.kafka_resends(self.prefix, total.missing),
            "fault": self.info,
            "seconds": round(elapsed, 1),
        }
        if total.lost_examples:
            out["lost_examples"] = total.lost_examples[:10]
        return out

    def compare(self) -> Tally:
        total = Tally()
        for device, src, acc in self.per:
            t = compare(src, acc, self.rig.influx.stored(device), device)
            total.add(t)
            total.lost_examples += t.lost_examples
        return total

    def reconcile(self, r: dict[str, Any]) -> None:
        """At the end of the rig: samples missing at the scenario's end that came later."""
        total = self.compare()
        r["lost_at_end"], r["late"] = r["lost"], r["lost"] - total.lost
        r["lost"], r["stored"] = total.lost, total.stored
        if total.lost_examples:
            r["lost_examples"] = total.lost_examples[:10]
        else:
            r.pop("lost_examples", None)

    # ----- faults ------------------------------------------------------------------------------
    def _outage(
        self, service: str, down_s: float, before: Callable[[], None] | None = None
    ) -> None:
        stack = self.rig.stack
        t0 = time.time()
        if before is None:
            stack.kill_service(service, signal.SIGTERM)
        else:
            # The writers are paused while ``before`` reads InfluxDB's write count and the
            # service stops: a point acknowledged between that read and the stop was not counted
            # (seen in CI: 48 points, duplicates read -48). They go on once it is down.
            with self.rig.writers_paused():
                before()
                stack.kill_service(service, signal.SIGTERM)
        time.sleep(max(0.0, down_s - (time.time() - t0)))
        stack.start_service(service)
        t_up = time.time()
        self.info.update(service=service, down_s=round(t_up - t0, 1))
        self.info["recovery_from"] = "restart"
        self.wait_recovered(t_up)

    def fault_kafka_restart(self) -> None:
        self._outage("kafka-1", self.args.down_s)

    def fault_mosquitto_restart(self) -> None:
        self._outage("mosquitto", self.args.down_s)

    def fault_influx_outage(self) -> None:
        self._outage("influxdb", self.args.outage_s, self.rig.writes.before_restart)

    def fault_worker_kill(self) -> None:
        t = time.time()
        self.rig.kill("worker-b")
        self.info.update(killed="worker-b", recovery_from="kill")
        self.wait_recovered(t)
        self.rig.start("worker-b")  # back to two workers (a rebalance, mid-stream)

    def fault_bridge_kill(self) -> None:
        t = time.time()
        self.rig.kill("bridge-b")
        self.info.update(killed="bridge-b", recovery_from="kill")
        time.sleep(self.args.down_s)
        # Messages it held unacknowledged stay in its MQTT session until it is back.
        self.rig.start("bridge-b")
        self.wait_recovered(t)

    def _kill_node(self, node_id: int) -> None:
        name = f"kafka-{node_id}"
        t = time.time()
        self.rig.stack.kill_service(name, signal.SIGKILL)
        self.info.update(killed=name, recovery_from="kill")
        self.wait_recovered(t)
        time.sleep(max(0.0, self.args.down_s - (time.time() - t)))
        self.rig.stack.start_service(name)
        self.info["down_s"] = round(time.time() - t, 1)

    def fault_kafka_leader(self) -> None:
        leaders = self.rig.telemetry_leaders()
        counts = {n: list(leaders.values()).count(n) for n in set(leaders.values())}
        node = max(counts, key=lambda n: (counts[n], -n))
        self.info["leaders"] = {str(p): n for p, n in sorted(leaders.items())}
        self._kill_node(node)

    def fault_kafka_controller(self) -> None:
        leader, described = self.rig.active_controller()
        self.info.update(quorum_leader=leader, describe_cluster_controller=described)
        self._kill_node(leader)

    def fault_edge_kill(self) -> None:
        v = self.vehicles[0]
        rng = random.Random(self.args.seed)
        for i in range(self.args.kills):
            wait_until(
                lambda: v.stats().get("published", 0) > 0 or v.proc.poll() is not None,  # type: ignore[union-attr]
                60,
                "the agent to publish",
            )
            time.sleep(rng.uniform(0.0, 2.0))
            v.kill()
            v.start()
            t = time.time()
            self.wait_recovered(t, [v.device_id])
            if (i + 1) % 10 == 0:
                say(f"edge-kill: {i + 1} of {self.args.kills} kills")
        self.info.update(kills=self.args.kills, killed=v.device_id, recovery_from="restart")
        self.info["recovery_median_s"] = round(statistics.median(self.recovery), 2)


def run_faults(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    names = [n for n in SCENARIOS if n in args.scenarios]
    run_id = uuid.uuid4().hex[:4]
    results: dict[str, dict[str, Any]] = {}
    for group, brokers in ((SINGLE, 1), (TRIPLE, 3)):
        todo = [n for n in names if n in group]
        if not todo:
            continue
        rig = Rig(root / f"rig-{brokers}", brokers, args.session_timeout_s, say)
        try:
            rig.up()
            done: list[tuple[Scenario, dict[str, Any]]] = []
            for name in todo:
                say(f"{name}: starting")
                try:
                    scn = Scenario(rig, name, run_id, args)
                    results[name] = scn.run()
                    done.append((scn, results[name]))
                except Exception as err:  # one broken scenario must not hide the others' figures
                    results[name] = {"error": f"{type(err).__name__}: {err}"}
                    traceback.print_exc(file=sys.stderr)
                r = results[name]
                say(
                    f"{name}: "
                    + " ".join(
                        f"{k}={r.get(k)}"
                        for k in ("source", "stored", "lost", "duplicates", "recovery_s", "error")
                        if k in r
                    )
                )
                if r.get("in_memory_at_kill"):
                    say(
                        f"{name}: in memory at a kill (the documented window): "
                        f"{r['in_memory_at_kill']} samples"
                    )
            time.sleep(args.quiet_s if any(r["lost"] for _, r in done) else 0)
            for scn, r in done:
                scn.reconcile(r)
                if r["late"]:
                    say(f"{scn.name}: {r['late']} samples arrived after the scenario ended")
        finally:
            rig.down()
    return summarize(results, args)


def summarize(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    total = Tally()
    recovery: list[float] = []
    for r in results.values():
        if "error" in r:
            continue
        total.add(
            Tally(
                r["source"],
                r["accepted"],
                r["stored"],
                r["lost"],
                r["duplicates"],
                r["unexpected"],
                r["in_memory_at_kill"],
            )
        )
        if r["recovery_s"] is not None:
            recovery.append(r["recovery_s"])
    t = asdict(total)
    t.pop("lost_examples")
    t["in_memory_at_kill"] = t.pop("window")
    t["recovery_s"] = max(recovery) if recovery else None
    ok = all(
        "error" not in r
        and r["lost"] == 0
        and (r["duplicates"] == 0 or name in REWRITES_ALLOWED)
        and r["unexpected"] == 0
        and r["crm"]["inbox"] == r["crm"]["crashes"]
        for name, r in results.items()
    )
    return {
        "ok": ok and bool(results),
        "total": {
            k: t[k]
            for k in (
                "source",
                "stored",
                "lost",
                "duplicates",
                "recovery_s",
                "accepted",
                "unexpected",
                "in_memory_at_kill",
            )
        },
        "scenarios": results,
        "window": {n: r.get("in_memory_at_kill", 0) for n, r in results.items()},
        "notes": {"window": WINDOW_NOTE, "duplicates": DUPLICATES_NOTE, "kafka": KAFKA_NOTE},
        "settings": {
            k: getattr(args, k)
            for k in (
                "outage_s",
                "kills",
                "down_s",
                "vehicles",
                "signals",
                "hz",
                "batch_s",
                "crashes",
                "session_timeout_s",
                "seed",
            )
        }
        | {"kernels": "aot" if args.kernels_dir is not None else "numba"},
    }


def main(argv: list[str]) -> dict[str, Any]:
    """Entry point of ``carpulse eval faults``."""
    ap = argparse.ArgumentParser(prog="carpulse eval faults", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    ap.add_argument("--outage-s", type=float, default=60.0, help="InfluxDB outage")
    ap.add_argument("--kills", type=count(0), default=10, help="kill -9 of the edge agent")
    ap.add_argument("--down-s", type=float, default=10.0, help="other restarts' down time")
    ap.add_argument(
        "--vehicles", type=count(), default=4, help="edge agents per scenario (one per partition)"
    )
    ap.add_argument("--signals", type=count(), default=4)
    ap.add_argument("--hz", type=float, default=20.0, help="ticks per second per vehicle")
    ap.add_argument("--batch-s", type=float, default=0.25, help="edge batch_max_interval_s")
    ap.add_argument("--crashes", type=count(0), default=4, help="crash events per scenario")
    ap.add_argument("--lead-s", type=float, default=3.0, help="streaming before the fault")
    ap.add_argument("--tail-s", type=float, default=3.0, help="streaming after recovery")
    ap.add_argument("--session-timeout-s", type=float, default=8.0)
    ap.add_argument("--ready-timeout-s", type=float, default=240.0)
    ap.add_argument("--recovery-timeout-s", type=float, default=240.0)
    ap.add_argument("--settle-s", type=float, default=300.0, help="longest wait for InfluxDB")
    ap.add_argument(
        "--quiet-s", type=float, default=60.0, help="stop waiting after this long without progress"
    )
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--keep", type=Path, default=None, help="keep stacks and logs in this dir")
    ap.add_argument(
        "--kernels-dir",
        type=Path,
        default=None,
        help="the agents run the kernels of this `carpulse edge build-kernels` output instead "
        "of compiling them with numba at each start (as a Pi does; default: numba)",
    )
    args = ap.parse_args(argv)
    # a plain `kill` stops the stacks too (the default SIGTERM would skip every `finally`)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.kernels_dir is not None:
        from edge.aot import current_build

        if current_build(args.kernels_dir) is None:
            ap.error(
                f"--kernels-dir {args.kernels_dir}: no build of the current kernels there "
                f"(`carpulse edge build-kernels --out {args.kernels_dir}` makes one)"
            )
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run_faults(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="carpulse-faults-") as tmp:
        return run_faults(args, Path(tmp))
