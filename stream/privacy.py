"""Location privacy in the stream: which positions may be stored or published, per vehicle.

The CRM publishes a ``core.privacy.LocationPolicy`` per VIN to the compacted topic
``carpulse.privacy`` whenever consent or ownership changes (``crm.location_sync``). Every worker
reads the whole topic into a ``PrivacyView`` (``PrivacyFeed``: a plain consumer without a group,
from the start, like the dashboards' feed: the topic is small and every worker needs every
vehicle, whatever partitions of the telemetry it owns). The telemetry agent waits until the feed
has caught up once before its first batch; a vehicle without a record is denied.

Decisions are pure functions:

* ``split_location``: a batch's location rows (``Vehicle.CurrentLocation.*``) leave the batch; only
  those the policy allows (consent now, taken during the current ownership) come back, to be
  written with the ``ownership`` and ``vin`` tags. Every other signal flows unchanged.
* ``public_state``: the ``vehicle-state`` record (read by the dashboards) without location unless
  allowed. The worker's own table keeps the latest fix of the current ownership: the crash alert
  carries it (vital interest; ``alert_location``), and the CRM keeps it only with consent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from core.errors import WireError
from core.privacy import (
    TAG_OWNERSHIP,
    TAG_VIN,
    LocationPolicy,
    decode_policy,
    is_location_signal,
)
from core.topics import KAFKA_PRIVACY
from core.wire import Samples, TelemetryBatch

log = logging.getLogger(__name__)

READY_WAIT_S: Final = 30.0  # the telemetry agent waits this long for the first catch-up


@dataclass
class PrivacyView:
    """Latest policy per VIN, from the compacted topic; unknown VINs are denied."""

    policies: dict[str, LocationPolicy] = field(default_factory=dict)
    bad: int = 0
    # VINs that allowed positions and no longer do (or whose ownership changed): their last
    # published state is to be published again without the location (``take_revoked``)
    revoked: set[str] = field(default_factory=set)

    def get(self, vin: str) -> LocationPolicy | None:
        return self.policies.get(vin)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic; a tombstone or a bad record removes the VIN (deny)."""
        try:
            policy = decode_policy(key, value)
        except WireError as err:
            self.bad += 1
            if self.bad <= 10:
                log.warning("bad record on %s (key %r): %s", KAFKA_PRIVACY, key, err)
            policy = None
        vin = policy.vin if policy is not None else (key or b"").decode(errors="replace")
        old = self.policies.get(vin)
        if policy is not None:
            self.policies[vin] = policy
        else:
            self.policies.pop(vin, None)
        if (
            old is not None
            and old.location
            and (policy is None or not policy.location or policy.since_us != old.since_us)
        ):
            self.revoked.add(vin)

    def take_revoked(self, limit: int = 1000) -> list[str]:
        """Up to ``limit`` revoked VINs (the rest stay for the next call)."""
        out: list[str] = []
        while self.revoked and len(out) < limit:
            out.append(self.revoked.pop())
        return out

    def revoke_denied(self) -> None:
        """After the first catch-up: a withdrawal while no worker ran is caught up with too."""
        self.revoked.update(v for v, p in self.policies.items() if not p.location)


_MASKS: dict[tuple[str, ...], np.ndarray] = {}


def location_names(names: tuple[str, ...]) -> np.ndarray:
    """Per signal index: is it location data (cached per name tuple)."""
    got = _MASKS.get(names)
    if got is None:
        if len(_MASKS) > 4096:
            _MASKS.clear()
        got = _MASKS[names] = np.array([is_location_signal(n) for n in names], dtype=bool)
    return got


def _take(batch: TelemetryBatch, keep: np.ndarray, text: tuple[Any, ...]) -> TelemetryBatch:
    s = batch.samples
    idx = np.flatnonzero(keep)
    samples = Samples(s.names, s.sig[idx], s.ts_us[idx], s.value[idx])
    return TelemetryBatch(batch.device_id, batch.boot_id, batch.seq, samples, text)


@dataclass(frozen=True)
class Split:
    rest: TelemetryBatch  # everything but location data
    stored: TelemetryBatch | None  # the location rows that may be stored (None: none)
    withheld: int  # location rows (and texts) left out


def split_location(batch: TelemetryBatch, policy: LocationPolicy | None) -> Split:
    """Take location rows out of ``batch``; keep those ``policy`` allows."""
    s = batch.samples
    loc_text = tuple(t for t in batch.text if is_location_signal(t[0]))
    if not len(s.names) and not loc_text:
        return Split(batch, None, 0)
    is_loc = location_names(s.names)
    mask = is_loc[s.sig] if len(s.sig) and is_loc.any() else np.zeros(len(s.sig), dtype=bool)
    if not mask.any() and not loc_text:
        return Split(batch, None, 0)
    other_text = tuple(t for t in batch.text if not is_location_signal(t[0]))
    rest = _take(batch, ~mask, other_text)
    if policy is None or not policy.location:
        return Split(rest, None, int(mask.sum()) + len(loc_text))
    allowed = mask & (s.ts_us >= policy.since_us)
    text = tuple(t for t in loc_text if policy.allows(t[1]))
    withheld = int(mask.sum() - allowed.sum()) + len(loc_text) - len(text)
    if not allowed.any() and not text:
        return Split(rest, None, withheld)
    return Split(rest, _take(batch, allowed, text), withheld)


