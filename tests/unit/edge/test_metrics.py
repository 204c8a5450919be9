"""The edge agent's /metrics and /readyz: offline it is ready while its queue can be written."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from carpulse.local_files import with_device_certs
from carpulse.pki import LocalPKI
from edge.agent import EdgeAgent, load_agent_config
from edge.metrics import start_obs


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def test_queue_depth_drops_and_readiness_offline(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    LocalPKI(tmp_path / "pki").init()  # a device certificate; no broker runs in this test
    cfg.write_text(
        f'[stack]\ndata_dir = "{tmp_path}"\n'
        f'[edge]\ndevice_id = "m-car-1"\nstate_dir = "{tmp_path / "state"}"\n'
        '[[edge.sources]]\ntype = "sim"\n[edge.queue]\nmax_bytes = 1000\n'
    )
    agent_settings, agent_conf = load_agent_config(cfg)
    agent = EdgeAgent(with_device_certs(agent_settings), agent_conf)
    for i in range(3):  # the third pushes the first out (1000-byte cap)
        agent.enqueue_event("test", 1_000_000 + i, 5, {"pad": "x" * 300})
    obs = start_obs(agent, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{obs.port}"
        status, text = _get(base + "/metrics")
        assert status == 200
        assert 'carpulse_edge_events_enqueued_total{device="m-car-1"} 3.0' in text
        assert 'carpulse_edge_queue_rows{device="m-car-1"} 2.0' in text
        assert 'carpulse_edge_queue_dropped_total{device="m-car-1",reason="evicted"} 1.0' in text
        assert 'carpulse_edge_mqtt_connected{device="m-car-1"} 0.0' in text
        assert 'carpulse_edge_source_errors_total{device="m-car-1",source="sim0"} 0.0' in text
        status, body = _get(base + "/readyz")  # no broker, but store and forward works
        assert (
            status == 200
            and "offline, queue" in json.loads(body)["checks"]["mqtt_or_queue"]["detail"]
        )
        # another process holds the queue's write lock: offline and not writable = not ready
        other = sqlite3.connect(agent.queue.path, timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        try:
            status, body = _get(base + "/readyz")
        finally:
            other.rollback()
            other.close()
        assert status == 503 and "not writable" in json.loads(body)["reason"]
    finally:
        obs.close()
        agent.queue.close()
