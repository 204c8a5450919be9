"""CAN intrusion on the edge: profile file round trip and hostile files, attacks on real logs flagged,
clean held-out logs quiet, the rate limit, the agent's ``[edge.intrusion]`` table and CLI.

Log split (gt350, the shared candump logs): the profile is learned from every usable gt350 log
except three held out whole (``HELD_OUT``); attacks are injected into a held-out log and the
held-out logs are scored clean. Nothing here is tuned on these files: the detector's constants are
the evaluation's (``carpulse eval can-ids``), the event thresholds the config defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from carpulse.evals.can_ids import batched_share
from core.errors import ConfigError, ProfileError
from core.frames import Frames
from edge.intrusion import IntrusionSection, IntrusionWatch, attach_intrusion
from firmware_bridge.frames import read_candump
from models.ids.attacks import inject, write_candump
from models.ids.profile import LoadedProfile, learn, parse_profile, read_profile
from tests.conftest import require_data

HELD_OUT = ("normalsportcomfortengineon.log", "keyonagain.log", "tracoff.log")
BLOCK = 4096


def _usable(f: Frames) -> bool:
    """The evaluation's filter: long enough, time goes forward, not batched by the logger."""
    return len(f) >= 200 and not np.any(np.diff(f.ts_us) < 0) and batched_share(f) <= 0.01


@pytest.fixture(scope="module")
def gt350() -> dict[str, tuple[Path, Frames]]:
    root = require_data("canlogs/gt350")
    out = {}
    for p in sorted(root.glob("*.log")):
        f, _ = read_candump(p)
        if _usable(f):
            out[p.name] = (p, f)
    assert set(HELD_OUT) <= set(out)
    return out


@pytest.fixture(scope="module")
def profile_doc(gt350: dict[str, tuple[Path, Frames]]) -> dict[str, Any]:
    train = [(str(p), p.read_bytes(), f) for n, (p, f) in gt350.items() if n not in HELD_OUT]
    assert len(train) >= 10
    return learn(train, "gt350")


@pytest.fixture(scope="module")
def loaded(profile_doc: dict[str, Any]) -> LoadedProfile:
    return parse_profile(json.dumps(profile_doc).encode(), "test")


def _feed(watch: IntrusionWatch, frames: Frames) -> list[tuple[int, dict[str, Any]]]:
    got = []
    for a in range(0, len(frames), BLOCK):
        got += watch.feed(frames.slice(a, a + BLOCK))
    return got


# ----- the profile file ------------------------------------------------------------------------
def test_learned_profile_round_trips_through_its_file(
    tmp_path: Path, profile_doc: dict[str, Any], loaded: LoadedProfile, gt350: Any
) -> None:
    path = tmp_path / "gt350.ids.json"
    path.write_text(json.dumps(profile_doc))
    back = read_profile(path)
    assert back.vehicle_model == "gt350"
    for name in loaded.profile.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(back.profile, name), getattr(loaded.profile, name))
    # the same detector: identical flags on a held-out log with an attack in it
    _p, clean = gt350["keyonagain.log"]
    merged, _label, _ = inject(clean, "fuzzing", int(clean.ts_us[0]) + 3_000_000,
                               int(clean.ts_us[0]) + 4_000_000, np.random.default_rng(1))  # type: ignore[misc]  # fmt: skip
    a, b = back.detector().score(merged), loaded.detector().score(merged)
    assert a.tolist() == b.tolist() and a.any()
    assert profile_doc["version"] == 1 and profile_doc["format"] == "carpulse.can-ids-profile"
    assert all(len(e["frozen_mask"]) == 16 for e in profile_doc["ids"])


def _bad(doc: dict[str, Any], **changes: Any) -> bytes:
    d = json.loads(json.dumps(doc))
    for key, value in changes.items():
        if key.startswith("id0_"):
            d["ids"][0][key[4:]] = value
        else:
            d[key] = value
    return json.dumps(d).encode()


