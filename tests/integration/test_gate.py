"""Gate events from real photos travel the durable queue and MQTT (TLS, device certificate) to a subscriber."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from carpulse.local_files import with_device_certs
from carpulse.stack import Stack
from core.wire import decode_event
from edge.gate import GateConfig, GateLoop, QueuedEvents
from tests.conftest import require_data

pytestmark = pytest.mark.integration


def test_gate_events_reach_the_broker_and_leave_the_queue(
    local_stack: Stack, tmp_path: Path
) -> None:
    plates = require_data("plates")
    for name in ("ccpd_demo_3.jpg", "cn_police.jpg"):
        (tmp_path / name).symlink_to(plates / name)
    s = local_stack.settings.model_copy(deep=True)  # type: ignore[attr-defined]
    s.edge.state_dir = tmp_path / "state"
    got: list[bytes] = []
    console = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gate-test-console")
    console.tls_set(ca_certs=str(local_stack.pki.ca_cert))
    console.username_pw_set(  # reads device events as the bridge does (the console cannot)
        "carpulse-bridge", local_stack.secret_file("carpulse-bridge").read_text()
    )
    console.on_message = lambda c, u, m: got.append(bytes(m.payload))
    ready = threading.Event()
    console.on_subscribe = lambda *a: ready.set()
    console.connect(local_stack.s.host, local_stack.s.mqtt_service_port)
    console.loop_start()
    try:
        console.subscribe("carpulse/v1/gate-test-1/events", qos=1)
        assert ready.wait(10)
        sink = QueuedEvents(with_device_certs(s, "gate-test-1"), "gate-test-1")
        sink.start()
        conf = GateConfig(source=str(tmp_path), camera="gate-north", min_votes=1, presence=False)
        stats = GateLoop(conf, sink, tick=sink.pump).run()
        assert stats["plate_events"] == 2
        sink.close(drain_s=15)
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        events = sorted((decode_event(p) for p in got), key=lambda e: e.seq)
        assert [e.data["plate"] for e in events] == ["皖AMK620", "鄂F8888警"]
        assert all(e.kind == "gate.plate" and e.device_id == "gate-test-1" for e in events)
        assert events[0].data["camera"] == "gate-north"
        assert sink.acked == 2  # deleted from the durable queue only after PUBACK
    finally:
        console.loop_stop()
        console.disconnect()
