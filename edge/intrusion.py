"""CAN intrusion detection on the live bus: every received frame block scored, ``intrusion`` events.

``[edge.intrusion]`` (off by default: it needs the vehicle model's profile from ``carpulse ids
learn``)::

    [edge.intrusion]
    enabled = true
    profile = "/etc/carpulse/gt350.ids.json"
    window_s = 1.0          # an incident: at least min_flagged flagged frames within window_s
    min_flagged = 5
    cooldown_s = 30.0       # at most one event per cool-down (what comes meanwhile is summed)
    max_events_per_hour = 20

The detector (``models.ids``: one numba call per block, state per CAN id) runs in each CAN
source's thread on the raw frames, before decoding; Python only sums each block's flags with
numpy. An event says what was seen since the previous one::

    {"kind": "dos", "score": 0.62, "flagged": 6667, "frames": 10752,
     "reasons": {"unknown_id": 6667}, "distinct_ids": 1,
     "ids": [{"id": "0x000", "extended": false, "known": false, "frames": 6667}],
     "first_ts_us": ..., "last_ts_us": ..., "source": "can", "vehicle_model": "gt350",
     "suppressed": 0, "follow_up": false}

``kind`` is the detector's best guess from the reasons (``dos``: a flood of one or a few unknown
ids; ``fuzzing``: many unknown ids; ``injection``: extra frames of known ids, as spoofing and
replay send; ``forged_payload``; ``bad_dlc``); ``score`` the share of flagged frames in that span.
An event goes out one window after the incident was seen (so it says what the attack is, not
just how it began); while an attack goes on, one event per ``cooldown_s`` carries the sums
(``follow_up``);
``suppressed`` counts incidents the hourly cap held back. Times are the frames' own (bus) times;
when the bus goes quiet (the car falls asleep right after an attack) the agent's loop polls each
watch (``IntrusionWatch.poll``) so an incident still owed is reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError
from core.frames import Frames

log = logging.getLogger(__name__)

INTRUSION_PRIORITY: Final = 1  # after crashes, before telemetry
MAX_IDS_KEPT: Final = 4096  # distinct ids summed per event (fuzzing sends thousands)
IDS_IN_EVENT: Final = 8


class IntrusionSection(BaseModel):
    """``[edge.intrusion]``: the CAN intrusion detector on the agent's CAN sources."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Score every received CAN frame block.")
    profile: Path | None = Field(
        None, description="The vehicle model's profile file (carpulse ids learn)."
    )
    sources: list[str] = Field(
        [], description="Names of the CAN sources to watch (empty: every CAN source)."
    )
    window_s: float = Field(1.0, gt=0, le=3600, description="Window of an incident.")
    min_flagged: int = Field(5, ge=1, le=100_000, description="Flagged frames in one window.")
    cooldown_s: float = Field(30.0, ge=0, le=86_400, description="At most one event per this.")
    max_events_per_hour: int = Field(20, ge=1, le=3600, description="Hard cap on events.")


def _kind(reasons: dict[str, int], unknown_ids: int) -> str:
    """The attack the reasons look like most (see the module docstring)."""
    votes = {
        "dos" if unknown_ids < 8 else "fuzzing": reasons.get("unknown_id", 0),
        "injection": reasons.get("high_rate", 0) + reasons.get("short_gap", 0),
        "forged_payload": reasons.get("frozen_bits", 0),
        "bad_dlc": reasons.get("bad_dlc", 0),
    }
    return max(votes, key=lambda k: votes[k])


