"""Prometheus metrics of the ingest bridge, the stream worker and the CRM worker.

The counters the components already keep (``BridgeCounters``, the pipeline's ``Counters``,
``SinkCounters``, the CRM worker's stats) are read when Prometheus scrapes, by collectors: the
hot path does no extra bookkeeping. The one new measurement is the InfluxDB write latency, a
histogram observed once per write (a micro-batch), not per sample. Consumer lag is the
partition's high-water mark minus the offset the agent committed, per assigned partition.

The Faust workers serve ``/metrics``, ``/healthz`` and ``/readyz`` on their web server
(``install_web``); the bridge uses ``core.observe.ObsServer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.observe import readiness

AsyncCheck = Callable[[], Awaitable[tuple[bool, str]]]
# InfluxDB write requests take ms on a LAN, seconds when it is struggling, up to the retries
SINK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FnCollector(Collector):
    """A collector whose metrics a function builds at scrape time."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterator[Metric]:
        yield from self.fn()


def counter(name: str, doc: str, value: float, **labels: str) -> CounterMetricFamily:
    """One counter sample (``name`` without ``_total``; prometheus_client adds it)."""
    m = CounterMetricFamily(name, doc, labels=list(labels))
    m.add_metric(list(labels.values()), value)
    return m


def gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    m = GaugeMetricFamily(name, doc, labels=list(labels))
    m.add_metric(list(labels.values()), value)
    return m


def by_label(
    name: str, doc: str, label: str, values: Mapping[str, float], **fixed: str
) -> CounterMetricFamily:
    """A counter family with one sample per key of ``values`` (e.g. per dead-letter reason)."""
    m = CounterMetricFamily(name, doc, labels=[*fixed, label])
    for key, v in sorted(values.items()):
        m.add_metric([*fixed.values(), key], v)
    return m


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


# ----- ingest bridge -----------------------------------------------------------------------
class _BridgeCounters(Protocol):
    @property
    def lock(self) -> AbstractContextManager[Any]: ...
    @property
    def received(self) -> int: ...
    @property
    def forwarded(self) -> int: ...
    @property
    def rate_limited(self) -> int: ...
    @property
    def reasons(self) -> Mapping[str, int]: ...


class BridgeView(Protocol):
    """What the metrics read of a bridge (``stream.bridge.IngestBridge``)."""

    @property
    def name(self) -> str: ...
    @property
    def counters(self) -> _BridgeCounters: ...
    def in_flight(self) -> int: ...
    def mqtt_up(self) -> bool: ...
    def kafka_ok(self) -> tuple[bool, str]: ...


def bridge_registry(bridge: BridgeView) -> CollectorRegistry:
    """``carpulse_bridge_*`` from the bridge's own counters, labelled with its name."""
    c = bridge.counters

    def collect() -> Iterable[Metric]:
        with c.lock:
            received, forwarded, limited = c.received, c.forwarded, c.rate_limited
            reasons = {r: n for r, n in c.reasons.items() if r != "rate_limited"}
        b = bridge.name
        yield counter(
            "carpulse_bridge_messages_received", "MQTT messages taken in.", received, bridge=b
        )
        yield counter(
            "carpulse_bridge_messages_forwarded",
            "Messages produced to their Kafka topic (acknowledged by Kafka).",
            forwarded,
            bridge=b,
        )
        yield by_label(
            "carpulse_bridge_dead_letters",
            "Messages sent to the dead-letter topic, by reason.",
            "reason",
            reasons,
            bridge=b,
        )
        yield counter(
            "carpulse_bridge_rate_limited",
            "Messages dropped because their device was over its rate limit.",
            limited,
            bridge=b,
        )
        yield gauge(
            "carpulse_bridge_in_flight_messages",
            "MQTT messages handed to Kafka and not acknowledged yet.",
            bridge.in_flight(),
            bridge=b,
        )
        yield gauge(
            "carpulse_bridge_mqtt_connected",
            "1 while connected to MQTT.",
            bridge.mqtt_up(),
            bridge=b,
        )
        yield gauge(
            "carpulse_bridge_kafka_up",
            "1 while the Kafka producer runs and its last send did not fail.",
            bridge.kafka_ok()[0],
            bridge=b,
        )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FnCollector(collect))
    return registry


