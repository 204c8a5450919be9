"""The edge agent daemon: sources -> campaigns -> batches -> durable queue -> MQTT (QoS 1, PUBACK).

``carpulse edge run --config edge.toml``. The TOML file is the usual carpulse config; the agent
reads ``[edge]`` (device id, broker, certificates, state dir, batch limits) plus its own tables::

    [[edge.sources]]            # one table per source; 'type' picks the plugin (edge.sources)
    type = "can"
    log = "../shared/data/canlogs/gt350/evox.log"
    dbc = "../shared/data/canlogs/gt350/ford_lincoln_base_pt.dbc"
    mapping = "gt350"

    [[edge.campaigns]]          # see edge.campaigns.CampaignSpec; none = every sample, priority 5
    name = "speed"
    kind = "periodic"
    signals = ["Vehicle.Speed"]
    hz = 1
    aggregates = ["min", "max", "mean", "last"]

    [edge.queue]                # see edge.queue.DurableQueue
    max_bytes = 268435456
    fsync = "full"

Every batch gets its sequence number when it is enqueued, so a resend after a crash carries the
same ``(boot_id, seq)`` and the stream dedupes it. Sources run in their own threads (blocking
drivers); everything else runs in one loop thread over whole blocks.
"""

from __future__ import annotations

import json
import logging
import os
import queue as stdqueue
import re
import signal
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.backoff import Backoff
from core.config import CarpulseSettings, load_settings
from core.errors import CarpulseError, ConfigError, SourceError
from core.observe import ObsServer
from core.topics import device_topic
from core.wire import Event, Samples, TelemetryBatch, encode_event, encode_telemetry
from edge.campaigns import CampaignManager, CampaignSpec, concat_samples, parse_specs
from edge.queue import DEFAULT_MAX_BYTES, DurableQueue
from edge.seqstate import SequenceCounter
from edge.sources.base import Source, create_source

log = logging.getLogger(__name__)

TRIGGER_PRIORITY = 2


class QueueConfig(BaseModel):
    """``[edge.queue]``: the durable store-and-forward queue."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(DEFAULT_MAX_BYTES, gt=0, description="Payload byte cap (256 MB).")
    ttl_s: float | None = Field(
        7 * 24 * 3600.0, description="Drop data older than this (not crashes)."
    )
    fsync: Literal["full", "normal"] = Field("full", description="SQLite synchronous mode.")
    window: int = Field(64, ge=1, le=1000, description="Unacknowledged messages in flight at most.")


class AgentConfig(BaseModel):
    """The agent's own tables under ``[edge]``."""

    model_config = ConfigDict(extra="ignore")

    sources: list[dict[str, Any]] = Field(default_factory=list)
    campaigns: list[dict[str, Any]] = Field(default_factory=list)
    queue: QueueConfig = QueueConfig()
    stats_file: Path | None = Field(None, description="JSON stats written every second.")
    drain_timeout_s: float = Field(5.0, ge=0, description="On stop: wait this long for PUBACKs.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay (then doubling).")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay (plus jitter).")


ENV_PREFIX = "CARPULSE_EDGE__"