@pytest.mark.security
def test_hostile_profiles_are_refused_with_the_field_named(profile_doc: dict[str, Any]) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"\x00\xff not json", "not a JSON profile"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 100_000, "not a JSON profile"),
        (_bad(profile_doc, format="npz"), "format must be"),
        (_bad(profile_doc, version=2), "profile version 2"),
        (_bad(profile_doc, version="1"), "profile version '1'"),
        (_bad(profile_doc, ids=[]), "ids"),
        (_bad(profile_doc, id0_tau_us=0.0), "ids.0.tau_us"),
        (_bad(profile_doc, id0_tau_us="1e400"), "ids.0.tau_us"),
        (_bad(profile_doc, id0_frozen_mask="zz" * 8), "ids.0.frozen_mask"),
        (_bad(profile_doc, id0_frozen_mask="00" * 9), "ids.0.frozen_mask"),
        (_bad(profile_doc, id0_dlc_mask=-1), "ids.0.dlc_mask"),
        (_bad(profile_doc, id0_dlc_mask=2**64), "ids.0.dlc_mask"),
        (_bad(profile_doc, id0_gap_min_us=-5), "ids.0.gap_min_us"),
        (_bad(profile_doc, id0_id="0x800"), "does not fit a 11-bit id"),
        (_bad(profile_doc, id0_id="123"), "ids.0.id"),
        (_bad(profile_doc, id0_evil="x"), "ids.0.evil"),
        (_bad(profile_doc, vehicle_model="<script>"), "vehicle_model"),
        (_bad(profile_doc, params={"min_flips": 0}), "params.min_flips"),
        (b" " * (8 * 1024 * 1024 + 1), "more than a profile's"),
    ]
    swapped = json.loads(json.dumps(profile_doc))
    swapped["ids"][0], swapped["ids"][1] = swapped["ids"][1], swapped["ids"][0]
    cases.append((json.dumps(swapped).encode(), "sorted"))
    for raw, msg in cases:
        with pytest.raises(ProfileError, match=r"profile\.f") as info:
            parse_profile(raw, "profile.f")
        assert msg in str(info.value), (msg, str(info.value))
        assert isinstance(info.value, ConfigError)  # the CLI prints it; the agent does not start


# ----- detection on real traffic ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dos", "fuzzing", "spoofing", "replay"])
def test_injected_attacks_on_a_held_out_log_raise_an_event(
    kind: str, loaded: LoadedProfile, gt350: Any
) -> None:
    _p, clean = gt350["normalsportcomfortengineon.log"]
    t0 = int(clean.ts_us[0])
    got = inject(clean, kind, t0 + 10_000_000, t0 + 12_000_000, np.random.default_rng(7))
    assert got is not None
    merged, _label, info = got
    watch = IntrusionWatch(loaded, IntrusionSection(enabled=True))
    events = _feed(watch, merged)
    assert events, (kind, watch.counters)
    ts, data = events[0]
    assert t0 + 10_000_000 - 1_000_000 <= ts <= t0 + 12_000_000  # the span starts at the attack
    assert data["flagged"] >= 5 and 0 < data["score"] <= 1
    expected = {"dos": "dos", "fuzzing": "fuzzing", "spoofing": "injection", "replay": "injection"}
    assert data["kind"] == expected[kind], data
    if kind == "dos":
        assert data["ids"][0] == {"id": "0x000", "extended": False, "known": False,
                                  "frames": data["ids"][0]["frames"]}  # fmt: skip
    if kind in ("spoofing", "replay"):
        assert f"0x{info['id']:03x}" in [r["id"] for r in data["ids"]]
    assert len(events) <= 2  # a 2 s attack: one event (a follow-up at most)
    assert watch.counters["frames"] == len(merged)


def test_clean_held_out_logs_raise_nothing(loaded: LoadedProfile, gt350: Any) -> None:
    flagged = {}
    for name in HELD_OUT:
        watch = IntrusionWatch(loaded, IntrusionSection(enabled=True))
        assert _feed(watch, gt350[name][1]) == [], name
        flagged[name] = watch.counters["flagged"]
    # found when this test was written: 0, 11 and 0 flagged frames (keyonagain: a key-on state
    # the training logs barely have), none close enough to make an incident
    assert sum(flagged.values()) <= 0.001 * sum(len(gt350[n][1]) for n in HELD_OUT), flagged


# ----- rate limit ------------------------------------------------------------------------------
def _dos(t0: int, seconds: float) -> Frames:
    ts = np.arange(t0, t0 + int(seconds * 1e6), 300, dtype=np.int64)
    n = len(ts)
    return Frames(ts, np.zeros(n, np.uint32), np.zeros(n, bool), np.full(n, 8, np.uint8),
                  np.zeros((n, 8), np.uint8))  # fmt: skip


