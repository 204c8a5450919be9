"""The Faust app. Agents stay thin: decode, call a pure function, write or emit.

``build_app(settings)`` returns a configured ``faust.App`` with its agents; ``run_worker`` runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust

from core.config import CarpulseSettings
from core.errors import SinkError, WireError
from core.topics import KAFKA_DEADLETTER, KAFKA_TELEMETRY
from core.wire import decode_telemetry
from stream.influx import InfluxSink, make_sink
from stream.lines import LineStats, batch_lines

log = logging.getLogger(__name__)


@dataclass
class TelemetryCounters:
    records: int = 0
    samples: int = 0
    lines: int = 0
    invalid: int = 0
    non_finite: int = 0


def records_to_lines(
    payloads: list[bytes], measurement: str, counters: TelemetryCounters
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
    return lines, bad


def build_app(settings: CarpulseSettings) -> faust.App:
    st = settings.stream
    app = faust.App(
        st.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka.bootstrap.split(",")],
        store="memory://",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication,
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=st.web_port,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1 if settings.kafka.acks == "all" else int(settings.kafka.acks),
        broker_max_poll_records=1000,
        stream_wait_empty=False,
    )
    telemetry_topic = app.topic(KAFKA_TELEMETRY, value_serializer="raw", key_serializer="raw")
    deadletter = app.topic(KAFKA_DEADLETTER, value_serializer="raw", key_serializer="raw")
    sink: InfluxSink = make_sink(settings.influx)
    counters = TelemetryCounters()
    app.carpulse_counters = counters  # type: ignore[attr-defined]

    @app.agent(telemetry_topic)
    async def telemetry_to_influx(stream: Any) -> Any:
        await sink.start()
        try:
            await _consume(stream)
        finally:
            await sink.close()

    async def _consume(stream: Any) -> None:
        async for payloads in stream.take(st.take_max, within=st.take_within_s):
            lines, bad = records_to_lines(list(payloads), st.measurement, counters)
            for payload, err in bad:
                await deadletter.send(
                    value=payload,
                    headers={"reason": err.reason.encode(), "detail": err.detail[:500].encode()},
                )
            try:
                await sink.write(lines)
            except SinkError as err:  # retries exhausted: park the lines, never drop silently
                log.error("parking %d lines after InfluxDB failure: %s", len(lines), err)
                await deadletter.send(
                    value="\n".join(lines).encode(),
                    headers={"reason": b"sink_failed", "detail": str(err)[:500].encode()},
                )

    return app


def run_worker(settings: CarpulseSettings, loglevel: str = "warn") -> None:
    """Run the Faust worker in the foreground until Ctrl-C/SIGTERM."""
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()
