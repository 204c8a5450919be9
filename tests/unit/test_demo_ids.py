"""The demo's attacked car: its profile and log give one DoS event through the agent's detector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from carpulse import demo_ids
from carpulse.pki import LocalPKI
from core.config import CarpulseSettings, StackSettings
from core.signing import generate_keypair, load_private_key, sign_command
from core.topics import command_topic
from edge.intrusion import IntrusionSection, IntrusionWatch
from firmware_bridge.frames import read_candump
from models.ids.profile import read_profile
from tests.conftest import require_data


def test_demo_ids_log_raises_one_dos_event(tmp_path: Path) -> None:
    require_data("canlogs/gt350")
    if not demo_ids.available():
        pytest.skip("the demo's gt350 logs are not all here")
    profile, attacked = demo_ids.prepare(tmp_path)
    watch = IntrusionWatch(read_profile(profile), IntrusionSection(enabled=True))
    frames, _ = read_candump(attacked)
    events = []
    for a in range(0, len(frames), 1500):  # blocks of about a second of traffic
        events += watch.feed(frames.slice(a, a + 1500))
    assert [d["kind"] for _, d in events] == ["dos"]
    assert watch.counters["flagged"] >= 6667  # 2 s of DoS frames, every 0.3 ms


def test_demo_ids_locks_unlocks_and_navigates_for_the_console(tmp_path: Path) -> None:
    """The demo's agent takes the console's signed commands: a virtual door actuator for lock and
    unlock, the head-unit simulator for navigate; the acks say what the car did."""
    require_data("canlogs/gt350")
    if not demo_ids.available():
        pytest.skip("the demo's gt350 logs are not all here")
    LocalPKI(tmp_path / "stack" / "pki").init()  # its certificate; no broker runs in this test
    s = CarpulseSettings(stack=StackSettings(data_dir=tmp_path / "stack"))
    s = s.model_copy(update={"edge": s.edge.model_copy(update={"state_dir": tmp_path / "state"})})
    agent, head_unit = demo_ids.build(s, tmp_path)
    try:
        assert [(a.name, a.kind, a.actions, a.state) for a in agent.actuators] == [
            ("doors", "virtual", ("lock", "unlock"), "locked")
        ]
        # the key the dashboard signs with when it finds no other (dashboards.serve)
        key = load_private_key(tmp_path / "stack" / "pki" / "cmd-sign.key")
        for name, args, detail in (
            ("unlock", {}, "done: unlock by doors (virtual)"),
            ("lock", {}, "done: lock by doors (virtual)"),
            ("navigate", {"address": "Dealer, 88 Huaihai Rd"}, "done: head unit route_started"),
        ):
            payload = sign_command(key, demo_ids.DEVICE, name, args, 60)
            ack = agent.commands.process(command_topic(demo_ids.DEVICE, name), payload)
            assert (ack.status, ack.detail) == ("accepted", detail), ack
        assert [a for _, a in agent.actuators[0].history] == ["unlock", "lock"]
        assert [d["address"] for d in head_unit.received] == ["Dealer, 88 Huaihai Rd"]
        forged = sign_command(generate_keypair_key(tmp_path), demo_ids.DEVICE, "unlock", {}, 60)
        ack = agent.commands.process(command_topic(demo_ids.DEVICE, "unlock"), forged)
        assert ack.status != "accepted" and agent.actuators[0].state == "locked"
    finally:
        head_unit.close()


def generate_keypair_key(tmp_path: Path) -> Any:
    """A signing key the car does not trust."""
    return load_private_key(generate_keypair(tmp_path / "other")[0])