def test_a_long_attack_gives_one_event_per_cooldown_with_the_sums(loaded: LoadedProfile) -> None:
    conf = IntrusionSection(enabled=True, cooldown_s=10.0, max_events_per_hour=3)
    watch = IntrusionWatch(loaded, conf)
    t0 = 1_700_000_000_000_000
    events = []
    for s in range(60):  # 60 s of DoS, in 100 ms blocks
        for a in range(10):
            events += watch.feed(_dos(t0 + s * 1_000_000 + a * 100_000, 0.1))
    # one a window (1 s) after it began, then one per 10 s cool-down, each for the frames since
    # the one before, until the hourly cap of 3 holds the rest back
    assert len(events) == 3
    assert [round((ts - t0) / 1e6) for ts, _ in events] == [0, 1, 11]
    first, second = events[0][1], events[1][1]
    assert not first["follow_up"] and second["follow_up"]
    assert second["flagged"] > 10 * 3000  # the frames flagged during the cool-down, summed
    assert watch.counters["events"] == 3 and watch.counters["suppressed"] >= 1
    assert watch.counters["flagged"] == watch.counters["frames"]  # every DoS frame is flagged


def test_an_incident_when_the_bus_goes_quiet_is_reported_by_the_agents_poll(
    loaded: LoadedProfile,
) -> None:
    watch = IntrusionWatch(loaded, IntrusionSection(enabled=True, window_s=1.0))
    assert watch.poll() == []  # nothing fed yet
    assert watch.feed(_dos(1_700_000_000_000_000, 0.3)) == []  # within its first window
    fed = watch._fed_at
    assert fed is not None
    assert watch.poll(fed + 0.5) == []  # the window from the incident's block is not over
    ((ts, data),) = watch.poll(fed + 1.01)
    assert ts == 1_700_000_000_000_000 and data["kind"] == "dos" and data["flagged"] == 1000
    assert watch.poll(fed + 5) == [] and watch.counters["events"] == 1


def test_stray_flags_below_the_threshold_make_no_event(loaded: LoadedProfile) -> None:
    watch = IntrusionWatch(loaded, IntrusionSection(enabled=True, min_flagged=5, window_s=1.0))
    t0 = 1_700_000_000_000_000
    for s in range(20):  # one unknown-id frame every 2 s: flagged, never an incident
        assert watch.feed(_dos(t0 + s * 2_000_000, 0.0003)) == []
    assert watch.counters["flagged"] == 20 and watch.counters["incidents"] == 0


def test_frames_slightly_out_of_order_are_held_not_refused(loaded: LoadedProfile) -> None:
    watch = IntrusionWatch(loaded, IntrusionSection(enabled=True))
    f = _dos(1_700_000_000_000_000, 0.01)
    ts = f.ts_us.copy()
    ts[5], ts[6] = ts[6], ts[5]
    watch.feed(Frames(ts, f.can_id, f.extended, f.dlc, f.data))
    assert watch.counters["reordered"] == 1 and watch.counters["frames"] == len(f)


# ----- wiring: [edge.intrusion] ----------------------------------------------------------------
class _Src:
    kind = "can"

    def __init__(self, name: str) -> None:
        from collections import deque

        self.name = name
        self.frame_hooks: list[Any] = []
        self.events: deque[Any] = deque(maxlen=256)


class _Agent:
    def __init__(self) -> None:
        self.sources = [_Src("can"), _Src("body")]


