"""`carpulse replay` on a Mosquitto of its own: a hostile log, a broker that is down, the backlog.

What the broker receives is counted by a service subscriber (``tests.reliability.helpers``);
the replay's JSON report must agree with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carpulse.stack import Stack, free_stack_settings
from firmware_bridge.can_logs import write_log
from firmware_bridge.frames import read_candump
from tests.conftest import require_data
from tests.reliability.helpers import Collector, Mosquitto, wait_until

pytestmark = pytest.mark.integration

CAR = "canlogs/gt350"
LOG = f"{CAR}/lockunlockcycle.log"
DBC = f"{CAR}/ford_lincoln_base_pt.dbc"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    stack = Stack(free_stack_settings(tmp_path / "stack"))
    m = Mosquitto(stack)
    m.start()
    try:
        yield m
    finally:
        stack.down()


def replay(stack: Stack, log: Path, dbc: Path, device: str, *extra: str) -> tuple[int, Any, str]:
    env = dict(os.environ, CARPULSE_CONFIG=str(stack.config_file))
    r = subprocess.run(
        [sys.executable, "-m", "carpulse", "replay", str(log), "--dbc", str(dbc),
         "--device", device, *extra],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    return r.returncode, json.loads(lines[-1]) if lines else None, r.stderr


def test_hostile_log_is_counted_with_file_and_line_and_the_rest_arrives(
    broker: Mosquitto, tmp_path: Path
) -> None:
    dbc = require_data(DBC)
    real = require_data(LOG).read_text().splitlines()
    hostile = [
        "(1584656584.42",  # truncated
        "\x00\x01garbage\xff",
        "(1584656584.428101) can0 123456789#00",  # 33-bit id
        "(1584656584.428103) can0 123##1" + "AB" * 72,  # 72 data bytes
        "(nan) can0 041#00",
        "y" * 50_000,
    ]
    log = tmp_path / "gt350" / "hostile.log"
    log.parent.mkdir()
    log.write_text("\n".join([*real[:500], *hostile, *real[500:]]) + "\n", errors="replace")
    col = Collector(broker.stack)
    try:
        code, report, err = replay(broker.stack, log, dbc, "replay-hostile")
        assert code == 0, err[-3000:]
        assert report["refused"] == len(hostile) and report["mapping"] == "gt350"
        assert report["frames"] == len(real) and report["flushed"] is True
        assert report["refused_examples"][0].startswith(f"{log}:501:")
        assert any(f"{log}:503: id 0x123456789" in e for e in report["refused_examples"])
        wait_until(
            lambda: sum(n for d, _, _, n in col.telemetry if d == "replay-hostile")
            == report["samples"] > 0,
            30, "every sample at the broker",
        )  # fmt: skip
    finally:
        col.close()


def test_blf_replay_waits_for_the_broker_and_keeps_the_backlog(
    broker: Mosquitto, tmp_path: Path
) -> None:
    dbc = require_data(DBC)
    frames, _ = read_candump(require_data(LOG))
    blf = tmp_path / "gt350" / "lockunlockcycle.blf"
    blf.parent.mkdir()
    write_log(blf, frames)
    broker.stop()
    code, report, err = replay(broker.stack, blf, dbc, "replay-blf", "--connect-timeout", "2")
    assert code == 2 and "no connection to the MQTT broker" in err
    assert report["flushed"] is False and report["queued_left"] == report["batches"] > 0
    assert "stay in the durable queue" in report["error"]
    first = report["samples"]
    broker.start()
    col = Collector(broker.stack)
    try:
        code, report, err = replay(broker.stack, blf, dbc, "replay-blf")
        assert code == 0 and report["flushed"] is True, err[-3000:]
        assert report["samples"] == first  # the same log decodes the same
        # both runs' batches arrive: the first from the durable queue
        wait_until(
            lambda: sum(n for d, _, _, n in col.telemetry if d == "replay-blf") == 2 * first,
            30, "the backlog and the second replay at the broker",
        )  # fmt: skip
    finally:
        col.close()


class _Batches(Collector):
    """The collector, keeping every telemetry batch's samples."""

    def __init__(self, stack: Stack) -> None:
        self.batches: list[Any] = []
        super().__init__(stack, ("telemetry",))

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        from core.wire import decode_telemetry

        super()._on_message(client, userdata, msg)
        with self.lock:
            self.batches.append(decode_telemetry(msg.payload))