def location_tags(policy: LocationPolicy) -> tuple[tuple[str, str], tuple[str, str]]:
    """The extra tags of a stored position (sorted after ``device``, as InfluxDB likes them)."""
    return ((TAG_OWNERSHIP, policy.ownership), (TAG_VIN, policy.vin))


def fix_ts(state: dict[str, Any]) -> int | None:
    loc = state.get("location")
    if not isinstance(loc, dict):
        return None
    ts = loc.get("ts_us")
    return ts if type(ts) is int else None


def scrub_state(state: dict[str, Any], policy: LocationPolicy | None) -> bool:
    """Drop from the worker's own state the location of an earlier ownership; True if changed.

    Without a policy (unknown vehicle) the fix stays in the table (never published): the
    crash alert of a vehicle the CRM has not told us about yet still says where it is."""
    if policy is None:
        return False
    sig = state.get("signals") or {}
    old = [n for n, v in sig.items() if is_location_signal(n) and v[0] < policy.since_us]
    for n in old:
        del sig[n]
    ts = fix_ts(state)
    if ts is not None and ts < policy.since_us:
        state["location"] = None
        return True
    return bool(old)


def public_state(state: dict[str, Any], policy: LocationPolicy | None) -> dict[str, Any]:
    """The state as published on ``vehicle-state``: location only where ``policy`` allows it.

    Returns ``state`` itself when nothing is to be removed (the caller reuses its bytes)."""
    sig = state.get("signals") or {}
    hidden = [n for n, v in sig.items() if is_location_signal(n) and not _allows(policy, v[0])]
    ts = fix_ts(state)
    drop_fix = state.get("location") is not None and (ts is None or not _allows(policy, ts))
    if not hidden and not drop_fix:
        return state
    out = dict(state)
    out["signals"] = {n: v for n, v in sig.items() if n not in hidden}
    if drop_fix:
        out["location"] = None
    return out


def alert_location(state: dict[str, Any] | None, policy: LocationPolicy | None) -> Any:
    """The fix a crash alert carries: the latest one, never one from an earlier ownership."""
    if not state:
        return None
    ts = fix_ts(state)
    if ts is None or (policy is not None and ts < policy.since_us):
        return None
    return state.get("location")


def _allows(policy: LocationPolicy | None, ts: Any) -> bool:
    return policy is not None and type(ts) is int and policy.allows(ts)


async def ensure_privacy_topic(
    options: dict[str, Any], replication: int = 1, min_insync_replicas: int = 1
) -> None:
    """Create ``carpulse.privacy`` (one partition, compacted) if it does not exist.

    ``carpulse stack up`` does this as the admin; on another cluster an operator creates the
    topic (the components' principals may not create topics). ``options``: aiokafka's
    connection keywords (``KafkaSettings.client_options``)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        if KAFKA_PRIVACY not in set(await admin.list_topics()):
            configs = {"cleanup.policy": "compact", "min.insync.replicas": str(min_insync_replicas)}
            topic = NewTopic(KAFKA_PRIVACY, 1, replication, topic_configs=configs)
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()


class PrivacyFeed:
    """Reads ``carpulse.privacy`` from the start into a ``PrivacyView`` and follows it."""

    def __init__(self, options: dict[str, Any], view: PrivacyView) -> None:
        self.options, self.view = dict(options), view
        self.ready = asyncio.Event()
        self.records = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="privacy-feed")

    async def wait_ready(self, timeout_s: float = READY_WAIT_S) -> bool:
        """True once caught up; False after ``timeout_s`` (positions are then withheld)."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout_s)
        except TimeoutError:
            log.warning("privacy feed not caught up after %.0fs: positions withheld", timeout_s)
            return False
        return True

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        broken = False
        while True:
            # subscribed without a group: every partition, from the start; a topic created
            # later is found by the metadata refresh (positions stay withheld until then)
            consumer = AIOKafkaConsumer(
                KAFKA_PRIVACY,
                **self.options,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=100,
                metadata_max_age_ms=5000,
            )
            try:
                await consumer.start()
                if broken:
                    log.warning("privacy feed reconnected")
                    broken = False
                ends: dict[Any, int] | None = None
                while True:
                    batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                    for records in batch.values():
                        for rec in records:
                            self.view.apply(rec.key, rec.value)
                            self.records += 1
                    if self.ready.is_set():
                        continue
                    tps = list(consumer.assignment())
                    if not tps:
                        continue
                    if ends is None:
                        ends = await consumer.end_offsets(tps)
                    behind = [tp for tp in tps if await consumer.position(tp) < ends.get(tp, 0)]
                    if not behind:
                        self.view.revoke_denied()
                        self.ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Kafka away, or anything else: never stop following
                if not broken:
                    log.warning("privacy feed lost Kafka (%s: %s); retrying",
                                type(err).__name__, err)  # fmt: skip
                    broken = True
                await asyncio.sleep(2.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
