"""The processes ``carpulse eval faults`` runs and breaks: a stack, its pipeline, edge agents.

One :class:`Rig` per Kafka topology (one broker, or three with replication 3): the local stack on
free ports in the evaluation's directory, two ingest bridges and two Faust workers (so that one
of each can be killed), and the CRM worker. :class:`Vehicle` is one edge agent process with a tick
source whose journal and queue trigger make its samples countable (``carpulse.faults_probe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from carpulse.faults_probe import Influx, WriteCounter, watch_queue
from carpulse.stack import Stack, free_port, free_stack_settings, pipeline_env, stop_processes
from carpulse.stack import wait_until as stack_wait_until
from core.config import CarpulseSettings, load_settings
from core.errors import StackError

Say = Callable[[str], None]


# The rig's waits read services that may be restarting: their errors count as "not yet".
wait_until = functools.partial(stack_wait_until, ignore=(OSError, StackError, ValueError))
#: what each process logs once it can take traffic (the bridges: on their SUBACK)
READY_LINES = {
    "bridge-a": "connected to MQTT and subscribed",
    "bridge-b": "connected to MQTT and subscribed",
    "worker-a": "[^Worker]: Ready",
    "worker-b": "[^Worker]: Ready",
}


class Rig:
    """A stack with ``brokers`` Kafka nodes, two bridges, two stream workers and a CRM worker."""

    def __init__(self, root: Path, brokers: int, session_timeout_s: float, say: Say) -> None:
        self.root, self.brokers, self.say = root, brokers, say
        root.mkdir(parents=True, exist_ok=True)
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.stack = Stack(free_stack_settings(root / "stack", kafka_brokers=brokers))
        self.session_timeout_s = session_timeout_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.crm_url = f"sqlite:///{root / 'crm.sqlite'}"
        self.settings: CarpulseSettings | None = None

    # ----- lifecycle ---------------------------------------------------------------------------
    def up(self) -> None:
        t = time.monotonic()
        try:
            self.stack.up()
        except Exception:
            self.stack.down()
            raise
        self.settings = load_settings(self.stack.config_file)
        self.influx = Influx(self.settings.influx.url, self.settings.influx.database)
        self.influx._get(f'CREATE DATABASE "{self.influx.db}"', None)
        self.writes = WriteCounter(self.influx)
        from crm.migrate import upgrade
        from crm.schema import CouponTemplate
        from crm.store import CrmStore

        self.crm = CrmStore.from_url(self.crm_url)
        upgrade(self.crm.engine)
        with self.crm.tx() as s:  # the shipped rules refuse to start without their templates
            for code in ("maintenance", "tier-welcome"):
                s.add(CouponTemplate(code=code, title_zh=code, title_en=code, valid_days=60))
        self.env = pipeline_env(
            self.stack.config_file,
            "faults",
            CARPULSE_STREAM__SESSION_TIMEOUT_S=str(self.session_timeout_s),
            # a plain persistent subscription: survives a Mosquitto restart (a shared one does not)
            CARPULSE_MQTT__SHARE_GROUP="",
        )
        for name in ("bridge-a", "bridge-b", "worker-a", "worker-b", "crm"):
            self.start(name)
        # no car drives before both bridges hold their subscriptions (the broker keeps nothing
        # for a session that never subscribed) and both workers joined: seen in CI, the first
        # 0.25 s of the first scenario's cars were published before a bridge's SUBACK
        for name, line in READY_LINES.items():
            log = self.logs / f"{name}.log"

            def ready(log: Path = log, line: str = line) -> bool:
                self.check_alive()
                return line in log.read_text(errors="replace")

            # a process that exited is an error at once (StackError is not "not yet" here)
            stack_wait_until(ready, 180, f"{name} to log {line!r} ({log})", 0.5, ignore=(OSError,))
        self.say(
            f"rig: {self.brokers} Kafka broker(s), 2 bridges, 2 workers, CRM worker up in "
            f"{time.monotonic() - t:.0f} s (data in {self.root})"
        )

    def argv(self, name: str) -> list[str]:
        if name.startswith("bridge-"):
            return ["stream", "bridge", "--name", f"faults-{name}"]
        if name.startswith("worker-"):
            return ["stream", "worker", "--loglevel", "info"]
        return ["crm", "worker", "--db", self.crm_url, "--interval", "1", "--loglevel", "info"]

    def start(self, name: str) -> None:
        env = dict(self.env, CARPULSE_STREAM__WEB_PORT=str(free_port()))
        with open(self.logs / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "carpulse", *self.argv(name)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.send_signal(signal.SIGKILL)
        p.wait(30)

    @contextlib.contextmanager
    def writers_paused(self, settle_s: float = 0.5) -> Iterator[None]:
        """The processes that write to InfluxDB (the stream workers and the CRM worker) stopped
        (SIGSTOP) for the block, ``settle_s`` after the stop first so that writes already sent
        are acknowledged; continued (SIGCONT) after it, whatever happens."""
        paused = [p for n, p in self.procs.items() if n.startswith("worker-") or n == "crm"]
        try:
            for p in paused:
                if p.poll() is None:
                    p.send_signal(signal.SIGSTOP)
            time.sleep(settle_s)
            yield
        finally:
            for p in paused:
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise StackError(f"pipeline processes exited: {dead} (logs in {self.logs})")

    def down(self) -> None:
        stop_processes(self.procs.values(), grace_s=30)
        self.stack.down()

    # ----- Kafka topology ----------------------------------------------------------------------
    def telemetry_leaders(self) -> dict[int, int]:
        """Partition -> leader node id of the telemetry topic."""
        from aiokafka.admin import AIOKafkaAdminClient

        from core.topics import KAFKA_TELEMETRY

        assert self.settings is not None
        opts = self.settings.kafka.client_options()

        async def run() -> dict[int, int]:
            admin = AIOKafkaAdminClient(**opts, request_timeout_ms=10_000)
            await admin.start()
            try:
                (topic,) = await admin.describe_topics([KAFKA_TELEMETRY])
            finally:
                await admin.close()
            return {int(p["partition"]): int(p["leader"]) for p in topic["partitions"]}

        return asyncio.run(run())

    async def _partitions(self, topic: str) -> list[int]:
        from aiokafka.admin import AIOKafkaAdminClient

        assert self.settings is not None
        admin = AIOKafkaAdminClient(**self.settings.kafka.client_options())
        await admin.start()
        try:
            (desc,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return [int(p["partition"]) for p in desc["partitions"]]

    def active_controller(self) -> tuple[int, int | None]:
        """(KRaft quorum leader, ``describe_cluster``'s controller id).

        The quorum leader comes from each node's ``quorum-state`` file (the newest epoch wins):
        KRaft brokers answer DescribeCluster with some live broker as "controller", which
        need not be the active controller, and aiokafka has no DescribeQuorum.
        """
        best: tuple[int, int] = (-1, -1)  # (epoch, leader)
        for node in self.stack.kafka_nodes:
            f = node.log_dir / "__cluster_metadata-0" / "quorum-state"
            with contextlib.suppress(OSError, ValueError, KeyError):
                doc = json.loads(f.read_text())
                data = doc.get("data", doc)
                if int(data["leaderId"]) >= 0:
                    best = max(best, (int(data["leaderEpoch"]), int(data["leaderId"])))
        if best[1] < 0:
            raise StackError("no KRaft quorum leader found in the nodes' quorum-state files")
        from aiokafka.admin import AIOKafkaAdminClient

        assert self.settings is not None
        opts = self.settings.kafka.client_options()

        async def described() -> int | None:
            admin = AIOKafkaAdminClient(**opts, request_timeout_ms=10_000)
            await admin.start()
            try:
                info = await admin.describe_cluster()
            finally:
                await admin.close()
            cid = info.get("controller_id")
            return int(cid) if cid is not None else None

        return best[1], asyncio.run(described())

    def kafka_resends(
        self, prefix: str, lost: Iterable[tuple[str, str, int]] = ()
    ) -> dict[str, Any]:
        """Telemetry records of devices ``prefix*`` in Kafka, and how many repeat a (device,
        boot, seq) already there (resent by an agent or a bridge; the worker drops them).

        ``lost``: (device, signal, ts_us) samples InfluxDB lacks; ``lost_in_kafka`` counts those
        Kafka holds (the stream lost them) and ``lost_records`` names their records (partition,
        offset, boot, seq); the others never reached Kafka (the ingest side lost them)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from core.topics import KAFKA_TELEMETRY
        from core.wire import decode_telemetry

        assert self.settings is not None
        opts = self.settings.kafka.client_options()
        want = set(lost)

        async def run() -> dict[str, Any]:
            c = AIOKafkaConsumer(**opts, group_id=None, enable_auto_commit=False)
            await c.start()
            try:
                n = len(await self._partitions(KAFKA_TELEMETRY))
                tps = [TopicPartition(KAFKA_TELEMETRY, p) for p in range(n)]
                c.assign(tps)
                await c.seek_to_beginning(*tps)
                ends = await c.end_offsets(tps)
                seen: set[tuple[str, str, int]] = set()
                records = repeats = 0
                found: set[tuple[str, str, int]] = set()
                where: list[str] = []
                while [tp for tp in tps if await c.position(tp) < ends[tp]]:
                    for recs in (await c.getmany(timeout_ms=500)).values():
                        for r in recs:
                            if not (r.key or b"").decode().startswith(prefix):
                                continue
                            b = decode_telemetry(r.value)
                            records += 1
                            key = (b.device_id, b.boot_id, b.seq)
                            repeats += key in seen
                            seen.add(key)
                            if want:
                                names, sm = b.samples.names, b.samples
                                hit = {
                                    (b.device_id, names[int(i)], int(t))
                                    for i, t in zip(sm.sig, sm.ts_us, strict=True)
                                } & want
                                if hit and len(where) < 10:
                                    where.append(
                                        f"{b.device_id} p{r.partition}@{r.offset} "
                                        f"boot {b.boot_id} seq {b.seq}: {len(hit)} lost samples"
                                    )
                                found |= hit
            finally:
                await c.stop()
            out: dict[str, Any] = {"records": records, "repeats": repeats}
            if want:
                out["lost_in_kafka"] = len(found)
                out["lost_records"] = where
            return out

        return asyncio.run(run())


class Vehicle:
    """One edge agent (a real ``carpulse edge run`` process) with a journaled tick source."""

    def __init__(
        self,
        rig: Rig,
        device_id: str,
        *,
        signals: int,
        hz: float,
        batch_s: float,
        kernels_dir: Path | None = None,
    ) -> None:
        self.rig, self.device_id = rig, device_id
        self.dir = rig.root / "edge" / device_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.journal = self.dir / "ticks.journal"
        self.queue = self.dir / f"{device_id}.queue.sqlite"
        self.stats_file = self.dir / "stats.json"
        self.log = rig.logs / f"edge-{device_id}.log"
        self.signals, self.period_us = signals, round(1e6 / hz)
        watch_queue(self.queue)
        text = rig.stack.config_file.read_text()
        text = "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("state_dir"))
        mine = (
            f'device_id = "{device_id}"\nstate_dir = "{self.dir}"\n'
            f'stats_file = "{self.stats_file}"\nbatch_max_samples = 1000\n'
            f"batch_max_interval_s = {batch_s}\nreconnect_max_s = 1.0\ndrain_timeout_s = 120.0\n"
        )
        if kernels_dir is not None:  # a `carpulse edge build-kernels` output: no numba at start
            mine += f"aot_dir = {json.dumps(str(kernels_dir))}\n"
        text = text.replace("[edge]\n", "[edge]\n" + mine, 1)
        text += (
            f'\n[[edge.sources]]\ntype = "tick"\nsignals = {signals}\nhz = {hz}\n'
            f'journal = "{self.journal}"\n'
        )
        self.config = self.dir / "edge.toml"
        self.config.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None
        # numba kernels compiled once per evaluation, not at each restart
        self.env = dict(
            os.environ, CARPULSE_NUMBA_CACHE="1", NUMBA_CACHE_DIR=str(rig.root / "numba")
        )

    def start(self) -> None:
        self.stats_file.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "carpulse", "edge", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_file.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM: the agent flushes its batches and drains its queue (PUBACKs) first."""
        if self.proc is not None:
            stop_processes([self.proc], grace_s=150)
        if self.proc is not None and self.proc.returncode not in (0, -signal.SIGTERM):
            tail = self.log.read_text(errors="replace").splitlines()[-5:]
            raise StackError(f"edge agent {self.device_id} exited {self.proc.returncode}: {tail}")


class CrashSender:
    """A device that only sends crash events over MQTT (each twice: an edge resend)."""

    def __init__(self, rig: Rig, device_id: str) -> None:
        from carpulse.local_files import local_device_mqtt
        from edge.publisher import MqttPublisher

        assert rig.settings is not None
        from crm.schema import Vehicle as CrmVehicle

        with rig.crm.tx() as s:
            s.add(CrmVehicle(vin=device_id, model="eval", device_id=device_id))
        self.rig, self.device_id = rig, device_id
        self.pub = MqttPublisher(local_device_mqtt(rig.settings, device_id), "crash-boot")
        self.pub.connect(30.0, announce=False)
        self.sent = 0

    def send(self, n: int) -> None:
        from core.topics import device_topic
        from core.wire import Event, encode_event

        topic = device_topic(self.device_id, "events")
        for _ in range(n):
            self.sent += 1
            ev = Event(
                self.device_id,
                "crash-boot",
                self.sent,
                "crash",
                int(time.time() * 1e6),
                0,
                {"trigger": "eval"},
            )
            payload = encode_event(ev)
            self.pub.publish(topic, payload)
            self.pub.publish(topic, payload)  # resent: the stream dedupes it

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pub.flush(30)
        with contextlib.suppress(Exception):
            self.pub.close()

    def inbox(self) -> int:
        from sqlalchemy import func, select

        from crm.tables import InboxItem

        with self.rig.crm.tx() as s:
            q = select(func.count()).select_from(InboxItem)
            q = q.where(InboxItem.vin == self.device_id, InboxItem.kind == "crash")
            return int(s.scalar(q) or 0)