class IntrusionWatch:
    """One CAN bus: scores frame blocks, keeps the counters, returns rate-limited event data."""

    def __init__(self, loaded: Any, conf: IntrusionSection, source: str = "can") -> None:
        from models.ids.detector import REASONS

        self.loaded = loaded
        self.det = loaded.detector()
        self.keys = loaded.profile.keys
        self.reasons = tuple(REASONS.items())
        self.conf = conf
        self.source = source
        self.window_us = int(conf.window_s * 1e6)
        self.cooldown_us = int(conf.cooldown_s * 1e6)
        self.counters: dict[str, Any] = {
            "frames": 0,
            "flagged": 0,
            "incidents": 0,
            "events": 0,
            "suppressed": 0,
            "reordered": 0,
            "cpu_s": 0.0,
        }
        self._last_ts = -1
        self._recent = np.zeros(0, np.int64)  # the last min_flagged-1 flagged times
        self._armed = False  # an incident not yet reported
        self._armed_at = -1  # bus time it was seen: the event waits one window for its facts
        self._next_ok = -1  # bus time before which no event goes out (cool-down)
        self._sent: deque[int] = deque()  # bus times of the events of the last hour
        self._suppressed = 0
        self._last_event = -1
        self.loops = 0
        self._lock = threading.Lock()  # feed (the source's thread) and poll (the agent loop)
        self._fed_at: float | None = None
        self._reset_span()

    def restart(self) -> None:
        """Forget the bus's timing (a replay that starts over); counters and cool-down stay."""
        self.det.reset()
        self._last_ts = -1
        self._recent = self._recent[:0]

    def _reset_span(self) -> None:
        self._span_frames = 0
        self._span_flagged = 0
        self._span_first = -1
        self._span_last = -1
        self._span_reasons: Counter[str] = Counter()
        self._span_ids: Counter[int] = Counter()

    def feed(self, frames: Frames) -> list[tuple[int, dict[str, Any]]]:
        """Score one block (in time order or nearly); the events it completes, as (ts_us, data)."""
        n = len(frames)
        if n == 0:
            return []
        t0 = time.thread_time()
        try:
            with self._lock:
                self._fed_at = time.monotonic()
                return self._feed(frames, n)
        finally:
            self.counters["cpu_s"] += time.thread_time() - t0

    def poll(self, now: float | None = None) -> list[tuple[int, dict[str, Any]]]:
        """The event an incident still owes when the bus went quiet (the car fell asleep right
        after an attack): bus time is taken to run on with the monotonic clock since the last
        block. Called from the agent's loop; ``now`` is ``time.monotonic()``."""
        with self._lock:
            if not self._armed or self._fed_at is None:
                return []
            idle_us = int(((time.monotonic() if now is None else now) - self._fed_at) * 1e6)
            if idle_us <= 0:
                return []
            real_last = self._last_ts
            self._last_ts = real_last + idle_us
            try:
                return self._maybe_emit()
            finally:
                self._last_ts = real_last  # the next block is judged on its own times

    def _feed(self, frames: Frames, n: int) -> list[tuple[int, dict[str, Any]]]:
        from models.ids.detector import frame_keys

        ts = np.maximum.accumulate(np.maximum(frames.ts_us.astype(np.int64), self._last_ts))
        if not np.array_equal(ts, frames.ts_us):
            # a driver's clock stepping back a little: held at the last time, counted
            self.counters["reordered"] += int(np.count_nonzero(ts != frames.ts_us))
            frames = Frames(ts, frames.can_id, frames.extended, frames.dlc, frames.data)
        self._last_ts = int(ts[-1])
        flags = self.det.score(frames)
        self.counters["frames"] += n
        bad = flags != 0
        nbad = int(np.count_nonzero(bad))
        if self._span_first < 0 and nbad == 0 and not self._armed:
            return self._maybe_emit()  # a quiet block outside any span: nothing to sum
        if self._span_first < 0:  # a span starts at its first flagged frame
            first = int(np.argmax(bad))
            self._span_first = int(ts[first])
            self._span_frames += n - first
        else:
            self._span_frames += n
        self._span_last = int(ts[-1])
        if nbad:
            self.counters["flagged"] += nbad
            self._span_flagged += nbad
            fl = flags[bad]
            for bit, name in self.reasons:
                c = int(np.count_nonzero(fl & bit))
                if c:
                    self._span_reasons[name] += c
            keys, counts = np.unique(frame_keys(frames)[bad], return_counts=True)
            if len(self._span_ids) < MAX_IDS_KEPT:
                self._span_ids.update(dict(zip(keys.tolist(), counts.tolist(), strict=True)))
            m = self.conf.min_flagged
            tf = np.concatenate([self._recent, ts[bad]])
            hit = len(tf) >= m and bool(
                np.any(tf[m - 1 :] - tf[: len(tf) - m + 1] <= self.window_us)
            )
            self._recent = tf[len(tf) - (m - 1) :] if m > 1 else tf[:0]
            if hit and not self._armed:
                self._armed = True
                self._armed_at = int(ts[-1])
                self.counters["incidents"] += 1
        elif not self._armed and self._last_ts - self._span_first > max(
            self.window_us, self.cooldown_us
        ):
            self._reset_span()  # a few stray flags long ago, never an incident: forget them
            return []
        return self._maybe_emit()

    def _maybe_emit(self) -> list[tuple[int, dict[str, Any]]]:
        if not self._armed or self._last_ts < max(self._next_ok, self._armed_at + self.window_us):
            return []
        now = self._last_ts
        while self._sent and now - self._sent[0] >= 3_600_000_000:
            self._sent.popleft()
        if len(self._sent) >= self.conf.max_events_per_hour:
            self._suppressed += 1
            self.counters["suppressed"] += 1
            self._armed = False  # held back; the sums go into the next event
            return []
        data = self._event_data()
        self._sent.append(now)
        self._next_ok = now + self.cooldown_us
        self.counters["events"] += 1
        ts0 = self._span_first
        self._armed = False
        self._last_event = now
        self._suppressed = 0
        self._reset_span()
        return [(ts0, data)]

    def _event_data(self) -> dict[str, Any]:
        ids = self._span_ids.most_common()
        keys = np.array([k for k, _ in ids], np.uint64)
        pos = np.searchsorted(self.keys, keys)
        known = (pos < len(self.keys)) & (self.keys[np.minimum(pos, len(self.keys) - 1)] == keys)
        unknown = int(np.count_nonzero(~known))
        reasons = dict(self._span_reasons)
        rows = []
        for (key, count), is_known in zip(
            ids[:IDS_IN_EVENT], known[:IDS_IN_EVENT].tolist(), strict=True
        ):
            ext = bool(key >> 32)
            cid = key & 0x1FFFFFFF
            rows.append(
                {
                    "id": f"0x{cid:08x}" if ext else f"0x{cid:03x}",
                    "extended": ext,
                    "known": is_known,
                    "frames": int(count),
                }
            )
        return {
            "kind": _kind(reasons, unknown),
            "score": round(self._span_flagged / max(self._span_frames, 1), 4),
            "flagged": self._span_flagged,
            "frames": self._span_frames,
            "reasons": reasons,
            "distinct_ids": len(ids),
            "ids": rows,
            "first_ts_us": self._span_first,
            "last_ts_us": self._span_last,
            "source": self.source,
            "vehicle_model": self.loaded.vehicle_model,
            "suppressed": self._suppressed,
            # the same attack still going on: flags since the last event within its cool-down
            "follow_up": self._last_event >= 0
            and self._span_first - self._last_event <= self.cooldown_us + self.window_us,
        }


