"""One telemetry micro-batch through decode, registry, dedupe, state and detectors: no I/O here.

``TelemetryPipeline.process(records)`` takes ``(partition, payload)`` pairs and returns a
``Result`` listing everything the agent must do: dead-letter records, ``Points`` (columns) for
the sink (``stream.sinks``: the sink renders its own format, InfluxDB line protocol), records for
the output topics and table writes *tagged with the partition they belong to*. The agent performs
them in a safe order (sink first, table checkpoints last), so a worker killed half-way reprocesses
the batch and the dedupe table drops only what was really written.

Bad input never stops a partition: a record that does not decode (``WireError`` reason), comes
from a device the registry does not know (``unknown_device``), is oversized (``oversized``), or
is too old for the dedupe window (``stale_seq``) is dead-lettered with its reason and counted;
NaN/inf samples and timestamps outside the clock-skew policy are dead-lettered by
``stream.lines`` and also kept out of the live state and the detectors. Anything else that goes
wrong with one record is dead-lettered as ``internal_error:<type>``: the partition keeps moving.

Location data (``Vehicle.CurrentLocation.*``) is written to InfluxDB only as the vehicle's
``LocationPolicy`` allows (``stream.privacy``: the current owner's consent, fixes of the
current ownership, tagged ``ownership`` and ``vin``); it never reaches the detectors, and the
published ``vehicle-state`` carries it only as allowed. Withheld rows are counted, not dead-lettered
(nothing is wrong with them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from core.checks import valid_dtcs
from core.config import StreamSettings
from core.errors import DecodeError, WireError
from core.wire import TelemetryBatch
from stream import state as vstate
from stream.alerts import dtc_key
from stream.battery import BatteryTracker
from stream.dedupe import DeviceSeen
from stream.lines import (
    LineStats,
    SkewPolicy,
    all_lines,
    batch_points,
    escape_key,
    escape_tag,
    keep_mask,
)
from stream.privacy import PrivacyView, location_tags, public_state, scrub_state, split_location
from stream.registry import DeviceRegistry
from stream.sinks.base import Points

if TYPE_CHECKING:  # numba loads at the first batch, not at import: the worker starts faster
    from stream.partition_models import PartitionModels

log = logging.getLogger(__name__)

# table names (the Faust app creates tables with these names)
T_DEDUPE = "dedupe"
T_STATE = "vehicle_state"
T_MODELS = "models"

Lookup = Callable[[str, str], bytes | None]  # (table, key) -> value
Record = tuple[int, bytes] | tuple[int, bytes, bytes | None]  # partition, value[, key]


@dataclass
class Counters:
    records: int = 0
    accepted: int = 0  # records whose samples went on (the rest: duplicates or dead letters)
    samples: int = 0
    rows: int = 0  # samples handed to the sink (the sink renders them: InfluxDB lines)
    duplicates: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    anomalies: int = 0
    anomaly_unwatched: int = 0  # samples of watched signals past stream.anomaly.max_slots
    battery_rejected: int = 0  # 12 V / cell / SoH readings that cannot be real (stream.battery)
    predictions: int = 0
    trips: int = 0
    days: int = 0
    state_updates: int = 0
    locations_stored: int = 0
    locations_withheld: int = 0

    def count(self, reason: str, n: int = 1) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.dead_lettered += n


@dataclass
class Result:
    dead: list[tuple[bytes, dict[str, bytes]]] = field(default_factory=list)
    points: list[Points] = field(default_factory=list)
    anomaly_points: list[Points] = field(default_factory=list)  # detector scores (``anomaly``)
    state_updates: list[tuple[str, bytes]] = field(default_factory=list)
    anomalies: list[tuple[str, bytes]] = field(default_factory=list)
    predictions: list[tuple[str, bytes]] = field(default_factory=list)
    trips: list[tuple[str, bytes]] = field(default_factory=list)
    days: list[tuple[str, bytes]] = field(default_factory=list)
    writes: list[tuple[int, str, str, bytes]] = field(default_factory=list)  # partition, table...

    @property
    def lines(self) -> list[str]:
        """``points`` as InfluxDB line protocol (tests and tools: the sink renders its own)."""
        return all_lines(self.points)

    @property
    def anomaly_lines(self) -> list[str]:
        return all_lines(self.anomaly_points)


def summary_points(measurement: str, vin: str, ts_us: int, rec: dict[str, Any]) -> Points:
    """A trip or a day summary as one point (numbers only, as floats; tag ``vin``)."""
    fields = {k: float(v) for k, v in rec.items() if k not in ("start_us", "end_us")}
    if "start_us" in rec:
        fields["duration_s"] = (rec["end_us"] - rec["start_us"]) / 1e6
    return Points.point(measurement, {"vin": vin}, ts_us, fields)


def summary_lines(measurement: str, vin: str, ts_us: int, rec: dict[str, Any]) -> str:
    """One line of protocol for a trip or a day summary (numbers only, as floats)."""
    fields = ",".join(
        f"{escape_key(k)}={float(v)!r}" for k, v in rec.items() if k not in ("start_us", "end_us")
    )
    if "start_us" in rec:
        fields += f",duration_s={(rec['end_us'] - rec['start_us']) / 1e6!r}"
    return f"{escape_key(measurement)},vin={escape_tag(vin)} {fields} {ts_us}"


class TelemetryPipeline:
    """Business logic of the telemetry agent; Kafka and InfluxDB stay outside."""

    def __init__(
        self,
        settings: StreamSettings,
        registry: DeviceRegistry,
        policy: SkewPolicy = SkewPolicy(),
        now_us: Callable[[], int] | None = None,
        privacy: PrivacyView | None = None,
    ) -> None:
        self.s = settings
        self.registry = registry
        self.privacy = privacy if privacy is not None else PrivacyView()  # empty: deny all
        self.policy = policy
        self.now_us = now_us or (lambda: int(time.time() * 1e6))
        self.counters = Counters()
        self.line_stats = LineStats()
        # Decoded detector state per partition and the exact blob it was last saved as: reused
        # while the table still holds that blob, re-read when a takeover restored another one.
        self._models: dict[int, tuple[PartitionModels, bytes | None]] = {}
        self._saved_at: dict[int, float] = {}
        # The same for the dedupe and vehicle_state entries this worker wrote last (per device,
        # per VIN, with the DTC entry merged in): no JSON/msgpack decode per batch while the
        # table still holds our own value; any other value (takeover, restore) is decoded.
        self._seen: dict[str, tuple[DeviceSeen, bytes]] = {}
        self._states: dict[str, tuple[vstate.State, bytes, bytes | None]] = {}

    def _dead(self, res: Result, payload: bytes, reason: str, detail: str, **extra: str) -> None:
        self.counters.count(reason)
        headers = {"reason": reason.encode(), "detail": detail[:500].encode()}
        headers.update({k: v.encode() for k, v in extra.items()})
        res.dead.append((payload, headers))

    def models_for(self, partition: int, lookup: Lookup) -> PartitionModels:
        from stream.partition_models import PartitionModels
        from stream.service_due import schedule_from

        key = f"p{partition}"
        stored = lookup(T_MODELS, key)
        cached = self._models.get(partition)
        if cached is not None and cached[1] is stored:
            return cached[0]
        sched = schedule_from(self.s.service_km, self.s.service_days, self.s.service_engine_hours)
        models = PartitionModels(self.s.anomaly_z, sched, self.s.anomaly, self._battery())
        if stored:
            try:
                models = PartitionModels.from_bytes(stored, sched, self.s.anomaly, self._battery())
            except DecodeError as err:  # never stall on a bad checkpoint: start fresh, say so
                self._dead(Result(), b"", "bad_checkpoint", str(err))
        models.seed_services(self.registry.last_service)  # from the CRM's service records
        self._models[partition] = (models, stored)
        return models

    def _battery(self) -> BatteryTracker:
        s = self.s
        return BatteryTracker(
            s.battery_cooldown_s, s.battery_spread_v, s.battery_soh_pct, s.battery_fade_years
        )

    def process(self, records: Sequence[Record], lookup: Lookup) -> Result:
        """``(partition, value[, key])`` records of the telemetry topic; the key is the device id
        the ingest bridge took from the MQTT topic (absent or ``None``: not checked)."""
        res = Result()
        by_part: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for rec in records:
            key = rec[2] if len(rec) > 2 else None  # type: ignore[misc]
            by_part.setdefault(rec[0], []).append((rec[1], key))
        for partition, payloads in by_part.items():
            part = Result()
            try:
                self._partition(partition, payloads, lookup, part)
            except Exception as err:  # the detectors or a checkpoint: never stall the partition
                log.exception(
                    "partition %d: a batch of %d records failed", partition, len(payloads)
                )
                part = Result()  # nothing of it is written: each record is a dead letter
                for payload, _ in payloads:
                    self._dead(part, payload, f"internal_error:{type(err).__name__}", str(err))
            for name in fields(Result):
                getattr(res, name.name).extend(getattr(part, name.name))
        return res

    def _partition(
        self,
        partition: int,
        payloads: list[tuple[bytes, bytes | None]],
        lookup: Lookup,
        res: Result,
    ) -> None:
        seen: dict[str, DeviceSeen] = {}
        states: dict[str, vstate.State] = {}
        feed: list[tuple[str, Any]] = []
        now = self.now_us()
        for payload, key in payloads:
            self.counters.records += 1
            try:
                self._record(payload, key, lookup, now, res, seen, states, feed)
            except Exception as err:  # never stall a partition on one record
                self._dead(res, payload, f"internal_error:{type(err).__name__}", str(err))
        models = self.models_for(partition, lookup)
        out = models.update(feed)
        for vin, ts in out.anomaly_ts.items():
            if vin in states:
                vstate.note_anomaly(states[vin], ts)
        res.anomalies += out.anomalies
        res.anomaly_points += out.anomaly_points
        self.counters.anomaly_unwatched += out.unwatched
        self.counters.battery_rejected += out.battery_rejected
        res.predictions += out.predictions
        self.counters.anomalies += len(out.anomalies)
        self.counters.predictions += len(out.predictions)
        for vin, rec in out.trips:
            res.trips.append((vin, json.dumps({"vin": vin, **rec}).encode()))
            res.points.append(summary_points("trips", vin, rec["end_us"], rec))
        for vin, rec in out.days:
            day_us = rec["day"] * 86_400_000_000
            res.days.append((vin, json.dumps({"vin": vin, **rec}).encode()))
            res.points.append(summary_points("daily", vin, day_us, rec))
        self.counters.trips += len(out.trips)
        self.counters.days += len(out.days)
        min_us = self.s.state_min_interval_ms * 1000
        for vin, st in states.items():
            update = vstate.take_update(st, min_us)
            if update is not None:
                pub = public_state(st, self.privacy.get(vin))
                res.state_updates.append((vin, update if pub is st else vstate.dumps(pub)))
                self.counters.state_updates += 1
            blob = update if update is not None else vstate.dumps(st)  # the same JSON
            self._states[vin] = (st, blob, self._states[vin][2])
            res.writes.append((partition, T_STATE, vin, blob))
        for device, dev in seen.items():
            blob = dev.to_bytes()
            self._seen[device] = (dev, blob)  # the agent stores this very object
            res.writes.append((partition, T_DEDUPE, device, blob))
        last = self._saved_at.get(partition, 0.0)
        if feed and time.monotonic() - last >= self.s.checkpoint_interval_s:
            self._saved_at[partition] = time.monotonic()
            blob = models.to_bytes()
            self._models[partition] = (models, blob)  # the agent stores this very object
            res.writes.append((partition, T_MODELS, f"p{partition}", blob))

    def _record(
        self,
        payload: bytes,
        key: bytes | None,
        lookup: Lookup,
        now: int,
        res: Result,
        seen: dict[str, DeviceSeen],
        states: dict[str, vstate.State],
        feed: list[tuple[str, Any]],
    ) -> None:
        """One record: dead-lettered, dropped as a duplicate, or its lines, state and feed."""
        from stream.wire_kernel import decode_telemetry_fast  # numba: at the first batch

        try:
            batch = decode_telemetry_fast(payload)  # core.wire's decode, one compiled pass
        except WireError as err:
            self._dead(res, payload, err.reason, err.detail)
            return
        if key is not None and key != batch.device_id.encode():
            # the bridge forwards the bytes after checking their envelope; a body that names
            # another device than its topic (the record key) is refused here
            self._dead(
                res, payload, "device_mismatch",
                f"batch says {batch.device_id!r}, key {key[:80]!r}", device=batch.device_id,
            )  # fmt: skip
            return
        n = len(batch.samples)
        if n > self.s.max_batch_samples:
            self._dead(
                res, payload, "oversized", f"{n} samples > {self.s.max_batch_samples}",
                device=batch.device_id,
            )  # fmt: skip
            return
        vin = self.registry.vin(batch.device_id)
        if vin is None:
            self._dead(
                res, payload, "unknown_device", f"{batch.device_id!r} is not in the registry"
            )
            return
        dev = seen.get(batch.device_id)
        if dev is None:
            dev = seen[batch.device_id] = self._load_seen(batch.device_id, lookup)
        verdict = dev.check(batch.boot_id, batch.seq)
        if verdict == "duplicate":
            self.counters.duplicates += 1
            return
        if verdict == "stale":
            self._dead(
                res, payload, "stale_seq",
                f"seq {batch.seq} of boot {batch.boot_id!r} is older than the dedupe window",
            )  # fmt: skip
            return
        policy = self.privacy.get(vin)
        points: list[Points] = []
        try:
            split = split_location(batch, policy)
            keep = rest_keep = keep_mask(split.rest, self.line_stats, self.policy, now)
            points.append(batch_points(split.rest, self.s.measurement, keep))
            stored = 0
            if split.stored is not None and policy is not None:
                stored = len(split.stored.samples)
                keep = keep_mask(split.stored, self.line_stats, self.policy, now)
                points.append(
                    batch_points(split.stored, self.s.measurement, keep, location_tags(policy))
                )
            # no location rows: the rows kept for the sink are the ones to clean with
            clean = self._clean(batch, now, rest_keep if split.rest is batch else None)
        finally:
            rejects, self.line_stats.rejects = self.line_stats.rejects, []
        st = states.get(vin)
        if st is None:
            st = states[vin] = self._load_state(vin, batch.device_id, lookup)
        st["device"] = batch.device_id
        vstate.apply_batch(st, clean)
        if scrub_state(st, policy):
            st["dirty"] = True
        # counted and emitted only once nothing more can fail for this record
        self.counters.accepted += 1
        self.counters.samples += n
        self.counters.locations_withheld += split.withheld
        self.counters.locations_stored += stored
        for p in points:
            if len(p):
                res.points.append(p)
                self.counters.rows += len(p)
        for reason, detail in rejects:
            self._dead(res, detail.encode("utf-8", "replace"), reason, "see value")
        feed.append((vin, split_location(clean, None).rest.samples))  # no positions

    def live_state(self, vin: str) -> vstate.State | None:
        """The vehicle's state as the last batch left it (None for other keys)."""
        cached = self._states.get(vin)
        return None if cached is None else cached[0]

    def _load_seen(self, device: str, lookup: Lookup) -> DeviceSeen:
        stored = lookup(T_DEDUPE, device)
        cached = self._seen.get(device)
        if cached is not None and stored is not None and cached[1] is stored:
            return cached[0]
        return DeviceSeen.from_bytes(stored)

    def _load_state(self, vin: str, device: str, lookup: Lookup) -> vstate.State:
        raw = lookup(T_STATE, vin)
        dtcs = lookup(T_STATE, dtc_key(vin))  # written by the events agent
        cached = self._states.get(vin)
        if cached is not None and raw is not None and cached[1] is raw:
            st = cached[0]
            if dtcs is cached[2]:
                return st
        else:
            st = vstate.loads(raw) if raw else vstate.new_state(vin, device)
        if dtcs:
            vstate.set_dtcs(st, valid_dtcs(json.loads(dtcs)), st["last_seen_us"] or 0)
        self._states[vin] = (st, raw or b"", dtcs)
        return st

    def _clean(
        self, batch: TelemetryBatch, now: int, keep: np.ndarray | None = None
    ) -> TelemetryBatch:
        """The batch without rows the skew policy or NaN checks reject (already counted);
        ``keep``: ``keep_mask`` of this very batch at ``now``, when the caller has it."""
        if keep is None:
            keep = keep_mask(batch, LineStats(), self.policy, now)
        if keep.all():
            return batch
        s = batch.samples
        idx = np.flatnonzero(keep)
        samples = type(s)(s.names, s.sig[idx], s.ts_us[idx], s.value[idx])
        return TelemetryBatch(batch.device_id, batch.boot_id, batch.seq, samples, batch.text)