def test_attach_reads_the_table_and_refuses_bad_ones(tmp_path: Path, profile_doc: Any) -> None:
    agent = _Agent()
    attach_intrusion(agent, {})  # off by default
    assert not any(s.frame_hooks for s in agent.sources)
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(profile_doc))
    with pytest.raises(ConfigError, match="without a profile"):
        attach_intrusion(agent, {"intrusion": {"enabled": True}})
    with pytest.raises(ConfigError, match="no CAN source named nope"):
        attach_intrusion(
            agent, {"intrusion": {"enabled": True, "profile": str(prof), "sources": ["nope"]}}
        )
    with pytest.raises(ConfigError, match=r"edge\.intrusion\.cooldown_s"):
        attach_intrusion(
            agent, {"intrusion": {"enabled": True, "profile": str(prof), "cooldown_s": -1}}
        )
    with pytest.raises(ConfigError, match=r"edge\.intrusion\.typo"):
        attach_intrusion(agent, {"intrusion": {"typo": 1}})
    hostile = tmp_path / "hostile.json"
    hostile.write_bytes(b'{"format": "carpulse.can-ids-profile", "version": 1, "ids": "x"}')
    with pytest.raises(ProfileError, match=r"hostile\.json"):
        attach_intrusion(agent, {"intrusion": {"enabled": True, "profile": str(hostile)}})
    attach_intrusion(
        agent, {"intrusion": {"enabled": True, "profile": str(prof), "sources": ["can"]}}
    )
    src = agent.sources[0]
    assert len(src.frame_hooks) == 1 and not agent.sources[1].frame_hooks
    src.frame_hooks[0](_dos(1_700_000_000_000_000, 0.5))
    assert not src.events  # the event waits one window (1 s) to say what the attack is
    src.frame_hooks[0](_dos(1_700_000_000_500_000, 1.0))
    kind, _ts, prio, data = src.events.popleft()
    assert (kind, prio, data["kind"], data["source"]) == ("intrusion", 1, "dos", "can")
    assert data["vehicle_model"] == "gt350"


# ----- the CLI ---------------------------------------------------------------------------------
def test_cli_learns_checks_and_injects(tmp_path: Path, gt350: Any) -> None:
    from carpulse.cli import app

    runner = CliRunner()
    logs = [str(gt350[n][0]) for n in ("keyon.log", "aconoff.log", "steeringchanges.log")]
    out = tmp_path / "gt350.ids.json"
    res = runner.invoke(app, ["ids", "learn", *logs, "--model", "gt350", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["vehicle_model"] == "gt350" and doc["ids"] > 20 and out.exists()
    attacked = tmp_path / "dos.log"
    clean = gt350["tracoff.log"][0]
    res = runner.invoke(
        app, ["ids", "inject", str(clean), "--out", str(attacked), "--attack", "dos"]
    )
    assert res.exit_code == 0, res.output
    injected = json.loads(res.stdout.strip().splitlines()[-1])["injected"]
    assert injected == len(range(0, 2_000_000, 300))
    frames, rep = read_candump(attacked)
    assert rep.bad_lines == 0 and len(frames) == len(gt350["tracoff.log"][1]) + injected
    res = runner.invoke(app, ["ids", "check", str(out), "--log", str(attacked)])
    assert res.exit_code == 0, res.output
    checked = json.loads(res.stdout.strip().splitlines()[-1])
    assert checked["by_reason"]["unknown_id"] >= injected
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "carpulse.can-ids-profile", "version": 9}')
    res = runner.invoke(app, ["ids", "check", str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, ProfileError)


def test_write_candump_round_trips(tmp_path: Path) -> None:
    f = Frames(np.array([1_000_000_123, 1_000_000_456]), np.array([0x123, 0x1ABCDEF], np.uint32),
               np.array([False, True]), np.array([3, 8], np.uint8),
               np.array([[1, 2, 3, 0, 0, 0, 0, 0], [9] * 8], np.uint8))  # fmt: skip
    write_candump(f, tmp_path / "x.log")
    back, rep = read_candump(tmp_path / "x.log")
    assert rep.bad_lines == 0
    for a, b in zip((back.ts_us, back.can_id, back.extended, back.dlc, back.data),
                    (f.ts_us, f.can_id, f.extended, f.dlc, f.data), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)


def test_environment_overrides_reach_the_intrusion_table(tmp_path: Path) -> None:
    from edge.agent import edge_tables

    cfg = tmp_path / "edge.toml"
    cfg.write_text('[edge.intrusion]\nenabled = false\nprofile = "/etc/carpulse/a.json"\n')
    env = {"CARPULSE_EDGE__INTRUSION__ENABLED": "true", "CARPULSE_EDGE__INTRUSION__COOLDOWN_S": "5"}
    doc = edge_tables(cfg, env)
    assert doc["intrusion"] == {"enabled": True, "profile": "/etc/carpulse/a.json", "cooldown_s": 5}
    assert IntrusionSection.model_validate(doc["intrusion"]).cooldown_s == 5.0
