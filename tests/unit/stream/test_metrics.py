"""The worker's and the CRM's counters reach /metrics as ``carpulse_*`` families (read at scrape)."""

from __future__ import annotations

import asyncio
from collections import Counter

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.config import CarpulseSettings
from stream.app import build_app
from stream.metrics import crm_registry, stream_registry


def _samples(registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_stream_metrics_read_the_pipeline_and_sink_counters() -> None:
    app = build_app(CarpulseSettings())
    reg = stream_registry(app)
    before = _samples(reg)
    assert before[("carpulse_stream_records_total", ())] == 0
    c = app.carpulse_pipeline.counters  # type: ignore[attr-defined]
    c.records += 7
    c.samples += 7000
    c.count("unknown_device", 2)
    app.carpulse_event_stats["alerts"] += 1  # type: ignore[attr-defined]
    sink = app.carpulse_sink.sink  # type: ignore[attr-defined]
    sink.retries += 3
    assert sink.observe_write is not None  # the latency histogram is wired to the sink
    sink.observe_write(0.02)
    after = _samples(reg)
    assert after[("carpulse_stream_records_total", ())] == 7
    assert after[("carpulse_stream_samples_total", ())] == 7000
    key = (("reason", "unknown_device"), ("source", "telemetry"))
    assert after[("carpulse_stream_dead_letters_total", key)] == 2
    assert after[("carpulse_stream_alerts_total", ())] == 1
    assert after[("carpulse_stream_sink_retries_total", ())] == 3
    assert after[("carpulse_stream_sink_write_seconds_count", ())] == 1
    assert after[("carpulse_stream_sink_write_seconds_bucket", (("le", "0.025"),))] == 1
    # no consumer yet: no partitions, no lag, and the scrape still works
    assert after[("carpulse_stream_assigned_partitions", ())] == 0


def test_sink_write_time_is_observed_once_per_write_even_when_it_fails() -> None:
    from core.config import InfluxSettings
    from core.errors import SinkError
    from stream.sinks.influx import InfluxV1Sink

    seen: list[float] = []
    sink = InfluxV1Sink(InfluxSettings(url="http://127.0.0.1:1", max_retries=0, timeout_s=1))
    sink.observe_write = seen.append

    async def go() -> None:
        await sink.start()
        try:
            await sink.write(["m f=1 1"])
        finally:
            await sink.close()

    loop = asyncio.new_event_loop()  # not asyncio.run: it would drop the loop Faust set
    try:
        loop.run_until_complete(go())
    except SinkError:
        pass
    finally:
        loop.close()
    assert len(seen) == 1 and seen[0] >= 0


def test_crm_metrics_count_firings_by_rule_and_dead_letters_by_reason() -> None:
    class App:  # what crm_registry reads of a CRM worker's Faust app
        _consumer = None

        def __init__(self) -> None:
            self.carpulse_crm_stats: Counter[str] = Counter(
                {"records": 5, "events": 4, "fired": 3, "fired:service_due": 2, "fired:crash": 1,
                 "dead_lettered": 1, "dead_crm_bad_record": 1, "outbox_sent": 2}
            )  # fmt: skip

    out = _samples(crm_registry(App()))
    assert out[("carpulse_crm_events_total", ())] == 4
    assert out[("carpulse_crm_rule_firings_total", (("rule", "service_due"),))] == 2
    assert out[("carpulse_crm_rule_firings_total", (("rule", "crash"),))] == 1
    assert out[("carpulse_crm_dead_letters_total", (("reason", "crm_bad_record"),))] == 1
    assert out[("carpulse_crm_deliveries_total", (("outcome", "sent"),))] == 2
    assert out[("carpulse_crm_assigned_partitions", ())] == 0  # no consumer: still scrapes


def test_faust_sensor_joins_the_same_registry_when_asked() -> None:
    from faust.sensors.prometheus import PrometheusMonitor

    from stream.metrics import add_faust_sensor

    app = build_app(CarpulseSettings())
    assert not isinstance(app.monitor, PrometheusMonitor)  # off by default: no per-record cost
    reg = stream_registry(app)
    add_faust_sensor(app, reg, "carpulse_stream")
    assert isinstance(app.monitor, PrometheusMonitor)
    names = {fam.name for fam in reg.collect()}
    assert "carpulse_stream_faust_messages_received" in names
    assert "carpulse_stream_records" in names  # ours beside Faust's, one /metrics
