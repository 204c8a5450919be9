"""The Faust app. Agents stay thin: decode, call a pure function, write or emit.

``build_app(settings)`` returns a configured ``faust.App`` with its agents; ``run_worker`` runs it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

import faust

from core.config import CarpulseSettings
from core.errors import WireError
from core.topics import KAFKA_DEADLETTER, KAFKA_INFLUX_RETRY
from core.wire import decode_telemetry
from stream.agents import install_pipeline
from stream.influx import InfluxSink, make_sink
from stream.lines import LineStats, batch_lines
from stream.registry import load_registry
from stream.retry import SinkWriter, install_retry_agent

log = logging.getLogger(__name__)


@dataclass
class TelemetryCounters:
    records: int = 0
    samples: int = 0
    lines: int = 0
    invalid: int = 0
    non_finite: int = 0
    clock_skew: int = 0


def records_to_lines(
    payloads: list[bytes],
    measurement: str,
    counters: TelemetryCounters,
    rejects: list[tuple[str, str]] | None = None,
) -> tuple[list[str], list[tuple[bytes, WireError]]]:
    """Decode a micro-batch of Kafka records into line protocol; bad records are returned apart."""
    lines: list[str] = []
    bad: list[tuple[bytes, WireError]] = []
    stats = LineStats()
    for payload in payloads:
        counters.records += 1
        try:
            batch = decode_telemetry(payload)
        except WireError as err:
            counters.invalid += 1
            bad.append((payload, err))
            continue
        lines.extend(batch_lines(batch, measurement, stats))
    counters.samples += stats.samples
    counters.lines += stats.lines
    counters.non_finite += stats.non_finite
    counters.clock_skew += stats.clock_ahead + stats.clock_behind
    if rejects is not None:  # samples InfluxDB must not get (NaN, clock skew), for dead-letter
        rejects.extend(stats.rejects)
    return lines, bad


def build_app(settings: CarpulseSettings) -> faust.App:
    st = settings.stream
    app = faust.App(
        st.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka.bootstrap.split(",")],
        store=st.store,
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication,
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=True,
        web_bind="127.0.0.1",
        # /table/ would serve vehicle_state (locations) to anyone reaching the port
        web_tables_enabled=False,
        web_router_enabled=False,
        web_port=st.web_port,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1 if settings.kafka.acks == "all" else int(settings.kafka.acks),
        broker_max_poll_records=1000,
        stream_wait_empty=False,
        # a worker killed with -9 holds its partitions until the session expires
        broker_session_timeout=st.session_timeout_s,
        broker_heartbeat_interval=max(0.5, min(3.0, st.session_timeout_s / 10)),
    )
    deadletter = app.topic(KAFKA_DEADLETTER, value_serializer="raw", key_serializer="raw")
    retry_topic = app.topic(
        KAFKA_INFLUX_RETRY,
        value_serializer="raw",
        key_serializer="raw",
        internal=True,
        partitions=settings.kafka.partitions,
    )
    sink: InfluxSink = make_sink(settings.influx)
    writer = SinkWriter(
        sink,
        lambda v, h: deadletter.send(value=v, headers=h),
        lambda v, h: retry_topic.send(value=v, headers=h),
    )
    install_retry_agent(app, writer, retry_topic)
    counters = TelemetryCounters()
    app.carpulse_counters = counters  # type: ignore[attr-defined]
    app.carpulse_sink = writer  # type: ignore[attr-defined]
    # decode, registry, dedupe, live state, detectors, trips: stream/agents.py and pipeline.py
    install_pipeline(app, settings, load_registry(st.registry), writer, deadletter)
    return app


async def _prepare_sink(settings: CarpulseSettings) -> None:
    sink = make_sink(settings.influx)
    try:
        await sink.start()  # not fatal when InfluxDB is down: writes retry and park
    finally:
        await sink.close()


def _warm_up() -> None:
    from stream.kernels import warm_up  # imports numba: off the start-up path

    warm_up()


def run_worker(settings: CarpulseSettings, loglevel: str = "warn") -> None:
    """Run the Faust worker in the foreground until Ctrl-C/SIGTERM."""
    app = build_app(settings)
    # Prepare the sink (v1: CREATE DATABASE) before the group join, which takes seconds: data
    # and dashboards then find the database as soon as the worker runs.
    asyncio.run(_prepare_sink(settings))
    # Compile the kernels while Faust starts up (I/O-bound); the telemetry agent waits for this
    # before its first batch, so a compile never blocks the event loop (see kernels.warm_up).
    warming = threading.Thread(target=_warm_up, name="numba-warm-up", daemon=True)
    warming.start()
    app.carpulse_warming = warming  # type: ignore[attr-defined]
    worker = faust.Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()
