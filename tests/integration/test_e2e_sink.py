"""The worker through an InfluxDB outage (retry topic + retry agent), and ``carpulse bench e2e``."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from carpulse.local_files import local_device_mqtt
from carpulse.stack import Stack
from core.topics import KAFKA_INFLUX_RETRY, device_topic
from core.wire import Samples, TelemetryBatch, encode_telemetry
from edge.publisher import MqttPublisher
from tests.faultproxy import FaultProxy
from tests.integration.helpers import influx_query, pipeline, uncommitted, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _batches(device: str, n: int, t0: int) -> list[TelemetryBatch]:
    rng = np.random.default_rng(11)
    names = ["Vehicle.Speed", "Vehicle.Powertrain.Rpm"]
    out = []
    for seq in range(n):
        ts = t0 + seq * 1_000_000 + np.arange(200) * 5000
        vals = np.round(rng.normal(50, 10, 400), 3)
        vals[7] = np.nan  # one NaN per batch: dead-lettered, never written
        out.append(
            TelemetryBatch(
                device,
                "boot",
                seq,
                Samples.from_columns(names, np.tile([0, 1], 200), np.repeat(ts, 2), vals),
            )
        )
    return out


def test_outage_parks_and_replays_through_the_worker(local_stack: Stack, tmp_path: Path) -> None:
    s = local_stack.settings  # type: ignore[attr-defined]
    device = "e2e-outage"
    t0 = (int(time.time()) - 600) * 1_000_000
    batches = _batches(device, 30, t0)
    expected = {
        (s_.names[int(i)], int(t)): float(v)
        for b in batches
        for s_ in [b.samples]
        for i, t, v in zip(s_.sig, s_.ts_us, s_.value, strict=True)
        if np.isfinite(v)
    }
    influx = f"http://{local_stack.s.host}:{local_stack.s.influx_port}"
    with FaultProxy(influx) as proxy:
        proxy.go_down()  # InfluxDB "down" (503) from the start: everything goes to the retry topic
        app_id = f"carpulse-stream-test-{uuid.uuid4().hex[:8]}"
        env = {
            "CARPULSE_STREAM__APP_ID": app_id,  # the worker's consumer group
            "CARPULSE_INFLUX__URL": proxy.url,
            "CARPULSE_INFLUX__MAX_RETRIES": "1",
            "CARPULSE_INFLUX__TIMEOUT_S": "2",
        }
        with pipeline(local_stack, tmp_path, **env):
            pub = MqttPublisher(local_device_mqtt(s, device), boot_id="boot")
            pub.connect(announce=False)
            topic = device_topic(device, "telemetry")

            def parked() -> bool:  # republish until the worker has seen the writes fail
                for b in batches:
                    pub.publish(topic, encode_telemetry(b))
                pub.flush()
                return sum(1 for _, a, _ in proxy.log if a == "down") >= 3

            wait_for(parked, 150, "the worker trying InfluxDB while it is down", interval=3)
            pub.close()
            time.sleep(3)
            proxy.recover()

            def landed() -> dict[tuple[str, int], float] | None:
                series = influx_query(
                    local_stack, f"SELECT * FROM telemetry WHERE device='{device}'"
                )
                if not series:
                    return None
                cols = series[0]["columns"]
                got = {
                    (c, row[0]): v
                    for row in series[0]["values"]
                    for c, v in zip(cols[1:], row[1:], strict=True)
                    if c != "device" and v is not None
                }
                return got if len(got) >= len(expected) else None

            try:
                got = wait_for(landed, 120, "the parked batches replayed into InfluxDB")
                # acks off on the retry topic: the agent commits each replayed record itself
                retry = [KAFKA_INFLUX_RETRY]
                wait_for(lambda: uncommitted(local_stack, app_id, retry) == 0, 30, "commits")
            except AssertionError:
                logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
                raise AssertionError(f"pipeline logs: {logs}") from None
    assert got == expected  # nothing lost, nothing doubled, the NaNs left out


@pytest.mark.serial  # throughput floors: alone, not beside other tests
def test_bench_e2e_reports_the_figures() -> None:
    from carpulse.bench.e2e import bench_e2e

    out = bench_e2e(
        [
            "--vehicles",
            "2",
            "--max-steps",
            "1",
            "--step-seconds",
            "2",
            "--start-rate",
            "5000",
            "--latency-seconds",
            "2",
            "--ceiling-lines",
            "20000",
            "--faust-only-samples",
            "50000",
            "--crm-events",
            "300",
            "--crm-vehicles",
            "20",
        ]
    )
    for key in (
        "samples_per_s",
        "influx_ceiling_samples_per_s",
        "ratio",
        "p50_ms",
        "p99_ms",
        "faust_only_samples_per_s",
    ):
        assert key in out
    assert out["influx_ceiling_samples_per_s"] > 10_000
    assert out["faust_only_samples_per_s"] > 1_000
    assert out["steps"][0]["achieved"] > 2_000
    step = out["steps"][0]
    per = step["cpu_us_per_sample"]
    # /proc counts CPU in 10 ms ticks: at this tiny step the bridge may show none
    assert per["bridge"] >= 0 and per["worker"] > 0 and per["influxdb"] > 0
    assert step["own_cpu_ratio"] == pytest.approx(
        (per["bridge"] + per["worker"]) / per["influxdb"], abs=2e-3
    )
    assert out["own_cpu_ratio"] == step["own_cpu_ratio"]  # the only step is the headline
    assert 0 < out["p50_ms"] <= out["p99_ms"] < 30_000
    # the CRM worker took all 300 events, none parked, and its CPU per event was counted
    assert out["crm_events"] == 300 and out["crm_parked"] == 0
    assert out["crm_cpu_us_per_event"] > 0 and out["crm_events_per_s"] > 0
    assert out["crm_engine_alone"]["events"] == 300
    assert out["crm_overhead_ratio"] == pytest.approx(
        out["crm_cpu_us_per_event"] / out["crm_engine_alone"]["cpu_us_per_event"], rel=0.01
    )
    if out["samples_per_s"]:
        assert out["ratio"] == pytest.approx(
            out["samples_per_s"] / out["influx_ceiling_samples_per_s"], abs=1e-3
        )
