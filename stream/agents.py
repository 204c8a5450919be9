"""The Faust agents of the pipeline: telemetry micro-batches, events on the fast path, tables.

Agents stay thin: they decode nothing themselves; ``TelemetryPipeline`` and ``handle_event``
decide, the agents perform the I/O in a crash-safe order:

1. dead-letter records, 2. points through the shared ``SinkWriter`` (refused rows and lines are
dead-lettered, an outage parks them on the retry topic), 3. output topics, 4. table writes.
The telemetry agent commits a source offset itself, only after the micro-batch was handled, and
only for the contiguous run of offsets it received (``stream.offsets``: Faust's rebalance race can
drop records and commit past them), so a worker killed at any point has its batch reprocessed by
the next owner of the partition; the dedupe table then drops exactly what already went through
step 4 (whose samples are already in InfluxDB).

Faust and micro-batches: a table write goes to the changelog partition of ``current_event()``
(and the RocksDB store refuses writes without one), but a micro-batch mixes records of every
partition the worker owns. ``MicroBatcher`` (below: Faust's own ``take`` can lose an event) hands
over whole events; a batch is grouped by partition and, before the writes of a partition, that
partition's last event is made the stream's current event (``Stream._set_current_event``, what
Faust itself does per record while iterating). State then lands in the changelog partition of
the records it came from, and follows them on rebalance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust

from core.config import CarpulseSettings
from core.errors import WireError
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_ANOMALIES,
    KAFKA_DAILY,
    KAFKA_EVENTS,
    KAFKA_PREDICTIONS,
    KAFKA_STATUS,
    KAFKA_TELEMETRY,
    KAFKA_TRIPS,
    KAFKA_VEHICLE_STATE,
    check_device_id,
)
from core.wire import decode_status
from stream import state as vstate
from stream.alerts import handle_event
from stream.offsets import SourceOffsets, guarded
from stream.pipeline import T_DEDUPE, T_MODELS, T_STATE, TelemetryPipeline
from stream.privacy import PrivacyFeed, PrivacyView, public_state
from stream.registry import DeviceRegistry
from stream.silence import SilenceWatch
from stream.sinks.base import Points
from stream.sinks.writer import SinkWriter

log = logging.getLogger(__name__)
# devices whose last written online/offline state one worker remembers (repeats are dropped)
MAX_STATUS_DEVICES = 200_000


class MicroBatcher:
    """Micro-batches of events, acknowledged (or committed) only once handled.

    Faust 0.15's ``stream.take``/``take_events`` can acknowledge an event it never yields: an
    event waiting on the previous batch's future resumes after the next batch was cut, appends
    itself to the buffer being handled and is acked and cleared with it (seen here as one
    missing record in ~1 of 3 runs of the scale-out test). This batcher iterates a ``noack``
    stream event by event, cuts a batch at ``max_`` events or after ``within_s`` (a ticker task
    flushes an idle buffer) and acks each event after its batch was handled, so an offset is
    only committed for records whose effects are done.

    With ``offsets`` (``stream.offsets.SourceOffsets``, for a topic consumed with Faust acks
    off) an event is buffered only if it is the next offset of its partition, and a handled
    batch is committed through ``offsets`` instead of acked: Faust's rebalance race can drop
    records before they reach the agent and commit past them (module ``stream.offsets``).

    ``busy_within_s`` (longer than ``within_s``): the window of a batch whose first event came
    less than ``busy_within_s`` after the previous batch (of more than one event) was handled,
    i.e. while records keep coming. A busy worker then handles fewer, larger batches (each batch costs table and
    changelog writes per vehicle, output records, sink requests and a commit: BENCHMARKS.md,
    issue 22); an event after a quiet spell still waits only ``within_s``.
    """

    def __init__(
        self,
        stream: Any,
        handle: Callable[[Any, list[Any]], Awaitable[None]],
        max_: int,
        within_s: float,
        offsets: SourceOffsets | None = None,
        busy_within_s: float | None = None,
    ) -> None:
        self.stream = stream
        self.handle = handle
        self.max_ = max_
        self.within_s = within_s
        self.busy_within_s = max(within_s, busy_within_s or within_s)
        self.offsets = offsets
        self.buffer: list[Any] = []
        self.first_at = 0.0
        self.window = within_s  # of the batch being filled
        self.handled_at = float("-inf")  # when the last batch was handled
        self.last_size = 0  # and how many events it had
        self.busy_batches = 0  # batches cut with the busy window (counters page)
        self.lock = asyncio.Lock()

    async def flush(self) -> None:
        async with self.lock:
            batch, self.buffer = self.buffer, []
            if not batch:
                return
            self.last_size = len(batch)
            try:
                await self.handle(self.stream, batch)
                if self.offsets is not None:
                    await self.offsets.commit(batch)
                    return
                for event in batch:
                    await self.stream.ack(event)
            finally:
                self.handled_at = time.monotonic()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.within_s / 2)
            if self.buffer and time.monotonic() - self.first_at >= self.window:
                await self.flush()
            if self.offsets is not None:
                self.offsets.check()  # a hole with nothing arriving after it

    async def run(self) -> None:
        ticker = asyncio.create_task(self._ticker())
        try:
            async for event in self.stream.events():
                if self.offsets is not None and not await self.offsets.admit(event):
                    continue
                if not self.buffer:
                    self.first_at = now = time.monotonic()
                    busy = (
                        self.busy_within_s > self.within_s
                        and self.last_size > 1  # a trickle's batches are single records
                        and now - self.handled_at < self.busy_within_s
                    )
                    self.window = self.busy_within_s if busy else self.within_s
                    self.busy_batches += busy
                self.buffer.append(event)
                if len(self.buffer) >= self.max_:
                    await self.flush()
                if ticker.done():  # a failed flush in the ticker must not go unnoticed
                    ticker.result()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if self.offsets is not None:
                await self.offsets.close()


def make_tables(app: faust.App, partitions: int) -> dict[str, Any]:
    """The three tables: str keys (JSON on the wire), raw bytes values."""
    tables = {}
    for name, doc in (
        (T_DEDUPE, "per device and boot: high-water seq and recent seqs"),
        (T_STATE, "per vehicle: latest signals and derived state (JSON)"),
        (T_MODELS, "per partition: detector state blob (PartitionModels.to_bytes)"),
    ):
        table: Any = app.Table(
            name, key_type=str, value_type=bytes, partitions=partitions, help=doc
        )
        # Table() takes no serializer arguments and would JSON-encode bytes; the changelog
        # topic is made lazily from these attributes, so setting them here is enough.
        table.key_serializer = "json"
        table.value_serializer = "raw"
        tables[name] = table
    return tables


def output_topics(app: faust.App, partitions: int) -> dict[str, Any]:
    def topic(name: str, compacting: bool = False) -> Any:
        return app.topic(
            name,
            key_type=str,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            internal=True,  # Faust creates it with the app's partitions and replication
            partitions=partitions,
            compacting=compacting or None,
        )

    return {
        KAFKA_VEHICLE_STATE: topic(KAFKA_VEHICLE_STATE, compacting=True),
        KAFKA_ANOMALIES: topic(KAFKA_ANOMALIES),
        KAFKA_PREDICTIONS: topic(KAFKA_PREDICTIONS),
        KAFKA_TRIPS: topic(KAFKA_TRIPS),
        KAFKA_DAILY: topic(KAFKA_DAILY),
        KAFKA_ALERTS: topic(KAFKA_ALERTS),
    }


def install_pipeline(
    app: faust.App,
    settings: CarpulseSettings,
    registry: DeviceRegistry,
    writer: SinkWriter,
    deadletter: Any,
    privacy: PrivacyFeed | None = None,
) -> TelemetryPipeline:
    """Register the telemetry and events agents on ``app``; returns the pipeline (counters).

    ``privacy`` follows the CRM's location policies (``stream.privacy``); without one (unit
    tests) no position is stored or published."""
    st = settings.stream
    parts = settings.kafka.partitions
    tables = make_tables(app, parts)
    outs = output_topics(app, parts)
    view = privacy.view if privacy is not None else PrivacyView()
    pipeline = TelemetryPipeline(st, registry, privacy=view)
    # acks off: the agent commits its offsets itself (MicroBatcher + SourceOffsets)
    telemetry = app.topic(KAFKA_TELEMETRY, value_serializer="raw", key_serializer="raw", acks=False)
    events = app.topic(KAFKA_EVENTS, value_serializer="raw", key_serializer="raw", acks=False)
    event_stats = {"events": 0, "alerts": 0, "duplicates": 0, "dead_lettered": 0}
    app.carpulse_pipeline = pipeline  # type: ignore[attr-defined]
    status_topic = app.topic(KAFKA_STATUS, value_serializer="raw", key_serializer="raw")
    watch = SilenceWatch(st.silent_after_s, st.silent_min_kmh)
    app.carpulse_silence = watch  # type: ignore[attr-defined]
    app.carpulse_event_stats = event_stats  # type: ignore[attr-defined]

    def lookup(table: str, key: str) -> bytes | None:
        return tables[table].get(key)  # type: ignore[no-any-return]

    async def publish(topic: str, records: Iterable[tuple[str, bytes]]) -> None:
        for key, value in records:
            await outs[topic].send(key=key.encode(), value=value)

    async def handle(stream: Any, batch: list[Any]) -> None:
        last_of: dict[int, Any] = {}
        records = []
        for event in batch:
            p = event.message.partition
            last_of[p] = event
            records.append((p, event.value, event.key))
        res = pipeline.process(records, lookup)
        for value, headers in res.dead:
            await deadletter.send(value=value, headers=headers)
        await writer.deliver(res.points + res.anomaly_points)
        await publish(KAFKA_ANOMALIES, res.anomalies)
        await publish(KAFKA_PREDICTIONS, res.predictions)
        await publish(KAFKA_TRIPS, res.trips)
        await publish(KAFKA_DAILY, res.days)
        await publish(KAFKA_VEHICLE_STATE, res.state_updates)
        now_us = int(time.time() * 1e6)
        for partition, table, key, _ in res.writes:  # telemetry arrived: silent cars watch
            state = pipeline.live_state(key) if table == T_STATE else None
            if state is not None and (end := watch.seen(key, partition, now_us, state)):
                await publish(KAFKA_ALERTS, [(key, end)])
        current = None
        for partition, table, key, value in sorted(res.writes, key=lambda w: w[0]):
            if partition != current:
                # table writes go to the changelog partition of the current event
                stream._set_current_event(last_of[partition])
                current = partition
            tables[table][key] = value

    @app.agent(telemetry)
    async def telemetry_pipeline(stream: Any) -> Any:
        await writer.start()
        if privacy is not None:  # before the first batch: who may have positions stored
            privacy.start()
            await privacy.wait_ready()
        warming = getattr(app, "carpulse_warming", None)
        if warming is not None:  # kernels compiling in a thread: wait without blocking the loop
            await asyncio.to_thread(warming.join)
        offsets = SourceOffsets(app, {KAFKA_TELEMETRY})
        app.carpulse_offsets = offsets  # type: ignore[attr-defined]
        batcher = MicroBatcher(
            stream.noack(), handle, st.take_max, st.take_within_s, offsets, st.take_busy_within_s
        )
        app.carpulse_batcher = batcher  # type: ignore[attr-defined]
        try:
            await batcher.run()
        finally:
            await writer.close()

    @app.timer(1.0)
    async def republish_revoked() -> None:
        """A vehicle whose positions may no longer be published (consent withdrawn, sold):
        publish its state again without the location, so that the compacted ``vehicle-state``
        keeps none. Only the worker holding the vehicle's table entry finds it."""
        for vin in view.take_revoked():
            raw = tables[T_STATE].get(vin)
            if not raw:
                continue
            state = vstate.loads(raw)
            public = public_state(state, view.get(vin))
            if public is not state:
                await publish(KAFKA_VEHICLE_STATE, [(vin, vstate.dumps(public))])

    def owned_partitions() -> set[int]:
        return {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == KAFKA_TELEMETRY
        }

    @app.timer(1.0)
    async def silent_cars() -> None:
        """Alerts for cars gone silent at speed (``stream.silence``), each with the location
        its policy allows (none without consent: not a crash, no vital interest assumed)."""
        for vin, alert in watch.due(int(time.time() * 1e6), owned_partitions()):
            raw = tables[T_STATE].get(vin)
            if raw:
                where = public_state(vstate.loads(raw), view.get(vin)).get("location")
                if where is not None:
                    alert = silent_with_location(alert, where)
            await publish(KAFKA_ALERTS, [(vin, alert)])
            event_stats["alerts"] += 1

    last_status: dict[str, float] = {}  # device -> 1.0 online / 0.0 offline, last written

    @app.agent(status_topic)
    async def device_status(stream: Any) -> Any:
        """Devices' online/offline (the last will is ``offline``): into the silence watch and
        InfluxDB (``device_status``, field ``online``, for Grafana)."""
        await writer.start()
        try:
            async for event in stream.events():
                await status_one(event.key, event.value)
        finally:
            await writer.close()

    async def status_one(key: Any, value: Any) -> None:
        now_us = int(time.time() * 1e6)
        try:  # checked at the bridge (key = the topic's device); a topic is input too
            device = check_device_id(key.decode() if isinstance(key, bytes) else "")
            doc = decode_status(value)
        except (WireError, UnicodeDecodeError):
            event_stats["bad_status"] = event_stats.get("bad_status", 0) + 1
            return
        watch.status(device, doc["state"], now_us)
        online = 1.0 if doc["state"] == "online" else 0.0
        # the bridges may forward a message twice (one copy each): one point per change
        if last_status.get(device) == online:
            event_stats["status_repeats"] = event_stats.get("status_repeats", 0) + 1
            return
        if len(last_status) >= MAX_STATUS_DEVICES:
            last_status.clear()  # bounded: after a clear a device's next status is written again
        last_status[device] = online
        vin = registry.vin(device)
        tags = {"device": device, **({"vin": vin} if vin else {})}
        await writer.deliver([Points.point("device_status", tags, now_us, {"online": online})])

    @app.agent(events)
    async def events_fast_path(stream: Any) -> Any:
        # acks off on this topic too: the same race, the same guard; one by one, as an alert
        # must not wait for a batch (the commits are batched, not the handling)
        async with contextlib.aclosing(
            guarded(stream.events(), SourceOffsets(app, {KAFKA_EVENTS}))
        ) as admitted:
            async for event in admitted:
                await handle_one(event)

    async def handle_one(event: Any) -> None:
        received_us = int(time.time() * 1e6)
        event_stats["events"] += 1
        res = handle_event(event.value, registry, lookup, received_us, view)
        if res.alert is not None:
            await outs[KAFKA_ALERTS].send(key=res.alert[0].encode(), value=res.alert[1])
            event_stats["alerts"] += 1
        if res.dead is not None:
            event_stats["dead_lettered"] += 1
            await deadletter.send(value=res.dead[0], headers=res.dead[1])
        event_stats["duplicates"] += res.duplicate
        if res.state_update is not None:
            await publish(KAFKA_VEHICLE_STATE, [res.state_update])
        for table, key, value in res.writes:  # to the changelog partition of this event
            tables[table][key] = value

    return pipeline


def silent_with_location(alert: bytes, location: Any) -> bytes:
    """A silent-car alert with the position the vehicle's location policy allows."""
    doc = json.loads(alert)
    doc["location"] = location
    return json.dumps(doc).encode()