def attach_intrusion(agent: Any, edge_doc: dict[str, Any]) -> None:
    """Score every block of the watched CAN sources; events go out as ``intrusion``."""
    raw = edge_doc.get("intrusion", {})
    if not isinstance(raw, dict):
        raise ConfigError("[edge.intrusion] must be a table")
    try:
        conf = IntrusionSection.model_validate(raw)
    except ValidationError as err:
        lines = [
            f"  edge.intrusion.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
            for e in err.errors()
        ]
        raise ConfigError("invalid [edge.intrusion]:\n" + "\n".join(lines)) from err
    if not conf.enabled:
        return
    if conf.profile is None:
        raise ConfigError(
            "[edge.intrusion] enabled without a profile (carpulse ids learn ... --out FILE)"
        )
    from models.ids.profile import read_profile

    loaded = read_profile(conf.profile)  # ProfileError (a ConfigError): the agent does not start
    cans = [s for s in agent.sources if getattr(s, "frame_hooks", None) is not None]
    if conf.sources:
        missing = sorted(set(conf.sources) - {s.name for s in cans})
        if missing:
            raise ConfigError(f"[edge.intrusion] sources: no CAN source named {', '.join(missing)}")
        cans = [s for s in cans if s.name in conf.sources]
    if not cans:
        raise ConfigError("[edge.intrusion] is enabled but the agent has no CAN source to watch")

    def publish(got: list[tuple[int, dict[str, Any]]], src: Any) -> None:
        for ts_us, data in got:
            log.warning(
                "%r: CAN intrusion (%s, %d flagged frames of %d)",
                src, data["kind"], data["flagged"], data["frames"],
            )  # fmt: skip
            src.events.append(("intrusion", ts_us, INTRUSION_PRIORITY, data))

    agent.intrusion = []
    for src in cans:
        watch = IntrusionWatch(loaded, conf, src.name)
        agent.intrusion.append(watch)

        def hook(frames: Frames, watch: IntrusionWatch = watch, src: Any = src) -> None:
            loops = getattr(src, "replay_loops", 0)
            if loops != watch.loops:  # a replayed log started over: its seam is no attack
                watch.loops = loops
                watch.restart()
            try:
                got = watch.feed(frames)
            except Exception:  # the detector must never stop the bus being read
                watch.counters["errors"] = watch.counters.get("errors", 0) + 1
                if watch.counters["errors"] == 1:
                    log.exception(
                        "%r: intrusion detector failed (counted, frames still decoded)", src
                    )
                return
            publish(got, src)

        def tick(watch: IntrusionWatch = watch, src: Any = src) -> None:
            publish(watch.poll(), src)

        src.frame_hooks.append(hook)
        tick_hooks = getattr(agent, "tick_hooks", None)
        if tick_hooks is not None:
            tick_hooks.append(tick)
    log.info(
        "intrusion detection on %s with the %s profile (%d ids)",
        ", ".join(s.name for s in cans), loaded.vehicle_model, len(loaded.profile.keys),
    )  # fmt: skip


def stats(agent: Any) -> dict[str, Any]:
    """The counters of every watched bus, summed (for the stats file and /metrics)."""
    out: dict[str, Any] = {}
    for w in getattr(agent, "intrusion", []):
        for k, v in w.counters.items():
            out[k] = out.get(k, 0) + v
    if "cpu_s" in out:
        out["cpu_s"] = round(out["cpu_s"], 4)
    return out
