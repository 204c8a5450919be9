"""A real Prometheus scrapes the five services while telemetry flows; health says why it is not ready.

Bridge, stream worker, CRM worker, dashboard and an edge agent (tick source) run as processes with
``--log-format json`` on the throwaway stack; ``prometheus`` (Debian package) runs on a free port
with a temporary config and storage dir, loads ``deploy/prometheus/alerts.yml`` and scrapes them
every second. Through its HTTP query API: every target is up, the message counters rose, every
panel of the pipeline-metrics Grafana dashboard evaluates, every alert rule is healthy. Then each
service's log holds only JSON lines, and a bridge without Kafka and a worker without InfluxDB
answer ``/readyz`` with 503 and the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from carpulse.stack import Stack, free_port, stop_processes
from tests.conftest import IN_CI
from tests.integration.helpers import pipeline_env, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
JOBS = ("bridge", "stream", "crm", "dashboard", "edge")


def _prometheus_bin() -> str:
    found = shutil.which("prometheus")
    if found is None:
        msg = "prometheus not found (apt-get install prometheus; `make setup` does)"
        if IN_CI:
            pytest.fail(msg + " and CI=true forbids skipping")
        pytest.skip(msg)
    return found


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


class Prom:
    """A real Prometheus on a free port; ``query`` goes through its HTTP API."""

    def __init__(self, tmp: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        jobs = "".join(
            f"  - job_name: carpulse-{job}\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{port}']\n"
            for job, port in targets.items()
        )
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {ROOT / 'deploy/prometheus/alerts.yml'}\n"
            f"scrape_configs:\n{jobs}"
        )
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [_prometheus_bin(), f"--config.file={config}",
                 f"--storage.tsdb.path={tmp / 'prom-data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: http_get(self.base + "/-/ready")[0] == 200, 60, "Prometheus ready")

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.base}/api/v1/{path}?" + urllib.parse.urlencode(params))
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", body
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def close(self) -> None:
        stop_processes([self.proc])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Logs (stderr) to ``log``; what a command prints as its result (stdout) beside it."""
    with open(log, "wb") as err, open(log.with_suffix(".out"), "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "carpulse", "--log-format", "json", *args],
            env=env, stdout=out, stderr=err, cwd=log.parent,
        )  # fmt: skip


def _crm_db(url: str) -> None:
    """A migrated CRM with the coupon templates the shipped rules need."""
    from crm.migrate import upgrade
    from crm.schema import CouponTemplate
    from crm.store import CrmStore

    store = CrmStore.from_url(url)
    upgrade(store.engine)
    with store.tx() as s:
        s.add(
            CouponTemplate(code="maintenance", title_zh="保养券", title_en="Service", valid_days=60)
        )
        s.add(
            CouponTemplate(code="tier-welcome", title_zh="礼券", title_en="Welcome", valid_days=90)
        )
    store.engine.dispose()


def _edge_config(stack: Stack, tmp: Path, device: str) -> Path:
    stack.provision_device(device)
    text = stack.config_file.read_text()
    text = "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("state_dir"))
    text = text.replace(
        "[edge]\n",
        f'[edge]\ndevice_id = "{device}"\nstate_dir = "{tmp / "edge"}"\nbatch_max_interval_s = 0.5\n',
        1,
    )
    text += '\n[[edge.sources]]\ntype = "tick"\nsignals = 3\nhz = 20\n'
    path = tmp / "edge.toml"
    path.write_text(text)
    return path


def _json_lines(log: Path, component: str) -> int:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in lines:
        try:
            doc = json.loads(ln)
        except ValueError:
            raise AssertionError(f"{log.name}: not a JSON line: {ln[:300]!r}") from None
        assert {"ts", "level", "logger", "message", "component"} <= set(doc), ln
        assert doc["component"] == component, ln
    return len(lines)


