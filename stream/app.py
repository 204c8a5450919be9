"""The Faust app. Agents stay thin: decode, call a pure function, write or emit.

``build_app(settings)`` returns a configured ``faust.App`` with its agents; ``run_worker`` runs it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import asdict
from typing import Any

import faust

from core.config import AnomalySettings, CarpulseSettings
from core.errors import SinkError
from core.logs import current_format, faust_logging_config
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_ANOMALIES,
    KAFKA_DAILY,
    KAFKA_DEADLETTER,
    KAFKA_INFLUX_RETRY,
    KAFKA_PREDICTIONS,
    KAFKA_TRIPS,
    KAFKA_VEHICLE_STATE,
)
from stream.agents import install_pipeline
from stream.kafka_options import make_faust_app, topic_configs
from stream.metrics import add_faust_sensor, install_web, kafka_assigned, stream_registry
from stream.privacy import PrivacyFeed, PrivacyView
from stream.registry import load_registry
from stream.sinks import make_sink
from stream.sinks.base import Sink
from stream.sinks.writer import SinkWriter, install_retry_agent

log = logging.getLogger(__name__)

# Topics the worker only produces to (Faust does not declare those), and which are compacted.
OUTPUTS = (
    KAFKA_VEHICLE_STATE,
    KAFKA_ANOMALIES,
    KAFKA_PREDICTIONS,
    KAFKA_TRIPS,
    KAFKA_DAILY,
    KAFKA_ALERTS,
)
COMPACTED = frozenset({KAFKA_VEHICLE_STATE})


def counters_of(app: faust.App) -> dict[str, Any]:
    """The worker's live counters: telemetry pipeline, events fast path and the InfluxDB sink."""
    sink = app.carpulse_sink  # type: ignore[attr-defined]
    return {
        "telemetry": asdict(app.carpulse_pipeline.counters),  # type: ignore[attr-defined]
        "events": dict(app.carpulse_event_stats),  # type: ignore[attr-defined]
        "privacy": {
            "policies": len(app.carpulse_privacy.view.policies),  # type: ignore[attr-defined]
            "records": app.carpulse_privacy.records,  # type: ignore[attr-defined]
            "bad": app.carpulse_privacy.view.bad,  # type: ignore[attr-defined]
            "ready": app.carpulse_privacy.ready.is_set(),  # type: ignore[attr-defined]
        },
        "sink": {
            **asdict(sink.counters),
            "requests": sink.sink.requests,
            "retries": sink.sink.retries,
            "broken": sink.sink.broken,
        },
        "fetch": fetch_pacing(app),
        "batches": micro_batches(app),
    }


def micro_batches(app: faust.App) -> dict[str, Any]:
    """The telemetry micro-batcher's window now (s) and how many batches took the busy window
    (``[stream] take_busy_within_s``); empty before the agent started."""
    batcher = getattr(app, "carpulse_batcher", None)
    if batcher is None:
        return {}
    return {"window_s": batcher.window, "busy": batcher.busy_batches}


def fetch_pacing(app: faust.App) -> dict[str, Any]:
    """The consumer's fetch pacing (``stream.transport.FetchPacer``): on, batching now, and how
    often it switched; ``paced`` is false before the consumer started or when it is off."""
    thread = getattr(getattr(app, "_consumer", None), "_thread", None)
    pacer = getattr(thread, "pacer", None)
    if pacer is None:
        return {"paced": False}
    return {"paced": True, "batching": pacer.batching, "switches": pacer.switches}