def test_demo_log_car_is_the_edge_agent_replaying_in_a_loop(
    broker: Mosquitto, tmp_path: Path
) -> None:
    import time

    from carpulse.demo import LogCar
    from core.config import load_settings

    log, dbc = require_data(LOG), require_data(DBC)
    s = load_settings(broker.stack.config_file)
    s = s.model_copy(update={"edge": s.edge.model_copy(update={"state_dir": tmp_path / "state"})})
    col = _Batches(broker.stack)
    car = LogCar(s, log, dbc, "gt350")
    t0_us = time.time() * 1e6
    car.thread.start()
    try:
        src = car.agent.sources[0]
        wait_until(lambda: src.replay_loops >= 1, 60, "the log to start over")  # type: ignore[attr-defined]
        wait_until(lambda: len(col.batches) >= 2, 30, "telemetry at the broker")
        car.refresh()
        assert car.stats.batches >= 1 and car.stats.samples > 0
        assert car.stats.speed == car.stats.speed  # the table's speed column is filled
    finally:
        car.stop()
        col.close()
    assert not car.thread.is_alive()
    with col.lock:
        batches = list(col.batches)
    assert {b.device_id for b in batches} == {"demo-gt350"}
    names = {b.samples.names[i] for b in batches for i in set(b.samples.sig.tolist())}
    assert "Vehicle.Speed" in names and not any(".Private." in n for n in names)
    first = min(int(b.samples.ts_us.min()) for b in batches)
    assert abs(first - t0_us) < 30e6  # stamped with the wall clock, not the log's 2020 time


def test_demo_ids_log_source_raises_the_intrusion_event(broker: Mosquitto, tmp_path: Path) -> None:
    """``demo-ids`` replays its attacked log through the log source at log speed: the agent's
    intrusion detector sees the DoS and its event reaches the broker."""
    import threading

    from carpulse import demo_ids
    from core.config import load_settings

    require_data(CAR)
    if not demo_ids.available():
        pytest.skip("the demo's gt350 logs are not all here")
    s = load_settings(broker.stack.config_file)
    s = s.model_copy(update={"edge": s.edge.model_copy(update={"state_dir": tmp_path / "state"})})
    agent, _head_unit = demo_ids.build(s, tmp_path)
    assert [src.kind for src in agent.sources] == ["log"]
    col = Collector(broker.stack)
    runner = threading.Thread(target=agent.run, kwargs={"seconds": 40}, daemon=True)
    runner.start()
    try:
        wait_until(
            lambda: [e for e in col.events if e[0] == demo_ids.DEVICE and e[3] == "intrusion"],
            40, "the intrusion event at the broker",
        )  # fmt: skip
    finally:
        agent.stop()
        runner.join(15)
        col.close()
    assert sum(1 for e in col.events if e[3] == "intrusion") == 1


def test_a_dbc_that_matches_nothing_is_a_clear_error(broker: Mosquitto, tmp_path: Path) -> None:
    log = require_data(LOG)
    dbc = tmp_path / "other.dbc"
    dbc.write_text('VERSION ""\nBO_ 2046 M: 8 X\n SG_ S : 0|8@1+ (1,0) [0|0] "" X\n')
    code, report, err = replay(broker.stack, log, dbc, "replay-wrong", "--mapping", "none")
    assert code == 2 and report["samples"] == 0
    assert report["unknown_id"] == report["frames"] > 1000
    assert "is it the right DBC for this log?" in err
    _, _, err = replay(broker.stack, log, dbc, "replay-wrong")
    assert "no shipped VSS mapping is written for other.dbc" in err  # --mapping auto
