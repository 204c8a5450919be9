"""Two ingest bridges share the MQTT load; one killed with -9 mid-stream loses nothing.

The bridges share a ``$share/`` subscription with persistent sessions and acknowledge an MQTT
message only after Kafka acknowledged its record. Messages the killed bridge had received but
not acknowledged stay in its session and are redelivered when it comes back under the same
name (Mosquitto does not move them to the other group member); everything published while it
was down goes to the survivor. Kafka may then hold a record twice, which the Faust app's
dedupe drops; no (device, seq) may be missing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from carpulse.local_files import local_device_mqtt
from carpulse.stack import stop_processes
from core.topics import KAFKA_TELEMETRY, device_topic
from core.wire import Samples, TelemetryBatch, decode_telemetry, encode_telemetry
from edge.publisher import MqttPublisher
from tests.integration.helpers import pipeline_env
from tests.integration.stream_util import consume, create_topics

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

DEVICES = [f"brs-car-{i}" for i in range(4)]
PER_DEVICE = 150


def spawn_bridge(env: dict[str, str], name: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "carpulse", "stream", "bridge", "--name", name],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def keys(records: list) -> list[tuple[str, int]]:  # type: ignore[type-arg]
    out = []
    for r in records:
        if r.key and r.key.decode() in DEVICES:
            b = decode_telemetry(r.value)
            out.append((b.device_id, b.seq))
    return out


def test_two_bridges_split_the_load_and_a_killed_one_loses_nothing(
    local_stack, tmp_path: Path
) -> None:
    s = local_stack.settings
    # a share group of its own: no other test's offline bridge session takes a share
    env = pipeline_env(local_stack, CARPULSE_MQTT__SHARE_GROUP=f"brs-{uuid.uuid4().hex[:8]}")
    create_topics(local_stack, [KAFKA_TELEMETRY])
    bridges = {n: spawn_bridge(env, n, tmp_path / f"{n}.log") for n in ("brs-a", "brs-b")}
    pubs = []
    try:
        for d in DEVICES:
            pub = MqttPublisher(local_device_mqtt(s, d), boot_id="b")
            pub.connect(15.0, announce=False)
            pubs.append(pub)
        # both bridges subscribed (their sessions persist): what is published before a share
        # group has a member is dropped by the broker (a fixed 3 s was too short under load)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            "subscribed" in (tmp_path / f"{n}.log").read_text() for n in bridges
        ):
            time.sleep(0.1)
        published: list[tuple[str, int]] = []
        half = threading.Event()

        def publish_all() -> None:
            t0 = int(time.time() * 1e6)
            for q in range(PER_DEVICE):
                for pub, d in zip(pubs, DEVICES, strict=True):
                    samples = Samples.from_columns(
                        ["Vehicle.Speed"], np.zeros(5), t0 + q * 10_000 + np.arange(5), np.ones(5)
                    )
                    payload = encode_telemetry(TelemetryBatch(d, "b", q, samples))
                    pub.publish(device_topic(d, "telemetry"), payload)
                    published.append((d, q))
                if q == PER_DEVICE // 2:
                    half.set()
                time.sleep(0.01)
            for pub in pubs:
                pub.flush(60)

        t = threading.Thread(target=publish_all)
        t.start()
        assert half.wait(60)
        bridges["brs-b"].send_signal(signal.SIGKILL)
        bridges["brs-b"].wait(10)
        t.join(120)
        assert not t.is_alive()
        want = set(published)
        assert len(want) == len(DEVICES) * PER_DEVICE
        # without brs-b, only what it held unacknowledged is missing
        before = keys(consume(local_stack, KAFKA_TELEMETRY, lambda r: set(keys(r)) >= want, 10))
        missing_before_restart = len(want - set(before))
        bridges["brs-b"] = spawn_bridge(env, "brs-b", tmp_path / "brs-b.log")
        got = consume(local_stack, KAFKA_TELEMETRY, lambda r: set(keys(r)) >= want, 60)
        # a graceful stop (SIGTERM) leaves the group first: its share goes to brs-a at once
        bridges["brs-b"].terminate()
        assert bridges["brs-b"].wait(30) == 0
        late = set()
        for q in range(PER_DEVICE, PER_DEVICE + 20):
            for pub, d in zip(pubs, DEVICES, strict=True):
                samples = Samples.from_columns(["Vehicle.Speed"], [0], [q], [1.0])
                pub.publish(
                    device_topic(d, "telemetry"),
                    encode_telemetry(TelemetryBatch(d, "b", q, samples)),
                )
                late.add((d, q))
        for pub in pubs:
            pub.flush(60)
        after_stop = consume(
            local_stack, KAFKA_TELEMETRY, lambda r: set(keys(r)) >= want | late, 30
        )
        assert set(keys(after_stop)) >= late, (
            f"{len(late - set(keys(after_stop)))} lost after a graceful stop"
        )
    finally:
        for pub in pubs:
            pub.close()
        stop_processes(bridges.values(), grace_s=30)  # graceful: unsubscribe, drain, disconnect
    got_keys = keys(got)
    assert set(got_keys) >= want, f"lost {sorted(want - set(got_keys))[:10]}"
    by_bridge: dict[str, int] = {}
    for r in got:
        if r.key and r.key.decode() in DEVICES:
            name = dict(r.headers).get("bridge", b"?").decode()
            by_bridge[name] = by_bridge.get(name, 0) + 1
    assert by_bridge.get("brs-a", 0) > 0 and by_bridge.get("brs-b", 0) > 0, by_bridge
    figures = {
        "published": len(want),
        "in_kafka": len(got_keys),
        "duplicates": len(got_keys) - len(set(got_keys)),
        "missing_before_restart": missing_before_restart,
        "by_bridge": by_bridge,
    }
    (tmp_path / "bridges.json").write_text(json.dumps(figures))
    print(f"\nbridges: {figures}")
