"""The models' detectors on micro-batches of one Kafka partition, with their state as one blob.

``PartitionModels`` holds every vehicle of one partition: a slot per vehicle (trips, oil life,
service due) and a slot per (vehicle, signal) for the configured anomaly detector (stream.anomaly). ``update`` takes the
decoded batches of a micro-batch, runs each kernel once over all of them (no per-sample Python)
and returns anomaly, prediction, trip and daily records. ``to_bytes`` is what the Faust table
``models`` stores under the partition's key, so a worker that takes the partition over resumes
the detectors where the last checkpoint left them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import numpy as np

from core.config import AnomalySettings
from core.errors import DecodeError
from core.wire import Samples, TelemetryBatch
from models.kernels.zscore import RobustZScore
from models.maintenance.oil import OilState, oil_life, update_oil
from models.maintenance.service import Schedule, UsageState
from models.state import SlotState
from stream import trips as tripmod
from stream.anomaly import AnomalyTracker, check_detector, parse_signals
from stream.battery import CELL_MAX, CELL_MIN, LV_VOLTAGE, SOH, BatteryTracker
from stream.service_due import ENGINE_HOURS, ODOMETER, ServiceTrack, ServiceTracker
from stream.sinks.base import Points
from stream.state import ENGINE_RPM, SPEED

OIL_TEMP: Final = "Vehicle.Powertrain.CombustionEngine.EOT"
ANOMALY_MEASUREMENT: Final = "anomaly"
ANOMALY_FIELDS: Final = ("score", "threshold", "events")
OIL_STEP: Final = 0.001  # a new oil-life prediction is published when it moved by this much
K_OIL_TEMP, K_ODO, K_HOURS = 10, 11, 12  # kind codes past the trip kernel's
K_LV, K_CELL_MAX, K_CELL_MIN, K_SOH = 13, 14, 15, 16  # stream.battery's signals
# 2: service-due state added; a version-1 blob still loads (service state starts empty)
# 3: the configured anomaly detector with evidence rings; a z-score of v1/v2 carries over
# 4: 12 V and traction-battery state (stream.battery); a v1-v3 blob loads with it empty
_VERSION: Final = 4


@dataclass
class Outputs:
    """Records produced by one ``update``: (vehicle id, JSON bytes) pairs per topic."""

    anomalies: list[tuple[str, bytes]] = field(default_factory=list)
    predictions: list[tuple[str, bytes]] = field(default_factory=list)
    trips: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    days: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    anomaly_ts: dict[str, int] = field(default_factory=dict)  # vehicle -> newest anomaly
    anomaly_points: list[Points] = field(default_factory=list)  # the scores, per vehicle/signal
    unwatched: int = 0  # samples of watched signals past max_slots (not scored)
    battery_rejected: int = 0  # battery readings that cannot be real (stream.battery)
    dropped: int = 0

    @property
    def anomaly_lines(self) -> list[str]:
        """``anomaly_points`` as InfluxDB line protocol (tests and tools)."""
        from stream.lines import all_lines

        return all_lines(self.anomaly_points)


def _grow_oil(state: OilState, n: int) -> OilState:
    have = len(state.life)
    if n <= have:
        return state
    # The last oil change of a newly seen vehicle is unknown: NaN until its first sample, which
    # then stands in for it (the CRM's service records could seed the real date).
    grown = OilState.empty(n, changed_ts=np.nan)
    for name in ("life", "revs", "last_ts", "changed_ts"):
        getattr(grown, name)[:have] = getattr(state, name)
    return grown


def _forward_fill(
    slot: np.ndarray, ts: np.ndarray, src_slot: np.ndarray, src_ts: np.ndarray, src_v: np.ndarray
) -> np.ndarray:
    """For each (slot, ts) the last ``src`` value of the same slot at or before ts (NaN if none)."""
    out = np.full(len(slot), np.nan)
    if not len(src_slot) or not len(slot):
        return out
    base = min(int(ts.min()), int(src_ts.min()))
    span = max(int(ts.max()), int(src_ts.max())) - base + 1
    key = src_slot * span + (src_ts - base)
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    q = slot * span + (ts - base)
    pos = np.searchsorted(key_sorted, q, side="right") - 1
    ok = pos >= 0
    ok[ok] = src_slot[order[pos[ok]]] == slot[ok]
    out[ok] = src_v[order[pos[ok]]]
    return out


class PartitionModels:
    """Detector state and slot maps for the vehicles of one partition."""

    def __init__(
        self,
        anomaly_z: float = 6.0,
        schedule: Schedule | None = None,
        anomaly: AnomalySettings | None = None,
        battery: BatteryTracker | None = None,
    ) -> None:
        self.anomaly_z = anomaly_z
        self.battery = battery if battery is not None else BatteryTracker()
        cfg = self.anomaly_cfg = anomaly if anomaly is not None else AnomalySettings()
        default = check_detector(cfg.detector).threshold
        threshold = cfg.threshold if cfg.threshold is not None else default
        self.anomaly = AnomalyTracker(
            cfg.detector,
            anomaly_z if threshold is None else threshold,
            cfg.cooldown_s,
            cfg.window,
            cfg.calib,
        )
        self._watched: dict[str, bool] = {}
        self.vehicles: dict[str, int] = {}
        self.zslots: dict[tuple[str, str], int] = {}
        self.trips: SlotState = tripmod.empty_state(0)
        self.oil = OilState.empty(0)
        self.oil_emitted = np.zeros(0)
        self.service = ServiceTracker(schedule)
        self.service_seeds: Mapping[str, tuple[float, float]] = {}

    def seed_services(self, seeds: Mapping[str, tuple[float, float]]) -> None:
        """Last services (vin -> (UTC day number, km)) from the registry: a vehicle already
        tracked restarts its interval when the record is newer than the interval's start; a
        vehicle seen later starts at its record."""
        self.service_seeds = seeds
        tr = self.service.track
        for vin, slot in self.vehicles.items():
            seed = seeds.get(vin)
            if seed is None or slot >= len(tr.start_day):
                continue
            start = tr.start_day[slot]
            if np.isnan(start) or seed[0] > start:
                self.service.seed(slot, *seed)
            elif (start, tr.start_odo[slot]) == seed:
                self.service.seeded.add(slot)  # restored from a checkpoint: still that record

    def _vehicle_slot(self, vin: str) -> int:
        slot = self.vehicles.get(vin)
        if slot is None:
            slot = self.vehicles[vin] = len(self.vehicles)
            if (seed := self.service_seeds.get(vin)) is not None:
                self.service.seed(slot, *seed)
        return slot

    def _z_slot(self, vin: str, signal: str) -> int:
        """The anomaly slot of (vin, signal); -1: not watched, -2: watched but no slot left."""
        watched = self._watched.get(signal)
        if watched is None:
            if len(self._watched) >= 65_536:  # signal names come from devices: a bounded cache
                self._watched.clear()
            watched = self._watched[signal] = parse_signals(self.anomaly_cfg.signals, [signal])[0]
        if not watched:
            return -1
        slot = self.zslots.get((vin, signal))
        if slot is None:
            if len(self.zslots) >= self.anomaly_cfg.max_slots:
                return -2
            slot = self.zslots[(vin, signal)] = len(self.zslots)
        return slot

    def update(self, batches: Sequence[tuple[str, Samples]]) -> Outputs:
        """Run every detector once over the samples of ``batches`` ((vehicle id, samples))."""
        out = Outputs()
        cols: dict[str, list[np.ndarray]] = {"vslot": [], "zslot": [], "ts": [], "v": [], "k": []}
        kinds = {
            **tripmod.SIGNAL_KIND,
            OIL_TEMP: K_OIL_TEMP,
            ODOMETER: K_ODO,
            ENGINE_HOURS: K_HOURS,
            LV_VOLTAGE: K_LV,
            CELL_MAX: K_CELL_MAX,
            CELL_MIN: K_CELL_MIN,
            SOH: K_SOH,
        }
        for vin, s in batches:
            if not len(s):
                continue
            vs = self._vehicle_slot(vin)
            # per name: trip/oil kind code (-1: not used) and anomaly slot (-1: not watched)
            kind_of = np.array([kinds.get(n, -1) for n in s.names], np.int64)
            z_of = np.array([self._z_slot(vin, n) for n in s.names], np.int64)
            # only rows some detector reads (or counts: -2, watched past max_slots) go on; most
            # signals are none of them, and copying every row cost more than the detectors
            used = (kind_of >= 0) | (z_of != -1)
            if used.all():
                sig, ts, val = s.sig, s.ts_us, s.value
            else:
                rows = np.flatnonzero(used[s.sig])
                sig, ts, val = s.sig[rows], s.ts_us[rows], s.value[rows]
            cols["vslot"].append(np.full(len(sig), vs, np.int64))
            cols["zslot"].append(z_of[sig])
            cols["k"].append(kind_of[sig])
            cols["ts"].append(ts)
            cols["v"].append(val)
        if not cols["ts"]:
            return out
        vslot, zslot, kind, ts, val = (
            np.concatenate(cols[c]) for c in ("vslot", "zslot", "k", "ts", "v")
        )
        names = {v: k for k, v in self.vehicles.items()}
        self._anomalies(zslot, ts, val, out)
        self._oil(vslot, kind, ts, val, names, out)
        tm = kind >= 0
        tm &= kind <= tripmod.K_ENERGY
        t_slot, t_rows, d_slot, d_rows, dropped = tripmod.update_trips(
            self.trips, vslot[tm], ts[tm], kind[tm], val[tm]
        )
        out.dropped += dropped
        if len(t_slot):  # closed trips make the service interval shorter for severe use
            self.service.add_trips(t_slot, t_rows, len(self.vehicles))
        self._service(vslot, kind, ts, val, names, out)  # after the trips: their severity counts
        self._battery(vslot, kind, ts, val, names, out)
        for s_, row in zip(t_slot.tolist(), t_rows.tolist(), strict=True):
            rec = dict(zip(tripmod.TRIP_FIELDS, row, strict=True))
            rec["start_us"], rec["end_us"] = int(rec["start_us"]), int(rec["end_us"])
            out.trips.append((names[s_], rec))
        for s_, row in zip(d_slot.tolist(), d_rows.tolist(), strict=True):
            rec = dict(zip(tripmod.DAY_FIELDS, row, strict=True))
            rec["day"], rec["trips"] = int(rec["day"]), int(rec["trips"])
            out.days.append((names[s_], rec))
        return out

    def _anomalies(self, zslot: np.ndarray, ts: np.ndarray, val: np.ndarray, out: Outputs) -> None:
        out.unwatched += int(np.count_nonzero(zslot == -2))
        m = zslot >= 0
        if not m.any():
            return
        zs, zt, zv = zslot[m], ts[m], val[m]
        order = np.lexsort((zt, zs))  # time order per slot, as the detector requires
        hits = self.anomaly.update(zs[order], zv[order], zt[order])
        by_slot = {v: k for k, v in self.zslots.items()}
        det = self.anomaly.detector
        events = Counter(s_ for s_, _ in hits.events)
        scored: dict[int, list[tuple[int, float]]] = {}
        for s_, t_i, score in hits.scores:
            scored.setdefault(s_, []).append((t_i, score))
        for s_, rows in scored.items():  # one point per score: score, threshold, events
            vin, signal = by_slot[s_]
            n = len(rows)
            ts = np.repeat(np.fromiter((t for t, _ in rows), np.int64, n), 3)
            val = np.empty((n, 3))
            val[:, 0] = [sc for _, sc in rows]
            val[:, 1] = self.anomaly.threshold
            val[:, 2] = float(events[s_])
            out.anomaly_points.append(
                Points(
                    ANOMALY_MEASUREMENT,
                    (("vin", vin), ("signal", signal), ("detector", det)),
                    ANOMALY_FIELDS,
                    np.tile(np.arange(3), n),
                    ts,
                    val.ravel(),
                )
            )
        for s_, rec in hits.events:
            vin, signal = by_slot[s_]
            t_i = rec["ts_us"]
            out.anomalies.append((vin, json.dumps({"vin": vin, "signal": signal, **rec}).encode()))
            out.anomaly_ts[vin] = max(out.anomaly_ts.get(vin, t_i), t_i)

    def _oil(
        self,
        vslot: np.ndarray,
        kind: np.ndarray,
        ts: np.ndarray,
        val: np.ndarray,
        names: dict[int, str],
        out: Outputs,
    ) -> None:
        rpm = kind == tripmod.K_RPM
        if not rpm.any():
            return
        n = len(self.vehicles)
        self.oil = _grow_oil(self.oil, n)
        if len(self.oil_emitted) < n:
            self.oil_emitted = np.concatenate(
                [self.oil_emitted, np.full(n - len(self.oil_emitted), np.nan)]
            )
        eot = kind == K_OIL_TEMP
        r_slot, r_ts = vslot[rpm], ts[rpm]
        order = np.lexsort((r_ts, r_slot))
        r_slot, r_ts, r_v = r_slot[order], r_ts[order], val[rpm][order]
        temp = _forward_fill(r_slot, r_ts, vslot[eot], ts[eot], val[eot])
        first = np.r_[True, r_slot[1:] != r_slot[:-1]]
        fresh = first & np.isnan(self.oil.changed_ts[r_slot])
        self.oil.changed_ts[r_slot[fresh]] = r_ts[fresh] / 1e6
        life, bad = update_oil(self.oil, r_slot, r_ts / 1e6, r_v, temp)
        out.dropped += bad
        last = np.r_[r_slot[1:] != r_slot[:-1], True]
        for s_, t_, life_i in zip(
            r_slot[last].tolist(), r_ts[last].tolist(), life[last].tolist(), strict=True
        ):
            prev = self.oil_emitted[s_]
            if np.isnan(prev) or abs(life_i - prev) >= OIL_STEP:
                self.oil_emitted[s_] = life_i
                capped = float(oil_life(self.oil, t_ / 1e6)[s_])
                rec = {
                    "vin": names[s_],
                    "kind": "oil_life",
                    "ts_us": int(t_),
                    "value": capped,
                    "revs": float(self.oil.revs[s_]),
                    # the oil interval (its start, s): the CRM's once-per-oil-change period
                    "interval": f"oil@{self.oil.changed_ts[s_]:.0f}",
                }
                out.predictions.append((names[s_], json.dumps(rec).encode()))

    def _service(
        self,
        vslot: np.ndarray,
        kind: np.ndarray,
        ts: np.ndarray,
        val: np.ndarray,
        names: dict[int, str],
        out: Outputs,
    ) -> None:
        odo = kind == K_ODO
        if not odo.any():
            return
        hrs = kind == K_HOURS
        o_slot, o_ts = vslot[odo], ts[odo]
        hours = _forward_fill(o_slot, o_ts, vslot[hrs], ts[hrs], val[hrs])
        recs, dropped = self.service.update(o_slot, o_ts, val[odo], hours, names)
        out.predictions += recs
        out.dropped += dropped

    def _battery(
        self,
        vslot: np.ndarray,
        kind: np.ndarray,
        ts: np.ndarray,
        val: np.ndarray,
        names: dict[int, str],
        out: Outputs,
    ) -> None:
        if not (kind >= K_LV).any():
            return
        lv, lo, hi, soh = (kind == k for k in (K_LV, K_CELL_MIN, K_CELL_MAX, K_SOH))
        c_slot, c_ts = vslot[lo], ts[lo]
        # the max beside each min: the last at or before it, else the first after it (a BMS may
        # send the two in separate frames, in either order)
        c_hi = _forward_fill(c_slot, c_ts, vslot[hi], ts[hi], val[hi])
        after = _forward_fill(c_slot, -c_ts, vslot[hi], -ts[hi], val[hi])
        c_hi = np.where(np.isnan(c_hi), after, c_hi)
        paired = ~np.isnan(c_hi)
        before = self.battery.rejected
        out.predictions += self.battery.update(
            len(self.vehicles),
            (vslot[lv], ts[lv], val[lv]),
            (c_slot[paired], c_ts[paired], val[lo][paired], c_hi[paired]),
            (vslot[soh], ts[soh], val[soh]),
            names,
        )
        out.battery_rejected += self.battery.rejected - before

    def to_bytes(self) -> bytes:
        doc = {
            "v": _VERSION,
            "z": self.anomaly_z,
            "vehicles": list(self.vehicles),
            "zslots": [list(k) for k in self.zslots],
            "anomaly": self.anomaly.to_bytes(),
            "trips": self.trips.to_bytes(),
            "oil": self.oil.to_bytes(),
            "oil_emitted": self.oil_emitted.tobytes(),
            "usage": self.service.usage.to_bytes(),
            "service": self.service.track.to_bytes(),
            **self.battery.to_blobs(),
        }
        return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def from_bytes(
        cls,
        raw: bytes,
        schedule: Schedule | None = None,
        anomaly: AnomalySettings | None = None,
        battery: BatteryTracker | None = None,
    ) -> PartitionModels:
        """Restore a checkpoint; ``schedule`` and ``anomaly`` are configuration, not state
        (settings win: a checkpoint of another detector leaves the detector state fresh)."""
        try:
            doc = msgpack.unpackb(raw, raw=False)
            if doc.get("v") not in (1, 2, 3, _VERSION):
                raise DecodeError(f"partition models: version {doc.get('v')!r}")
            m = cls(anomaly_z=float(doc["z"]), schedule=schedule, anomaly=anomaly, battery=battery)
            m.vehicles = {v: i for i, v in enumerate(doc["vehicles"])}
            m.zslots = {(a, b): i for i, (a, b) in enumerate(doc["zslots"])}
            if doc["v"] >= 3:
                m.anomaly.load(doc["anomaly"])
            elif m.anomaly.detector == "robust_zscore":  # v1/v2: the z-score carries over
                m.anomaly.parts = [RobustZScore.from_bytes(doc["zscore"])]
            m.trips = SlotState.from_bytes(doc["trips"], "trips")
            m.oil = OilState.from_bytes(doc["oil"])
            m.oil_emitted = np.frombuffer(doc["oil_emitted"], np.float64).copy()
            if doc["v"] >= 2:
                m.service.usage = UsageState.from_bytes(doc["usage"])
                m.service.track = ServiceTrack.from_bytes(doc["service"])
            m.battery.load(doc)
        except (KeyError, TypeError, ValueError, OSError, msgpack.UnpackException) as err:
            raise DecodeError(f"partition models: bad state blob: {err}") from err
        return m


def warm_up(anomaly: AnomalySettings | None = None) -> None:
    """Compile every kernel the stream uses on a tiny batch.

    The worker calls this before it joins the consumer group: numba compiles at the first call
    (caching is off, see core/kernel_flags.py), which takes seconds on a small machine and would
    block the event loop, heartbeats included, long enough to be evicted from the group.
    """
    t = np.arange(4, dtype=np.int64) * 1_000_000
    names = [SPEED, ENGINE_RPM, OIL_TEMP, "Vehicle.Powertrain.FuelSystem.RelativeLevel", ODOMETER]
    names += [LV_VOLTAGE, CELL_MIN, CELL_MAX, SOH]  # the battery kernels too
    sig = np.repeat(np.arange(len(names)), 4)
    samples = Samples.from_columns(names, sig, np.tile(t, len(names)), np.ones(4 * len(names)))
    models = PartitionModels(anomaly=anomaly)
    models.update([("warm-up", samples)])
    models.anomaly.update(np.zeros(4, np.int64), np.ones(4), t)  # whatever signals are watched
    from stream.lines import ValueTexts, batch_lines

    batch = TelemetryBatch("warm-up", "warm-up", 0, samples)
    from core.wire import encode_telemetry
    from stream.wire_kernel import decode_telemetry_fast

    decode_telemetry_fast(encode_telemetry(batch))  # the worker's decode
    batch_lines(batch, "warm-up", now_us=int(t[-1]))  # the renderer, its new-values table
    from stream.state import latest_per_signal

    latest_per_signal(samples)  # the live state's scan
    texts = ValueTexts()  # the hash index, on a private cache: the global one stays as it is
    texts._rebuild()
    texts.lookup(np.ones(2).view(np.int64))
