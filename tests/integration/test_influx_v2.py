"""The v2 sink (influxdb-client) against a real ``/api/v2/write`` server: Debian's VictoriaMetrics.

VictoriaMetrics keeps raw samples, so it runs with ``-dedup.minScrapeInterval=1ms``: one sample
per series and millisecond, which is InfluxDB's "same series + timestamp = same point" at the
millisecond precision VictoriaMetrics stores (the test data sits on whole milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from carpulse.stack import free_port
from core.config import InfluxSettings
from stream.lines import batch_lines
from stream.sinks.influx import InfluxV2Sink
from tests.faultproxy import FaultProxy
from tests.integration.test_influx_v1 import sample_batch

pytestmark = pytest.mark.integration


class Victoria:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> bytes:
        url = f"{self.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.read()  # type: ignore[no-any-return]

    def export(self, device: str) -> dict[tuple[str, int], list[float]]:
        """Every stored sample of ``device`` as ``(field, ts_us) -> [values]`` (duplicates show)."""
        self.get("/internal/force_flush")
        raw = self.get("/api/v1/export", **{"match[]": f'{{device="{device}"}}'})
        out: dict[tuple[str, int], list[float]] = {}
        for row in raw.decode().splitlines():
            doc = json.loads(row)
            name = doc["metric"]["__name__"].removeprefix("telemetry_")
            for ts_ms, value in zip(doc["timestamps"], doc["values"], strict=True):
                out.setdefault((name, ts_ms * 1000), []).append(value)
        return out


@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victoria]:
    with run_victoria(tmp_path_factory.mktemp("victoria")) as vm:
        yield vm


@contextlib.contextmanager
def run_victoria(root: Path) -> Iterator[Victoria]:
    """Debian's victoria-metrics on a free port, data under ``root`` (also tests/contract)."""
    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.fail("victoria-metrics is missing: apt-get install -y victoria-metrics (make setup)")
    port = free_port()
    with open(root / "victoria.log", "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-storageDataPath={root / 'data'}",
                "-dedup.minScrapeInterval=1ms",
                "-retentionPeriod=100y",
                "-loggerLevel=ERROR",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    vm = Victoria(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if vm.get("/health").strip() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"victoria-metrics did not start: {(root / 'victoria.log').read_text()}"
                )
            time.sleep(0.1)
        yield vm
    finally:
        proc.terminate()
        proc.wait(20)


def v2_settings(url: str) -> InfluxSettings:
    return InfluxSettings.model_validate(
        {
            "api": "v2",
            "url": url,
            "org": "carpulse",
            "bucket": "carpulse",
            "token": "unused-by-victoria",
            "timeout_s": 1.0,
            "batch_lines": 400,
            "max_retries": 8,
        }
    )


def test_v2_writes_source_timestamps_exactly(victoria: Victoria) -> None:
    batch = sample_batch("v2-plain", 2000, seed=3)
    sink = InfluxV2Sink(v2_settings(victoria.url))

    async def run() -> int:
        await sink.start()
        try:
            return (await sink.write(batch_lines(batch, "telemetry"))).written
        finally:
            await sink.close()

    assert asyncio.run(run()) == 500
    got = victoria.export("v2-plain")
    assert got == {(n, t): [v] for n, t, v in batch.samples.records()}


def test_v2_through_faults_no_loss_no_duplicates(victoria: Victoria) -> None:
    batch = sample_batch("v2-faults", 6000, seed=4)
    lines = batch_lines(batch, "telemetry")
    schedule = ["503", "429", "stall_after", "ok", "stall", "503", "stall_after", "429"]
    with FaultProxy(victoria.url, schedule, stall_s=1.5, retry_after="0.1") as proxy:
        sink = InfluxV2Sink(v2_settings(proxy.url))

        async def run() -> int:
            await sink.start()
            try:
                return (await sink.write(lines)).written
            finally:
                await sink.close()

        written = asyncio.run(run())
    assert written == len(lines)
    assert {"429", "503", "stall", "stall_after"} <= {a for _, a, _ in proxy.log}
    assert sink.retries == 7
    assert proxy.forwarded_writes == -(-len(lines) // 400) + 2  # both stall_after landed twice
    got = victoria.export("v2-faults")
    assert got == {(n, t): [v] for n, t, v in batch.samples.records()}


def test_v2_partial_write_dead_letters_only_refused_lines(victoria: Victoria) -> None:
    batch = sample_batch("v2-partial", 400, seed=5)
    lines = batch_lines(batch, "telemetry")
    bad = "telemetry,device=v2-partial x=1.5 1700000000001000 trailing garbage"
    with FaultProxy(victoria.url, refuse="trailing garbage") as proxy:
        sink = InfluxV2Sink(v2_settings(proxy.url))

        async def run() -> tuple[int, list[tuple[str, str]]]:
            await sink.start()
            try:
                result = await sink.write([*lines[:37], bad, *lines[37:]])
                return result.written, result.rejected
            finally:
                await sink.close()

        written, rejected = asyncio.run(run())
    assert written == len(lines)
    assert [line for line, _ in rejected] == [bad]
    assert "HTTP 400" in rejected[0][1] and "unable to parse" in rejected[0][1]
    assert sink.retries == 0
    got = victoria.export("v2-partial")
    assert got == {(n, t): [v] for n, t, v in batch.samples.records()}


def test_v2_families_go_to_their_buckets_and_a_server_without_the_bucket_api_still_writes(
    victoria: Victoria, tmp_path: Path
) -> None:
    """VictoriaMetrics has /api/v2/write but no bucket API: the sink says so once and writes;
    `influx retention apply` is one clear error. (InfluxDB 2.x itself is not on this machine.)"""
    from typer.testing import CliRunner

    from carpulse.cli import app
    from core.errors import SinkError
    from stream.pipeline import summary_lines
    from stream.retention import v2_apply

    now = int(time.time() - 3600) * 1_000_000  # VictoriaMetrics hides the last 30 s from search
    lines = [
        f"telemetry,device=v2-fam Vehicle.Speed=1.5 {now}",
        summary_lines("trips", "v2-fam-vin", now, {"start_us": now - 10**6, "end_us": now,
                                                   "dist_km": 2.5}),
        summary_lines("daily", "v2-fam-vin", now, {"day": 20000.0, "dist_km": 7.5}),
    ]  # fmt: skip

    async def run(url: str) -> int:
        sink = InfluxV2Sink(v2_settings(url))
        await sink.start()
        try:
            return (await sink.write(lines)).written
        finally:
            await sink.close()

    with FaultProxy(victoria.url, []) as proxy:
        assert asyncio.run(run(proxy.url)) == 3
    buckets = {q["bucket"]: body.decode().splitlines() for q, body in proxy.writes}
    assert buckets == {"carpulse": [lines[0]], "carpulse_trips": [lines[1]],
                       "carpulse_daily": [lines[2]]}  # fmt: skip
    victoria.get("/internal/force_flush")
    raw = victoria.get("/api/v1/export", **{"match[]": '{vin="v2-fam-vin"}'}).decode()
    names = sorted(json.loads(row)["metric"]["__name__"] for row in raw.splitlines())
    assert names == ["daily_day", "daily_dist_km", "trips_dist_km", "trips_duration_s"]
    with pytest.raises(SinkError, match=r"bucket API at .*HTTP 4"):
        v2_apply(v2_settings(victoria.url), "unused")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[influx]\napi = "v2"\nurl = "{victoria.url}"\n')
    res = CliRunner().invoke(app, ["--config", str(conf), "influx", "retention", "apply"])
    assert res.exit_code != 0 and "bucket API" in str(res.exception)
    res = CliRunner().invoke(app, ["--config", str(conf), "backup", str(tmp_path / "bk")])
    assert res.exit_code != 0 and "influx backup" in str(res.exception)