def _env_value(text: str) -> Any:
    """A TOML value (``500000``, ``true``, ``[12, 13]``, ``{bitrate = 500000}``), else the text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _key(name: str) -> str:
    return re.sub(r"\W", "_", name).lower()


def edge_tables(path: Path | str | None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``[edge]`` tables of the config file with the environment on top.

    ``CARPULSE_EDGE__SOURCES__<NAME>__<OPTION>`` sets an option of the source named ``NAME``
    (``name = "can"`` in its ``[[edge.sources]]`` table; case and punctuation ignored),
    ``CARPULSE_EDGE__<TABLE>__<KEY>`` a key of ``[edge.commands]``, ``[edge.queue]``,
    ``[edge.crash]``, ``[edge.head_unit]`` or ``[edge.intrusion]``, ``CARPULSE_EDGE__ACTUATORS__<NAME>__<OPTION>`` one
    of ``[edge.actuators.<name>]`` and ``CARPULSE_EDGE__<KEY>`` one of the agent's own keys (``stats_file``...).
    Values are read as TOML values when they parse as one (``500000``, ``true``), else as text.
    A systemd drop-in or a test thus points one source elsewhere without editing the file.
    """
    doc: dict[str, Any] = {}
    if path:
        try:
            doc = tomllib.loads(Path(path).read_text()).get("edge", {})
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"config file {path}: {err}") from err
    env = os.environ if environ is None else environ
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        value = _env_value(env[var])
        if parts[0] == "sources":
            if len(parts) != 3:
                raise ConfigError(f"{var}: use {ENV_PREFIX}SOURCES__<source name>__<option>")
            tables = doc.get("sources", [])
            found = [
                t for t in tables if isinstance(t, dict) and _key(str(t.get("name"))) == parts[1]
            ]
            if not found:
                names = [str(t.get("name")) for t in tables if isinstance(t, dict)]
                raise ConfigError(
                    f"{var}: no [[edge.sources]] table has name = {parts[1]!r} "
                    f"(names: {', '.join(names) or 'none'})"
                )
            found[0][parts[2]] = value
        elif parts[0] == "actuators" and len(parts) == 3:
            actuators = doc.setdefault("actuators", {})
            table = actuators.setdefault(parts[1], {}) if isinstance(actuators, dict) else None
            if not isinstance(table, dict):
                raise ConfigError(f"[edge.actuators.{parts[1]}] must be a table")
            table[parts[2]] = value
        elif (
            parts[0] in ("commands", "queue", "crash", "head_unit", "intrusion") and len(parts) == 2
        ):
            section = doc.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"[edge.{parts[0]}] must be a table")
            section[parts[1]] = value
        elif len(parts) == 1 and parts[0] in AgentConfig.model_fields and parts[0] != "campaigns":
            doc[parts[0]] = value
    return doc


def load_agent_config(path: Path | str | None) -> tuple[CarpulseSettings, AgentConfig]:
    """Settings and agent tables from one TOML file (and the environment, ``edge_tables``);
    errors name the file and the field."""
    settings = load_settings(path)
    doc = edge_tables(path)
    try:
        conf = AgentConfig.model_validate(doc)
    except ValidationError as err:
        lines = [f"  edge.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid [edge] tables in {path}:\n" + "\n".join(lines)) from err
    return settings, conf


class Batcher:
    """Per-priority pending samples, cut into messages of at most N samples or about 1 s."""

    def __init__(self, max_samples: int, max_interval_s: float) -> None:
        self.max_samples = max_samples
        self.max_interval_us = int(max_interval_s * 1e6)
        self.max_age_s = max_interval_s
        self._parts: dict[int, list[Samples]] = {}
        self._count: dict[int, int] = {}
        self._span: dict[int, tuple[int, int]] = {}
        self._since: dict[int, float] = {}

    def add(self, priority: int, samples: Samples) -> None:
        if not len(samples):
            return
        self._parts.setdefault(priority, []).append(samples)
        self._count[priority] = self._count.get(priority, 0) + len(samples)
        lo, hi = int(samples.ts_us.min()), int(samples.ts_us.max())
        a, b = self._span.get(priority, (lo, hi))
        self._span[priority] = (min(a, lo), max(b, hi))
        self._since.setdefault(priority, time.monotonic())

    def due(self, *, force: bool = False) -> list[tuple[int, Samples]]:
        out: list[tuple[int, Samples]] = []
        now = time.monotonic()
        for prio in sorted(self._parts):
            lo, hi = self._span[prio]
            if not (
                force
                or self._count[prio] >= self.max_samples
                or hi - lo >= self.max_interval_us
                or now - self._since[prio] >= self.max_age_s
            ):
                continue
            merged = concat_samples(self._parts.pop(prio))
            del self._count[prio], self._span[prio], self._since[prio]
            order = np.argsort(merged.ts_us, kind="stable")
            merged = Samples(
                merged.names, merged.sig[order], merged.ts_us[order], merged.value[order]
            )
            for start in range(0, len(merged), self.max_samples):
                out.append((prio, merged.slice(start, start + self.max_samples).compact()))
        return out


