"""Helpers of the reliability tests: an edge.toml for a stack, a counting subscriber, Mosquitto alone."""

from __future__ import annotations

import functools
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from carpulse.stack import Stack
from carpulse.stack import wait_until as stack_wait_until
from core.topics import parse_topic, subscription
from core.wire import decode_event, decode_telemetry

REPO = Path(__file__).resolve().parents[2]


def edge_toml(
    stack: Stack,
    path: Path,
    device_id: str,
    state_dir: Path,
    *,
    sources: list[dict[str, Any]],
    campaigns: list[dict[str, Any]] = (),  # type: ignore[assignment]
    queue: dict[str, Any] | None = None,
    extra: str = "",
    tables: str = "",
) -> Path:
    """Write a config for one agent on ``stack``: the stack's file plus the agent's tables."""
    text = stack.config_file.read_text()
    text = "".join(line + "\n" for line in text.splitlines() if not line.startswith("state_dir"))
    mine = f'device_id = "{device_id}"\nstate_dir = "{state_dir}"\n'
    mine += f'stats_file = "{state_dir / "stats.json"}"\n{extra}'
    lines = [text.replace("[edge]\n", "[edge]\n" + mine, 1)]
    for src in sources:
        lines.append("\n[[edge.sources]]\n")
        lines += [f"{k} = {json.dumps(v)}\n" for k, v in src.items()]
    for c in campaigns:
        lines.append("\n[[edge.campaigns]]\n")
        lines += [f"{k} = {json.dumps(v)}\n" for k, v in c.items()]
    if queue:
        lines.append("\n[edge.queue]\n")
        lines += [f"{k} = {json.dumps(v)}\n" for k, v in queue.items()]
    lines.append("\n" + tables)
    path.write_text("".join(lines))
    return path


class Collector:
    """A service subscriber (persistent session, QoS 1) recording every message it receives."""

    def __init__(self, stack: Stack, channels: tuple[str, ...] = ("telemetry", "events")) -> None:
        self.stack = stack
        self.lock = threading.Lock()
        self.telemetry: list[tuple[str, str, int, int]] = []  # device, boot, seq, samples
        self.events: list[tuple[str, str, int, str, int]] = []  # device, boot, seq, kind, prio
        self.bytes = 0
        self.acks: list[bytes] = []
        self.arrived: dict[tuple[str, str, int], float] = {}  # first arrival (monotonic)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"collector-{uuid.uuid4().hex[:8]}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        s = stack.s
        self.client.username_pw_set(
            "carpulse-bridge", stack.secret_file("carpulse-bridge").read_text().strip()
        )
        self.client.tls_set(ca_certs=str(stack.pki.ca_cert), cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(0.2, 2)
        self.channels = channels
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(s.host, s.mqtt_service_port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(30):
            raise AssertionError("collector could not subscribe")

    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        if not reason.is_failure:
            client.subscribe([(subscription(c), 1) for c in self.channels])

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        _, channel = parse_topic(msg.topic)
        with self.lock:
            self.bytes += len(msg.payload)
            if channel == "telemetry":
                b = decode_telemetry(msg.payload)
                self.telemetry.append((b.device_id, b.boot_id, b.seq, len(b.samples)))
                self.arrived.setdefault((b.device_id, b.boot_id, b.seq), time.monotonic())
            elif channel == "cmd-ack":
                self.acks.append(bytes(msg.payload))
            elif channel == "events":
                e = decode_event(msg.payload)
                self.events.append((e.device_id, e.boot_id, e.seq, e.kind, e.priority))

    def keys(self) -> list[tuple[str, str, int]]:
        with self.lock:
            return [t[:3] for t in self.telemetry] + [e[:3] for e in self.events]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """``carpulse.stack.wait_until`` polling fast (an agent's stats file changes quickly),
    failing the test when the time runs out."""
    return stack_wait_until(cond, timeout, what, interval, error=AssertionError)


def read_stats(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / "stats.json").read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return {}


@functools.cache
def aot_kernels() -> Path | None:
    """The agent's kernels built ahead of time, as `make kernels` leaves them (built there once
    per session when missing or stale), or None without a C toolchain.

    A spawned agent loads them instead of compiling its kernels with numba at every start (a
    cold start costs ~10 s of CPU): what these tests check is the queue, the broker and the
    process, not the compiler; the kernels themselves equal the JIT's (tests/unit/edge/test_aot.py).
    """
    from edge.aot import build_kernels, toolchain_problem

    if toolchain_problem():
        return None
    out = REPO / ".carpulse" / "edge" / "kernels"
    build_kernels(out, force=False)
    return out


def spawn_agent(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    # The kernels built ahead of time; without a toolchain, numba's cache keeps the many
    # restarts of a test from compiling again (in the test's own directory).
    env = dict(os.environ, CARPULSE_NUMBA_CACHE="1", NUMBA_CACHE_DIR=str(log.parent / "numba"))
    kernels = aot_kernels()
    if kernels is not None:
        env["CARPULSE_EDGE__AOT_DIR"] = str(kernels)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "carpulse", "edge", "run", "--config", str(config), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


class Mosquitto:
    """Only the stack's Mosquitto, so a test can stop and restart the broker quickly."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        stack.prepare()

    def start(self) -> None:
        argv_fn, log, _port = self.stack._commands()["mosquitto"]
        if self.stack._running_pid("mosquitto") is None:
            self.stack._spawn("mosquitto", argv_fn(), log)
        wait_until(lambda: self.stack.check("mosquitto") is None, 30, "mosquitto healthy", 0.2)

    def stop(self) -> None:
        self.stack.down()  # only mosquitto runs: down() stops what this stack started
