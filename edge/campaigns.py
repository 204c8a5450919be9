"""Collection campaigns (as in AWS IoT FleetWise): what to send, how often, and at which priority.

A campaign selects signals by VSS path (``Vehicle.Speed``), prefix (``Vehicle.Powertrain.*``) or
all (``*``), and is one of:

- ``raw``: every sample;
- ``periodic``: ``hz`` windows per second, each sent as ``min``/``max``/``mean``/``last``
  (``last`` keeps the signal's own path; the others add a segment: ``Vehicle.Speed.Min``);
- ``on_change``: a sample only when it moved more than ``deadband`` since the last one sent;
- ``condition``: when ``condition`` (see :mod:`edge.expr`) becomes true, the selected signals from
  ``pre_s`` before to ``post_s`` after, the pre-trigger part taken from a ring buffer.

Campaigns carry a ``version``; :meth:`CampaignManager.apply` replaces a running campaign with a
newer version without a restart (the command handler calls it) and persists the set.
Everything works on whole micro-batches (arrays, numba kernels); per-batch Python only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigError
from core.wire import Samples
from edge import campaign_kernels as ck
from edge.expr import Expression, compile_expression

log = logging.getLogger(__name__)

AGG_SUFFIX = {"min": "Min", "max": "Max", "mean": "Mean", "last": ""}


class CampaignSpec(BaseModel):
    """One campaign as written in ``[[edge.campaigns]]`` or sent in a ``campaign`` command."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Unique name.")
    version: int = Field(1, ge=1, description="Higher versions replace lower ones.")
    kind: Literal["raw", "periodic", "on_change", "condition"] = Field(
        "raw", description="How samples are selected."
    )
    signals: list[str] = Field(["*"], min_length=1, description="VSS paths, 'Prefix.*' or '*'.")
    priority: int = Field(5, ge=1, le=9, description="1 = most important; 0 is kept for crashes.")
    hz: float = Field(1.0, gt=0, le=1000, description="periodic: windows per second.")
    aggregates: list[Literal["min", "max", "mean", "last"]] = Field(
        ["last"], min_length=1, description="periodic: what each window sends."
    )
    deadband: float = Field(0.0, ge=0, description="on_change: smallest change that is sent.")
    condition: str | None = Field(None, description="condition: expression over signals.")
    pre_s: float = Field(5.0, ge=0, le=600, description="condition: seconds kept before a trigger.")
    post_s: float = Field(5.0, ge=0, le=600, description="condition: seconds sent after a trigger.")

    @model_validator(mode="after")
    def _check(self) -> CampaignSpec:
        if self.kind == "condition":
            if not self.condition:
                raise ValueError("a condition campaign needs 'condition'")
            compile_expression(self.condition, f"campaign {self.name}")
        elif self.condition:
            raise ValueError(f"'condition' only applies to kind 'condition', not {self.kind!r}")
        return self