class EdgeAgent:
    """One device: reads its sources, applies campaigns, queues durably and publishes."""

    def __init__(self, settings: CarpulseSettings, conf: AgentConfig) -> None:
        from edge.publisher import MqttPublisher, device_mqtt_settings

        e = settings.edge
        self.settings, self.conf = settings, conf
        self.device_id = e.device_id
        self.state_dir = Path(e.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        specs = parse_specs(conf.campaigns, "[[edge.campaigns]]") or [
            CampaignSpec(name="all", kind="raw")
        ]
        self.campaigns = CampaignManager(specs, self.state_dir / f"{self.device_id}.campaigns.json")
        self.sources: list[Source] = []
        for i, table in enumerate(conf.sources):
            opts = dict(table)
            kind = opts.pop("type", None)
            if not isinstance(kind, str):
                raise ConfigError(f"[[edge.sources]] entry {i}: 'type' is missing")
            name = str(opts.pop("name", f"{kind}{i}"))
            self.sources.append(create_source(kind, name, opts))
        if not self.sources:
            raise ConfigError(
                "no [[edge.sources]] configured: the agent would have nothing to send"
            )
        q = conf.queue
        self.seq = SequenceCounter(self.state_dir, self.device_id)
        self.queue = DurableQueue(
            self.state_dir / f"{self.device_id}.queue.sqlite",
            max_bytes=q.max_bytes,
            ttl_s=q.ttl_s,
            fsync=q.fsync,
        )
        self.batcher = Batcher(e.batch_max_samples, e.batch_max_interval_s)
        self.window = q.window
        self.pub = MqttPublisher(
            device_mqtt_settings(settings, self.device_id), self.seq.boot_id, self.window
        )
        self.pub.backoff = Backoff(conf.reconnect_min_s, conf.reconnect_max_s, jitter="equal")
        self._acks: deque[int] = deque()
        self.pub.on_ack = self._acks.append  # called from paho's thread; deque.append is atomic
        self._inflight: dict[int, int] = {}  # mid -> queue row id
        self._live_from = 0
        self._seen_connects = 0
        # A few blocks of slack: a slow loop pushes back on the sources instead of growing memory.
        self._blocks: stdqueue.Queue[Samples] = stdqueue.Queue(maxsize=16)
        self._stop = threading.Event()
        self._abandon = threading.Event()  # set when _shutdown stops waiting for the sources
        self._threads: list[threading.Thread] = []
        self._fatal: ConfigError | None = None  # a source's configuration error stops the agent
        self._done_sources = 0
        self._done_lock = threading.Lock()
        self.topic_telemetry = device_topic(self.device_id, "telemetry")
        self.topic_events = device_topic(self.device_id, "events")
        # Hooks: called with every micro-batch; may return events to enqueue (crash detection).
        self.sample_hooks: list[Callable[[Samples], list[Event]]] = []
        # Called every loop iteration (watchdog keep-alive, command polling...).
        self.tick_hooks: list[Callable[[], None]] = []
        self.stop_hooks: list[Callable[[], object]] = []
        self.stats: dict[str, Any] = {
            "device_id": self.device_id,
            "boot_id": self.seq.boot_id,
            "samples_in": 0,
            "samples_out": 0,
            "batches": 0,
            "events": 0,
            "bytes_enqueued": 0,
            "published": 0,
            "acked": 0,
            "triggers": 0,
        }
        self._last_stats = 0.0
        self.obs: ObsServer | None = None

    # ----- sources -----------------------------------------------------------------------------
    def _source_loop(self, src: Source) -> None:
        broken = False
        backoff = Backoff(0.5, 30.0)
        while not self._stop.is_set():
            try:
                src.open()
                block = src.read(0.2)
                if broken:
                    log.info("%r: reading again", src)
                    broken = False
                    backoff.reset()
            except ConfigError as err:
                # A bad mapping, DBC or catalog will not fix itself: stop the agent and say so
                # (the CLI exits 2, which the systemd unit does not restart).
                log.error("%r: %s", src, err)
                self._fatal = self._fatal or err
                self._stop.set()
                break
            except SourceError as err:
                if not broken:
                    log.warning("%r: %s (retrying)", src, err)
                    broken = True
                src.close()
                self._stop.wait(backoff.next())
                continue
            if len(block):
                # A block once read is handed over even when a stop comes meanwhile: the
                # journal of a tick source showed a clean stop dropping it. ``_shutdown``
                # drains the blocks while it waits for this thread, so the put finishes.
                while True:
                    try:
                        self._blocks.put(block, timeout=0.2)
                        break
                    except stdqueue.Full:
                        if self._abandon.is_set():
                            log.warning("%r: %d samples dropped at stop", src, len(block))
                            break
            elif src.exhausted:
                break
        src.close()
        with self._done_lock:
            self._done_sources += 1

    # ----- pipeline ----------------------------------------------------------------------------
    def _process(self, block: Samples) -> None:
        self.stats["samples_in"] += len(block)
        out = self.campaigns.process(block)
        for prio, parts in out.by_priority.items():
            for part in parts:
                self.batcher.add(prio, part)
        for trig in out.triggers:
            self.stats["triggers"] += 1
            self.enqueue_event("campaign_trigger", trig["ts_us"], TRIGGER_PRIORITY, trig)
        for hook in self.sample_hooks:
            for ev in hook(block):
                self.enqueue_event(ev.kind, ev.ts_us, ev.priority, ev.data)

    def enqueue_event(self, kind: str, ts_us: int, priority: int, data: dict[str, Any]) -> None:
        """Append an event durably (priority 0 = crash: never dropped)."""
        seq = self.seq.next()
        ev = Event(self.device_id, self.seq.boot_id, seq, kind, int(ts_us), priority, data)
        self.queue.put(
            "events", self.topic_events, encode_event(ev),
            priority=priority, boot_id=self.seq.boot_id, seq=seq,
        )  # fmt: skip
        self.stats["events"] += 1

    def _take_source_events(self) -> None:
        for src in self.sources:
            while src.events:
                kind, ts_us, priority, data = src.events.popleft()
                self.enqueue_event(kind, ts_us, priority, data)

    def _enqueue_batches(self, *, force: bool = False) -> None:
        for prio, samples in self.batcher.due(force=force):
            seq = self.seq.next()
            payload = encode_telemetry(
                TelemetryBatch(self.device_id, self.seq.boot_id, seq, samples)
            )
            self.queue.put(
                "telemetry", self.topic_telemetry, payload, priority=prio,
                boot_id=self.seq.boot_id, seq=seq, samples=len(samples),
            )  # fmt: skip
            self.stats["batches"] += 1
            self.stats["samples_out"] += len(samples)
            self.stats["bytes_enqueued"] += len(payload)

    def _pump(self) -> None:
        """Delete acknowledged rows, then fill the in-flight window from the queue."""
        acked: list[int] = []
        while self._acks:
            row = self._inflight.pop(self._acks.popleft(), None)
            if row is not None:  # None: our own status message
                acked.append(row)
        if acked:
            self.queue.ack(acked)
            if not self.stats["acked"]:  # cold-start time (bench edge): written at once
                self.stats["first_ack_time"] = time.time()
                self._last_stats = 0.0
            self.stats["acked"] += len(acked)
        if not self.pub.connected:
            return
        if self.pub.connects != self._seen_connects:
            # A new connection: rows from now on are "live", older ones the backlog.
            self._seen_connects = self.pub.connects
            self._live_from = self.queue.max_id() + 1
        room = self.window - len(self._inflight)
        if room <= 0:
            return
        for item in self.queue.take(room, set(self._inflight.values()), live_from=self._live_from):
            mid = self.pub.publish_nowait(item.topic, item.payload)
            self._inflight[mid] = item.id
            self.stats["published"] += 1

    def _write_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.conf.stats_file is None or (not force and now - self._last_stats < 1.0):
            return
        self._last_stats = now
        doc = dict(self.stats)
        doc["time"] = time.time()
        doc["queue"] = self.queue.stats()
        doc["queue_rows"] = len(self.queue)
        doc["connected"] = self.pub.connected
        doc["connects"] = self.pub.connects
        doc["sources"] = {s.name: s.counters.as_dict() for s in self.sources}
        doc["dtc"] = {
            s.name: dict(c) for s in self.sources if (c := getattr(s, "dtc_counters", None))
        }
        doc["frames"] = sum(int(getattr(s, "frames_read", 0)) for s in self.sources)
        if getattr(self, "intrusion", None):
            from edge.intrusion import stats as intrusion_stats

            doc["intrusion"] = intrusion_stats(self)
        doc["campaigns"] = {n: c.version for n, c in self.campaigns.specs.items()}
        tmp = Path(str(self.conf.stats_file) + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.conf.stats_file)

    # ----- run ---------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, seconds: float = 0.0, *, exit_when_done: bool = False) -> dict[str, Any]:
        """Run until ``stop()``, SIGTERM, ``seconds`` (0 = forever) or, with ``exit_when_done``,
        until every finite source is exhausted and the queue is empty."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        log.info(
            "agent %s boot %s: %d source(s), %d queued row(s) from before",
            self.device_id, self.seq.boot_id, len(self.sources), len(self.queue),
        )  # fmt: skip
        m = self.settings.metrics
        if m.edge_port:  # /metrics, /healthz, /readyz (edge.metrics)
            from edge.metrics import start_obs

            self.obs = start_obs(self, m.host, m.edge_port)
        self.pub.start()
        for src in self.sources:
            t = threading.Thread(
                target=self._source_loop, args=(src,), name=f"src-{src.name}", daemon=True
            )
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + seconds if seconds > 0 else None
        try:
            while not self._stop.is_set():
                try:
                    block = self._blocks.get(timeout=0.05)
                    self._process(block)
                    while True:  # whatever else is ready, without waiting
                        self._process(self._blocks.get_nowait())
                except stdqueue.Empty:
                    pass
                self._take_source_events()
                sources_done = self._done_sources == len(self.sources) and self._blocks.empty()
                self._enqueue_batches(force=sources_done)
                self._pump()
                for hook in self.tick_hooks:
                    hook()
                self._write_stats()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if exit_when_done and sources_done and not self._inflight and len(self.queue) == 0:
                    break
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise ConfigError(f"source configuration: {self._fatal}")
        return self.stats

    def _drain_blocks(self) -> None:
        try:
            while True:
                self._process(self._blocks.get_nowait())
        except stdqueue.Empty:
            pass

    def _shutdown(self) -> None:
        self._stop.set()
        for hook in self.stop_hooks:
            hook()
        deadline = time.monotonic() + 5
        for t in self._threads:  # draining meanwhile: a source may be handing over a last block
            while t.is_alive() and time.monotonic() < deadline:
                self._drain_blocks()
                t.join(0.05)
        self._abandon.set()
        for t in self._threads:
            t.join(0.5)
        self._drain_blocks()
        self._take_source_events()
        self._enqueue_batches(force=True)
        end = time.monotonic() + self.conf.drain_timeout_s
        while time.monotonic() < end and self.pub.connected and (self._inflight or len(self.queue)):
            self._pump()
            time.sleep(0.01)
        self._pump()
        self._write_stats(force=True)
        try:
            self.pub.close()
        except CarpulseError as err:
            log.warning("closing the MQTT session: %s", err)
        if self.obs is not None:
            self.obs.close()
        self.queue.close()
