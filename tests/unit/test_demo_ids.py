"""The demo's attacked car: its profile and log give one DoS event through the agent's detector."""

from __future__ import annotations

from pathlib import Path

import pytest

from carpulse import demo_ids
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
