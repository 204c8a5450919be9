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