def parse_specs(items: Sequence[Any], where: str) -> list[CampaignSpec]:
    """Validate campaign tables; errors name the entry and the field."""
    out: list[CampaignSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            spec = CampaignSpec.model_validate(item)
        except ValidationError as err:
            lines = [
                f"  {'.'.join(str(x) for x in e['loc']) or '(campaign)'}: {e['msg']}"
                for e in err.errors()
            ]
            raise ConfigError(f"{where}: campaigns[{i}] is invalid:\n" + "\n".join(lines)) from err
        except ConfigError as err:
            raise ConfigError(f"{where}: campaigns[{i}]: {err}") from err
        if spec.name in seen:
            raise ConfigError(f"{where}: campaigns[{i}]: name {spec.name!r} is used twice")
        seen.add(spec.name)
        out.append(spec)
    return out


@dataclass
class Output:
    """What campaigns produced from one micro-batch: samples per priority, and triggers."""

    by_priority: dict[int, list[Samples]] = field(default_factory=dict)
    triggers: list[dict[str, Any]] = field(default_factory=list)

    def add(self, priority: int, samples: Samples) -> None:
        if len(samples):
            self.by_priority.setdefault(priority, []).append(samples)


def concat_samples(parts: Sequence[Samples]) -> Samples:
    """One ``Samples`` from several with different name tables (per-name work only)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Samples.empty()
    if len(parts) == 1:
        return parts[0]
    index: dict[str, int] = {}
    sigs = []
    for p in parts:
        remap = np.fromiter(
            (index.setdefault(n, len(index)) for n in p.names), np.int32, len(p.names)
        )
        sigs.append(remap[p.sig])
    return Samples(
        tuple(index),
        np.concatenate(sigs),
        np.concatenate([p.ts_us for p in parts]),
        np.concatenate([p.value for p in parts]),
    )


class _Selector:
    """Maps a source's name table to campaign slots (-1 = not selected), cached per table."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.all = "*" in patterns
        self.exact = {p for p in patterns if not p.endswith("*")}
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*") and p != "*")
        self.paths: list[str] = []  # slot -> path
        self._slot: dict[str, int] = {}
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def wants(self, name: str) -> bool:
        return self.all or name in self.exact or name.startswith(self.prefixes)

    def slots(self, names: tuple[str, ...]) -> np.ndarray:
        got = self._cache.get(names)
        if got is None:
            got = np.full(len(names), -1, np.int32)
            for i, name in enumerate(names):
                if self.wants(name):
                    got[i] = self._slot.setdefault(name, len(self._slot))
                    if got[i] == len(self.paths):
                        self.paths.append(name)
            if len(self._cache) > 64:  # sources keep their tables; this only bounds odd cases
                self._cache.clear()
            self._cache[names] = got
        return got


class _RingBuffer:
    """The last ``span_us`` of selected samples as array chunks (slot, ts, value)."""

    def __init__(self, span_us: int) -> None:
        self.span_us = span_us
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.newest = -(2**62)

    def append(self, slot: np.ndarray, ts: np.ndarray, val: np.ndarray) -> None:
        if len(ts):
            self.chunks.append((slot, ts, val))
            self.newest = max(self.newest, int(ts.max()))
        horizon = self.newest - self.span_us
        self.chunks = [c for c in self.chunks if len(c[1]) and int(c[1].max()) >= horizon]

    def window(self, t_from: int, t_to: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples with ``t_from <= ts <= t_to``, in time order."""
        if not self.chunks:
            return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0)
        slot = np.concatenate([c[0] for c in self.chunks])
        ts = np.concatenate([c[1] for c in self.chunks])
        val = np.concatenate([c[2] for c in self.chunks])
        m = (ts >= t_from) & (ts <= t_to)
        order = np.argsort(ts[m], kind="stable")
        return slot[m][order], ts[m][order], val[m][order]


class Campaign:
    """A running campaign with its state."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.spec = spec
        self.sel = _Selector(spec.signals)
        self.state: dict[str, np.ndarray] = {}
        self.period_us = max(1, round(1e6 / spec.hz))
        self.expr: Expression | None = None
        if spec.kind == "periodic":
            self.state = ck.periodic_state(0)
            self._agg_names: dict[int, tuple[str, ...]] = {}
        elif spec.kind == "on_change":
            self.state = ck.on_change_state(0)
        elif spec.kind == "condition":
            assert spec.condition is not None
            self.expr = compile_expression(spec.condition, f"campaign {spec.name}")
            self.ring = _RingBuffer(round(spec.pre_s * 1e6) + 1_000_000)
            self.carry = {name: np.nan for name in self.expr.signals}
            self.carry_cond = False
            self.capture_from: int | None = None  # next ts to send of an open capture
            self.capture_to = 0
            self.sent_until = -(2**62)
        self.triggers = 0

    def process(self, s: Samples, out: Output) -> None:
        kind = self.spec.kind
        slot_of = self.sel.slots(s.names)
        if kind == "raw":
            keep = slot_of[s.sig] >= 0
            if keep.all():
                out.add(self.spec.priority, s)
            elif keep.any():
                out.add(
                    self.spec.priority, Samples(s.names, s.sig[keep], s.ts_us[keep], s.value[keep])
                )
        elif kind == "on_change":
            ck.grow_state(self.state, len(self.sel.paths))
            rows = ck.on_change_update(slot_of, s.sig, s.value, self.spec.deadband, self.state)
            if len(rows):
                out.add(
                    self.spec.priority, Samples(s.names, s.sig[rows], s.ts_us[rows], s.value[rows])
                )
        elif kind == "periodic":
            self._periodic(s, slot_of, out)
        else:
            self._condition(s, slot_of, out)

    def _periodic(self, s: Samples, slot_of: np.ndarray, out: Output) -> None:
        ck.grow_state(self.state, len(self.sel.paths))
        slot, ts, mn, mx, mean, last = ck.periodic_update(
            slot_of, s.sig, s.ts_us, s.value, self.period_us, self.state
        )
        if not len(slot):
            return
        aggs = self.spec.aggregates
        single = len(aggs) == 1
        names = tuple(
            p if (single or AGG_SUFFIX[a] == "") else f"{p}.{AGG_SUFFIX[a]}"
            for p in self.sel.paths
            for a in aggs
        )
        cols = {"min": mn, "max": mx, "mean": mean, "last": last}
        na = len(aggs)
        sig = np.concatenate([slot * na + j for j in range(na)]).astype(np.int32)
        order = np.argsort(np.tile(ts, na), kind="stable")
        vals = np.concatenate([cols[a] for a in aggs])
        out.add(
            self.spec.priority,
            Samples(names, sig[order], np.tile(ts, na)[order], vals[order]).compact(),
        )

    def _condition(self, s: Samples, slot_of: np.ndarray, out: Output) -> None:
        assert self.expr is not None
        sel = slot_of[s.sig] >= 0
        self.ring.append(slot_of[s.sig][sel], s.ts_us[sel], s.value[sel])
        self._evaluate(s, out)
        self._emit_capture(out)

    def _evaluate(self, s: Samples, out: Output) -> None:
        assert self.expr is not None
        refs = self.expr.signals
        index = {n: i for i, n in enumerate(s.names)}
        ref_idx = np.array([index.get(n, -1) for n in refs], dtype=np.int64)
        if not (ref_idx >= 0).any():
            return
        rows = np.flatnonzero(np.isin(s.sig, ref_idx[ref_idx >= 0]))
        if not len(rows):
            return
        sig, val, ts = s.sig[rows], s.value[rows], s.ts_us[rows]
        pos = np.arange(len(rows))
        cols: dict[str, np.ndarray] = {}
        for name, k in zip(refs, ref_idx.tolist(), strict=True):
            # As-of join: each row sees the latest value of every referenced signal so far.
            idx = (
                np.maximum.accumulate(np.where(sig == k, pos, -1))
                if k >= 0
                else np.full(len(pos), -1)
            )
            cols[name] = np.where(idx >= 0, val[np.maximum(idx, 0)], self.carry[name])
            self.carry[name] = float(cols[name][-1])
        cond = self.expr.evaluate(cols)
        prev = np.concatenate(([self.carry_cond], cond[:-1]))
        rising = np.flatnonzero(cond & ~prev)
        self.carry_cond = bool(cond[-1])
        pre, post = round(self.spec.pre_s * 1e6), round(self.spec.post_s * 1e6)
        for t in ts[rising].tolist():  # per trigger, not per sample
            self.triggers += 1
            out.triggers.append(
                {"campaign": self.spec.name, "version": self.spec.version, "ts_us": int(t)}
            )
            if self.capture_from is None:
                self.capture_from = max(t - pre, self.sent_until + 1)
            self.capture_to = max(self.capture_to, t + post)

    def _emit_capture(self, out: Output) -> None:
        if self.capture_from is None:
            return
        upto = min(self.capture_to, self.ring.newest)
        slot, ts, val = self.ring.window(self.capture_from, upto)
        if len(ts):
            out.add(self.spec.priority, Samples(tuple(self.sel.paths), slot, ts, val).compact())
        self.sent_until = upto
        if self.ring.newest >= self.capture_to:
            self.capture_from = None
        else:
            self.capture_from = upto + 1


class CampaignManager:
    """The running campaigns; ``apply``/``remove`` may be called from another thread."""

    def __init__(self, specs: Sequence[CampaignSpec] = (), state_file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Campaign] = {}
        self.state_file = state_file
        for spec in specs:
            self._running[spec.name] = Campaign(spec)
        for spec in self._load_persisted():
            cur = self._running.get(spec.name)
            if cur is None or spec.version > cur.spec.version:
                self._running[spec.name] = Campaign(spec)

    def _load_persisted(self) -> list[CampaignSpec]:
        if self.state_file is None or not self.state_file.exists():
            return []
        try:
            doc = json.loads(self.state_file.read_text())
            return parse_specs(doc.get("campaigns", []), str(self.state_file))
        except (ValueError, ConfigError, AttributeError) as err:
            log.error("ignoring %s: %s", self.state_file, err)
            return []

    def _persist(self) -> None:
        if self.state_file is None:
            return
        doc = {"campaigns": [c.spec.model_dump() for c in self._running.values()]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.state_file)

    @property
    def specs(self) -> dict[str, CampaignSpec]:
        with self._lock:
            return {n: c.spec for n, c in self._running.items()}

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Start or replace a campaign from a dict; refuses older or equal versions.

        Returns ``{"ok": bool, "reason": str, ...}`` for the command acknowledgement.
        """
        try:
            spec = parse_specs([doc], "campaign command")[0]
        except ConfigError as err:
            return {"ok": False, "reason": "invalid", "detail": str(err)}
        with self._lock:
            cur = self._running.get(spec.name)
            if cur is not None and spec.version <= cur.spec.version:
                return {
                    "ok": False,
                    "reason": "stale_version",
                    "detail": f"{spec.name} runs version {cur.spec.version}",
                }
            running = dict(self._running)
            running[spec.name] = Campaign(spec)
            self._running = running  # swap: process() holds its own snapshot
            self._persist()
        log.info(
            "campaign %s version %d %s", spec.name, spec.version, "replaced" if cur else "started"
        )
        return {"ok": True, "reason": "applied", "name": spec.name, "version": spec.version}

    def remove(self, name: str) -> dict[str, Any]:
        with self._lock:
            if name not in self._running:
                return {"ok": False, "reason": "unknown_campaign", "detail": name}
            running = dict(self._running)
            del running[name]
            self._running = running
            self._persist()
        return {"ok": True, "reason": "removed", "name": name}

    def process(self, samples: Samples) -> Output:
        """Run every campaign over one micro-batch."""
        out = Output()
        if not len(samples):
            return out
        with self._lock:
            running = list(self._running.values())
        for c in running:
            c.process(samples, out)
        return out