def build_app(settings: CarpulseSettings) -> faust.App:
    st = settings.stream
    app = make_faust_app(
        st.app_id,
        settings.kafka,
        "stream",
        session_timeout_s=st.session_timeout_s,
        fetch_max_wait_ms=st.fetch_max_wait_ms,
        fetch_batch_wait_ms=st.fetch_batch_wait_ms,
        datadir=str(st.faust_datadir(st.app_id)),  # not {app_id}-data in the current directory
        store=st.store,
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication,
        web_enabled=True,
        web_bind=settings.metrics.host,  # 127.0.0.1 unless [metrics] host says otherwise
        web_port=st.web_port,
    )
    deadletter = app.topic(KAFKA_DEADLETTER, value_serializer="raw", key_serializer="raw")
    retry_topic = app.topic(
        KAFKA_INFLUX_RETRY,
        value_serializer="raw",
        key_serializer="raw",
        internal=True,
        partitions=settings.kafka.partitions,
        acks=False,  # the retry agent commits its offsets itself (stream.offsets)
    )
    sink: Sink = make_sink(settings)  # [stream] sink, or influx-<[influx] api>
    writer = SinkWriter(
        sink,
        lambda v, h: deadletter.send(value=v, headers=h),
        lambda v, h: retry_topic.send(value=v, headers=h),
    )
    install_retry_agent(app, writer, retry_topic)
    app.carpulse_sink = writer  # type: ignore[attr-defined]
    # who may have positions stored (the CRM's compacted carpulse.privacy topic)
    k = settings.kafka
    privacy = PrivacyFeed(k.client_options("stream"), PrivacyView())
    app.carpulse_privacy = privacy  # type: ignore[attr-defined]
    # decode, registry, dedupe, live state, detectors, trips: stream/agents.py and pipeline.py
    registry = load_registry(st.registry, gates=st.gate_devices)
    install_pipeline(app, settings, registry, writer, deadletter, privacy)

    @app.page("/carpulse/counters/")
    async def counters_view(web: Any, request: Any) -> Any:
        """JSON of ``counters_of``: the web server is bound to localhost."""
        return web.json(counters_of(app))

    # /metrics, /healthz, /readyz (ready: partitions assigned and InfluxDB answering)
    app.carpulse_offset_guards = []  # type: ignore[attr-defined]

    async def sink_ok() -> tuple[bool, str]:
        try:
            return True, await sink.ping()
        except SinkError as err:
            return False, str(err)

    metrics = stream_registry(app)
    if settings.metrics.faust_sensor:
        add_faust_sensor(app, metrics, "carpulse_stream")
    install_web(app, metrics, {"kafka": lambda: kafka_assigned(app), sink.health_name: sink_ok})
    return app


async def _prepare_sink(settings: CarpulseSettings) -> None:
    sink = make_sink(settings)
    try:
        await sink.start()  # not fatal when InfluxDB is down: writes retry and park
    finally:
        await sink.close()


async def prepare_output_topics(
    settings: CarpulseSettings, component: str | None = "stream"
) -> None:
    """Create the output topics with their cleanup policy before the first record is sent.

    Faust declares only the topics it consumes; a topic it merely produces to would be made by
    the broker's auto-create on the first send, without ``cleanup.policy=compact`` for
    ``vehicle-state``. An existing ``vehicle-state`` that is not compacted is altered.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    k = settings.kafka
    isr = {"min.insync.replicas": str(k.min_insync_replicas)}
    wanted = {
        name: {"cleanup.policy": "compact", **isr} if name in COMPACTED else dict(isr)
        for name in OUTPUTS
    }
    admin = AIOKafkaAdminClient(**k.client_options(component))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, k.partitions, k.replication, topic_configs=config)
            for name, config in wanted.items()
            if name not in existing
        ]
        if new:
            await admin.create_topics(new)
        described = await topic_configs(admin, sorted(COMPACTED & existing))
        for name, configs in described.items():
            if configs.get("cleanup.policy") != "compact":
                log.warning("topic %s was not compacted: setting cleanup.policy=compact", name)
                await admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, name, wanted[name])]
                )
    except KafkaError as err:  # the worker still runs; say what is missing
        log.warning("could not prepare the output topics %s: %s", sorted(wanted), err)
    finally:
        await admin.close()


def _warm_up(anomaly: AnomalySettings | None = None) -> None:
    from stream.partition_models import warm_up  # imports numba: off the start-up path

    warm_up(anomaly)


def run_worker(settings: CarpulseSettings, loglevel: str = "warn") -> None:
    """Run the Faust worker in the foreground until Ctrl-C/SIGTERM."""
    settings.stream.faust_datadir(settings.stream.app_id, create=True)
    app = build_app(settings)
    # Prepare the sink (v1: CREATE DATABASE) before the group join, which takes seconds: data
    # and dashboards then find the database as soon as the worker runs.
    asyncio.run(_prepare_sink(settings))
    asyncio.run(prepare_output_topics(settings))
    # Compile the kernels while Faust starts up (I/O-bound); the telemetry agent waits for this
    # before its first batch, so a compile never blocks the event loop (see kernels.warm_up).
    warming = threading.Thread(
        target=_warm_up, args=(settings.stream.anomaly,), name="numba-warm-up", daemon=True
    )
    warming.start()
    app.carpulse_warming = warming  # type: ignore[attr-defined]
    faust_worker(app, loglevel).execute_from_commandline()


def faust_worker(app: faust.App, loglevel: str) -> faust.Worker:
    """A Faust worker that logs in the process's format (``core.logs``) to stderr; in JSON the
    start-up banner is left out, so that every line of the output parses."""
    fmt = current_format()
    config = faust_logging_config(fmt, loglevel)
    worker = faust.Worker(app, loglevel=loglevel, logging_config=config, quiet=fmt == "json")
    # No start-up spinner: at loglevel warn and above, Faust's spinner sets the root logger to
    # DEBUG for the worker's whole life, so every library's debug record is made and dropped
    # (1-2 % of a busy stream worker's CPU: BENCHMARKS.md, issue 22).
    worker.spinner = None
    return worker