def test_prometheus_scrapes_every_service_while_telemetry_flows(
    local_stack: Stack, tmp_path: Path
) -> None:
    ports = {job: free_port() for job in JOBS}
    env = pipeline_env(
        local_stack,
        CARPULSE_STREAM__WEB_PORT=str(ports["stream"]),
        CARPULSE_METRICS__BRIDGE_PORT=str(ports["bridge"]),
        CARPULSE_METRICS__CRM_PORT=str(ports["crm"]),
        CARPULSE_METRICS__EDGE_PORT=str(ports["edge"]),
        CARPULSE_STREAM__SESSION_TIMEOUT_S="6",
        CARPULSE_METRICS__FAUST_SENSOR="true",  # Faust's own sensor beside ours, on the real path
        CARPULSE_NUMBA_CACHE="1",
        NUMBA_CACHE_DIR=str(tmp_path / "numba"),
    )
    crm_url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    _crm_db(crm_url)
    device = f"obs-car-{uuid.uuid4().hex[:6]}"
    edge_toml = _edge_config(local_stack, tmp_path, device)
    commands = {
        "bridge": ["stream", "bridge", "--name", "obs-bridge"],
        "stream": ["stream", "worker", "--loglevel", "info"],
        "crm": ["crm", "worker", "--db", crm_url, "--interval", "1", "--loglevel", "info"],
        "dashboard": ["dashboard", "--port", str(ports["dashboard"]), "--crm-url", crm_url,
                      "--insecure-cookies"],
        "edge": ["edge", "run", "--config", str(edge_toml)],
    }  # fmt: skip
    procs = {job: _spawn(args, env, tmp_path / f"{job}.log") for job, args in commands.items()}
    prom: Prom | None = None
    try:
        prom = Prom(tmp_path, ports)

        def all_up() -> bool:
            up = {r["metric"]["job"]: r["value"][1] for r in prom.query("up")}
            return len(up) == len(JOBS) and set(up.values()) == {"1"}

        def rose() -> dict[str, float] | None:
            got = {expr: prom.value(expr) for expr in ROSE}
            return got if all(v > 0 for v in got.values()) else None

        try:
            wait_for(all_up, 180, "every target up in Prometheus")
            counters = wait_for(rose, 240, "the message counters rising in Prometheus", 2)
            for job, port in ports.items():
                _, body = wait_for(
                    lambda p=port: (r := http_get(f"http://127.0.0.1:{p}/readyz"))[0] == 200 and r,
                    60, f"{job} ready",
                )  # fmt: skip
                assert json.loads(body)["ready"] is True
        except AssertionError as err:
            logs = {p.name: p.read_text(errors="replace")[-2500:] for p in tmp_path.glob("*.log")}
            values = {expr: prom.value(expr) for expr in ROSE}
            raise AssertionError(f"{err}\n{values}\nlogs: {json.dumps(logs, indent=1)}") from None
        print("counters:", counters)
        assert prom.value("sum(carpulse_stream_assigned_partitions)") > 0
        # every panel of the Grafana dashboard evaluates; the service panels have data
        doc = json.loads((ROOT / "dashboards/grafana/dashboards/pipeline-metrics.json").read_text())
        exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
        assert len(exprs) >= 20
        with_data = [e for e in exprs if prom.query(e)]
        assert 'up{job=~"carpulse-.*"}' in with_data
        assert "sum(rate(carpulse_bridge_messages_forwarded_total[1m]))" in with_data
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == 8 and {r["health"] for r in rules} == {"ok"}, rules
        assert not [
            r for r in rules if r["state"] == "firing" and r["name"] == "CarpulseServiceDown"
        ]
    finally:
        if prom is not None:
            prom.close()
        stop_processes(list(procs.values()))
    assert prom is not None and prom.proc.poll() is not None  # Prometheus is gone
    for job in JOBS:
        assert _json_lines(tmp_path / f"{job}.log", job) > 0, f"{job} wrote no log line"


ROSE = (
    "sum(carpulse_edge_messages_acked_total)",
    "sum(carpulse_bridge_messages_received_total)",
    "sum(carpulse_bridge_messages_forwarded_total)",
    "sum(carpulse_stream_records_total)",
    "sum(carpulse_stream_samples_total)",
    "sum(carpulse_stream_sink_lines_written_total)",
    "sum(carpulse_stream_sink_write_seconds_count)",
    "sum(carpulse_dashboard_requests_total)",
    "sum(carpulse_crm_assigned_partitions)",
    "count(carpulse_stream_consumer_lag_messages)",
    "sum(carpulse_stream_faust_total_events_total)",  # per-topic counters: acked topics only
    'count({__name__=~"carpulse_crm_faust_.*"})',
)


def test_readyz_says_what_a_service_waits_for(local_stack: Stack, tmp_path: Path) -> None:
    """A bridge whose Kafka is a dead port and a worker whose InfluxDB is: 503 with the reason."""
    bridge_port, worker_port = free_port(), free_port()
    dead = f"127.0.0.1:{free_port()}"
    bridge_env = pipeline_env(
        local_stack, CARPULSE_KAFKA__BOOTSTRAP=dead, CARPULSE_METRICS__BRIDGE_PORT=str(bridge_port)
    )
    worker_env = pipeline_env(
        local_stack,
        CARPULSE_INFLUX__URL=f"http://{dead}",
        CARPULSE_STREAM__WEB_PORT=str(worker_port),
        CARPULSE_STREAM__SESSION_TIMEOUT_S="6",
        NUMBA_CACHE_DIR=str(tmp_path / "numba"),
        CARPULSE_NUMBA_CACHE="1",
    )
    procs = [
        _spawn(["stream", "bridge", "--name", "obs-dead-kafka"], bridge_env, tmp_path / "b.log"),
        _spawn(["stream", "worker"], worker_env, tmp_path / "w.log"),
    ]
    try:

        def answer(port: int) -> tuple[int, dict[str, Any]] | None:
            status, body = http_get(f"http://127.0.0.1:{port}/readyz")
            return (status, json.loads(body)) if status else None

        status, doc = wait_for(lambda: answer(bridge_port), 60, "the bridge's /readyz")
        assert status == 503 and doc["ready"] is False
        assert not doc["checks"]["kafka"]["ok"] and not doc["checks"]["mqtt"]["ok"]
        assert "kafka: producer not started" in doc["reason"] and dead in doc["reason"]
        time.sleep(3)  # still waiting with backoff, still saying why
        assert answer(bridge_port) == (status, doc)

        def influx_down() -> tuple[int, dict[str, Any]] | None:
            got = answer(worker_port)
            return got if got and "influx" in got[1]["checks"] else None

        status, doc = wait_for(influx_down, 120, "the worker's /readyz")
        assert status == 503 and not doc["checks"]["influx"]["ok"]
        assert f"influx: InfluxDB at http://{dead} unreachable" in doc["reason"]
        assert http_get(f"http://127.0.0.1:{worker_port}/healthz")[0] == 200  # alive, not ready
    finally:
        stop_processes(procs)