# ----- Faust workers -----------------------------------------------------------------------
def consumer_lag(app: Any) -> dict[tuple[str, int], int]:
    """Per assigned partition: high-water mark minus the offset the agent committed last."""
    consumer = app._consumer  # not .consumer: that would make one (and an event loop)
    if consumer is None:
        return {}
    committed: dict[Any, int] = {}
    for tp, off in list(consumer._committed_offset.items()):
        if off is not None:
            committed[tp] = int(off)
    for guard in list(getattr(app, "carpulse_offset_guards", ())):
        for tp, off in list(guard.committed.items()):
            committed[tp] = max(committed.get(tp, -1), int(off))
    out: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        try:
            high = consumer.highwater(tp)
        except Exception:  # not fetched yet after an assignment
            continue
        if high is None or tp not in committed:
            continue
        out[(tp.topic, tp.partition)] = max(0, int(high) - committed[tp])
    return out


def consumer_metrics(app: Any, prefix: str) -> Iterable[Metric]:
    """``<prefix>_consumer_lag_messages`` per topic/partition and the assigned partitions."""
    try:
        consumer = app._consumer  # None until the worker started
        assigned = 0 if consumer is None else len(consumer.assignment())
        lag = consumer_lag(app)
    except Exception:  # the consumer is not up yet
        assigned, lag = 0, {}
    yield gauge(
        f"{prefix}_assigned_partitions", "Kafka partitions assigned to this worker.", assigned
    )
    m = GaugeMetricFamily(
        f"{prefix}_consumer_lag_messages",
        "Records not yet committed by this worker, per partition (high-water mark minus the "
        "committed offset).",
        labels=["topic", "partition"],
    )
    for (topic, partition), n in sorted(lag.items()):
        m.add_metric([topic, str(partition)], n)
    yield m


def stream_registry(app: Any) -> CollectorRegistry:
    """``carpulse_stream_*`` of a stream worker built by ``stream.app.build_app``."""
    registry = CollectorRegistry(auto_describe=False)
    writer = app.carpulse_sink
    latency = Histogram(
        "carpulse_stream_sink_write_seconds",
        "Time of one InfluxDB write (a micro-batch, its retries included).",
        buckets=SINK_BUCKETS,
        registry=registry,
    )
    writer.sink.observe_write = latency.observe
    p = "carpulse_stream"

    def collect() -> Iterable[Metric]:
        tc = app.carpulse_pipeline.counters
        ev = dict(app.carpulse_event_stats)
        sc = writer.counters
        sink = writer.sink
        yield counter(f"{p}_records", "Telemetry records (Kafka messages) taken in.", tc.records)
        yield counter(f"{p}_samples", "Telemetry samples accepted.", tc.samples)
        yield counter(
            f"{p}_duplicates", "Telemetry records dropped as already seen.", tc.duplicates
        )
        dead = CounterMetricFamily(
            f"{p}_dead_letters",
            "Records or lines sent to the dead-letter topic, by source and reason.",
            labels=["source", "reason"],
        )
        for reason, n in sorted(tc.reasons.items()):
            dead.add_metric(["telemetry", reason], n)
        dead.add_metric(["events", "any"], ev.get("dead_lettered", 0))
        for reason, n in sorted(sc.reasons.items()):
            if reason != "parked":
                dead.add_metric(["sink", reason], n)
        yield dead
        yield counter(f"{p}_events", "Vehicle events taken in.", ev.get("events", 0))
        yield counter(f"{p}_alerts", "Alerts published (crash, DTC...).", ev.get("alerts", 0))
        yield counter(f"{p}_anomalies", "Anomalies detected.", tc.anomalies)
        yield counter(
            f"{p}_anomaly_unwatched",
            "Samples of watched signals not scored: stream.anomaly.max_slots reached.",
            tc.anomaly_unwatched,
        )
        yield counter(f"{p}_predictions", "Maintenance predictions published.", tc.predictions)
        yield counter(
            f"{p}_battery_rejected",
            "12 V, cell-voltage or state-of-health readings dropped as impossible.",
            tc.battery_rejected,
        )
        yield counter(f"{p}_trips", "Trips closed.", tc.trips)
        yield counter(f"{p}_sink_lines_written", "Lines InfluxDB accepted.", sc.written)
        yield counter(f"{p}_sink_lines_rejected", "Lines InfluxDB refused.", sc.rejected)
        yield counter(
            f"{p}_sink_lines_parked", "Lines parked on the retry topic (outage).", sc.parked_lines
        )
        yield counter(f"{p}_sink_lines_replayed", "Parked lines written later.", sc.replayed_lines)
        yield counter(f"{p}_sink_requests", "InfluxDB write requests.", sink.requests)
        yield counter(f"{p}_sink_retries", "InfluxDB write requests retried.", sink.retries)
        yield gauge(f"{p}_sink_broken", "1 while InfluxDB writes are failing.", int(sink.broken))
        yield from consumer_metrics(app, p)

    registry.register(FnCollector(collect))
    return registry


