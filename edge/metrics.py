"""Prometheus metrics and readiness of the edge agent: ``carpulse_edge_*`` on ``[metrics] edge_port``.

Everything is read from the counters the agent, its durable queue and its sources keep, when
Prometheus scrapes; the agent's loop does nothing more. Ready when the MQTT session is up or,
offline, when the queue can still be written (store and forward).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.observe import ObsServer

if TYPE_CHECKING:
    from edge.queue import DurableQueue
    from edge.sources.base import Source

DROPS = ("evicted", "rejected", "expired")


class _Link(Protocol):
    @property
    def connected(self) -> bool: ...


class AgentView(Protocol):
    """What the metrics read of an agent (``edge.agent.EdgeAgent``; also ``actuators`` and
    ``intrusion`` when it has them)."""

    @property
    def device_id(self) -> str: ...
    @property
    def stats(self) -> Mapping[str, Any]: ...
    @property
    def queue(self) -> DurableQueue: ...
    @property
    def sources(self) -> Sequence[Source]: ...
    @property
    def pub(self) -> _Link: ...


class _AgentCollector(Collector):
    def __init__(self, agent: AgentView) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        a, p = self.agent, "carpulse_edge"
        dev = a.device_id
        st = dict(a.stats)
        q = a.queue.counters

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(f"{p}_{name}", doc, labels=["device"])
            m.add_metric([dev], value)
            return m

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            m = GaugeMetricFamily(f"{p}_{name}", doc, labels=["device"])
            m.add_metric([dev], value)
            return m

        yield counter("samples_in", "Samples read from the sources.", st["samples_in"])
        yield counter("batches_enqueued", "Telemetry batches written to the queue.", st["batches"])
        yield counter("events_enqueued", "Events written to the queue.", st["events"])
        yield counter("messages_published", "Messages handed to MQTT.", st["published"])
        yield counter("messages_acked", "Messages the broker acknowledged.", st["acked"])
        yield gauge("queue_rows", "Messages waiting in the durable queue.", len(a.queue))
        yield gauge("queue_bytes", "Payload bytes in the durable queue.", a.queue.nbytes)
        yield gauge("queue_max_bytes", "The queue's byte cap.", a.queue.max_bytes)
        drops = CounterMetricFamily(
            f"{p}_queue_dropped",
            "Messages the queue dropped, by reason (evicted: over the cap; rejected; expired).",
            labels=["device", "reason"],
        )
        for reason in DROPS:
            drops.add_metric([dev, reason], q.get(reason).rows)
        yield drops
        errors = CounterMetricFamily(
            f"{p}_source_errors",
            "Source reads that failed, by source.",
            labels=["device", "source"],
        )
        for src in a.sources:
            errors.add_metric([dev, src.name], src.counters.errors)
        yield errors
        dtc = CounterMetricFamily(
            f"{p}_dtc_polls",
            "DTC polls of OBD sources, by outcome (ok: a usable answer; error: none, counted).",
            labels=["device", "source", "outcome"],
        )
        for src in a.sources:
            c = getattr(src, "dtc_counters", None)
            if c is not None:
                dtc.add_metric([dev, src.name, "ok"], c["polls"] - c["errors"])
                dtc.add_metric([dev, src.name, "error"], c["errors"])
        yield dtc
        acts = CounterMetricFamily(
            f"{p}_actions",
            "Actions carried out by actuators (lock, unlock) and failures, by actuator.",
            labels=["device", "actuator", "action"],
        )
        for act in getattr(a, "actuators", []):
            for action in (*act.actions, "failed"):
                acts.add_metric([dev, act.name, action], act.counters[action])
        yield acts
        ids = CounterMetricFamily(
            f"{p}_intrusion",
            "CAN intrusion detector: frames scored, flagged, incidents, events sent and "
            "suppressed by the rate limit, by source ([edge.intrusion]).",
            labels=["device", "source", "what"],
        )
        for w in getattr(a, "intrusion", []):
            for what in ("frames", "flagged", "incidents", "events", "suppressed"):
                ids.add_metric([dev, w.source, what], w.counters[what])
        yield ids
        yield gauge("mqtt_connected", "1 while the MQTT session is up.", int(a.pub.connected))


def start_obs(agent: AgentView, host: str, port: int) -> ObsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` for ``agent`` on ``host:port``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AgentCollector(agent))

    def mqtt() -> tuple[bool, str]:
        return bool(agent.pub.connected), "MQTT session up" if agent.pub.connected else "offline"

    def ready() -> tuple[bool, str]:
        up, detail = mqtt()
        if up:
            return True, detail
        ok, why = agent.queue.writable()
        return ok, f"offline, {why}" if ok else f"offline and {why}"

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return ObsServer(host, port, render, {"mqtt_or_queue": ready}).start()