def crm_registry(app: Any) -> CollectorRegistry:
    """``carpulse_crm_*`` of a CRM worker built by ``crm.agents.build_crm_app``."""
    p = "carpulse_crm"

    def collect() -> Iterable[Metric]:
        stats = dict(app.carpulse_crm_stats)
        yield counter(f"{p}_records", "Kafka records taken in.", stats.get("records", 0))
        yield counter(f"{p}_events", "CRM events handled.", stats.get("events", 0))
        yield by_label(
            f"{p}_rule_firings",
            "Rule effects fired, by rule.",
            "rule",
            {k[6:]: v for k, v in stats.items() if k.startswith("fired:")},
        )
        yield counter(
            f"{p}_events_parked", "Events parked (unknown vehicle...).", stats.get("parked", 0)
        )
        yield by_label(
            f"{p}_dead_letters",
            "Records sent to the dead-letter topic, by reason.",
            "reason",
            {k[5:]: v for k, v in stats.items() if k.startswith("dead_") and k != "dead_lettered"},
        )
        yield by_label(
            f"{p}_deliveries",
            "Outbox deliveries (e-mail, webhook) by outcome.",
            "outcome",
            {k[7:]: v for k, v in stats.items() if k.startswith("outbox_")},
        )
        yield counter(
            f"{p}_job_errors",
            "Periodic jobs or privacy syncs that failed.",
            stats.get("periodic_errors", 0) + stats.get("privacy_errors", 0),
        )
        yield from consumer_metrics(app, p)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FnCollector(collect))
    return registry


def add_faust_sensor(app: Any, registry: CollectorRegistry, prefix: str) -> None:
    """Faust's own Prometheus sensor (``faust.sensors.prometheus``) into ``registry`` as
    ``<prefix>_faust_*``; its own page is ``/faust/metrics`` (the same registry as ``/metrics``)."""
    from faust.sensors.prometheus import setup_prometheus_sensors

    setup_prometheus_sensors(app, "/faust/metrics", registry, name_prefix=f"{prefix}_faust")


async def kafka_assigned(app: Any) -> tuple[bool, str]:
    """Ready when the worker's consumer has partitions and no rebalance is running."""
    if app._consumer is None:
        return False, "consumer not started"
    if app.rebalancing:
        return False, "rebalancing"
    n = len(app._consumer.assignment())
    return (n > 0), f"{n} partition(s) assigned"


def install_web(app: Any, registry: CollectorRegistry, checks: Mapping[str, AsyncCheck]) -> None:
    """``/metrics``, ``/healthz`` and ``/readyz`` pages on a Faust app's web server."""

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, ctype = render(registry)
        return web.bytes(body, headers={"Content-Type": ctype})

    @app.page("/healthz")
    async def healthz_page(web: Any, request: Any) -> Any:
        return web.json({"ok": True})

    @app.page("/readyz")
    async def readyz_page(web: Any, request: Any) -> Any:
        results = {}
        for name, check in checks.items():
            try:
                results[name] = await asyncio.wait_for(check(), 5.0)
            except Exception as err:  # a failing check is a reason, never a 500
                results[name] = (False, f"{type(err).__name__}: {err}"[:300])
        status, body = readiness(results)
        return web.json(body, status=status)
