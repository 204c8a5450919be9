"""Faust agents that run the CRM rules on the stream's topics, and the CRM's periodic jobs.

Agents stay thin: a record becomes ``CrmEvent``s (``crm.normalize``) and each is handled in
its own database transaction (``RuleEngine.handle``) on a worker thread, since SQLAlchemy is
synchronous. The topics are consumed with Faust acks off and each agent commits a record's offset
itself once its transactions committed (``stream.offsets``: Faust's rebalance race can skip
records and commit past them; a skipped prediction is a lost coupon). A worker that dies in
between sees the record again, and the effect keys already taken make that a no-op.
A malformed record is counted and dead-lettered with its reason; the stream goes on. So is a
record on which anything else but the database being away fails (``crm_error:<type>``), and a
``gate.*`` event from a device that is not a registered gate camera (``not_a_gate``: the
``gates`` of ``stream.registry``, given to ``install_crm_agents``).

Every ``PRIVACY_SYNC_S`` the leader publishes the vehicles' changed location policies to the
compacted ``carpulse.privacy`` topic (``crm.location_sync``: the stream stores positions only as
they allow) and deletes from InfluxDB positions stamped after a withdrawal; the hourly retention
purge reaches InfluxDB too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Container
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from sqlalchemy.exc import OperationalError

from core.backoff import Backoff
from core.checks import finite
from core.config import KafkaSettings, StreamSettings
from core.crm_events import CrmEvent
from core.errors import DecodeError, SinkError, WireError
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_ANOMALIES,
    KAFKA_DEADLETTER,
    KAFKA_EVENTS,
    KAFKA_PREDICTIONS,
    KAFKA_PRIVACY,
)
from crm import location_sync as ls
from crm.delivery import Dispatcher, close_silent_cards
from crm.engine import RuleEngine
from crm.jobs import DeadLetter, retry_parked, scan
from crm.lifecycle import HOURLY, run_jobs
from crm.location_sink import InfluxLocations
from crm.normalize import from_record
from crm.privacy import record_gate_sighting, record_location
from crm.store import CrmStore, has_consent
from stream.kafka_options import make_faust_app
from stream.offsets import SourceOffsets, guarded

log = logging.getLogger(__name__)
CRM_TOPICS = (KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_ANOMALIES)
PURGE_EVERY_S = 3600  # retention is counted in days: once an hour is plenty
LIFECYCLE_EVERY_S = 3600  # tier reviews and inactivity are counted in days and months
PRIVACY_SYNC_S = 2.0  # how soon the stream learns of a consent or ownership change


def handle_record(
    store: CrmStore,
    engine: RuleEngine,
    topic: str,
    payload: bytes,
    stats: Counter[str],
    gates: Container[str] = frozenset(),
) -> list[CrmEvent]:
    """One Kafka record, synchronously: normalise, then one transaction per CRM event.

    Raises ``DecodeError`` for a malformed record (the caller dead-letters it); ``gate.*``
    events count only from the devices in ``gates``.
    """
    events = from_record(topic, payload, gates)
    stats["records"] += 1
    for ev in events:
        if ev.kind == "silent_car_end" and ev.vin:  # not a rule: the episode's card closes
            with store.tx() as s:
                stats["silent_closed"] += close_silent_cards(s, ev.vin, ev.data["alarm_id"])
            stats["events"] += 1
            continue
        with store.tx() as s:
            out = engine.handle(s, ev)
            face = ev.customer_id if ev.data.get("via") == "face" else None
            # an unknown member (parked) has no consent to look up: nothing of the match is kept
            if face is not None and (out.parked is not None or not has_consent(s, face, "face")):
                face = None  # nothing of an unconsented face match is kept
            elif (
                ev.kind == "gate_arrival" and out.parked is None and (face or ev.data.get("plate"))
            ):
                record_gate_sighting(  # the face match is kept only with face consent
                    s, ev.ts, str(ev.data.get("camera", "")), ev.data.get("plate"),
                    out.vin, out.customer_id if face is None else None, face,
                )  # fmt: skip
            loc = ev.data.get("location") if ev.kind == "crash" else None
            if isinstance(loc, dict) and ev.vin and {"lat", "lon"} <= set(loc):
                # kept only with the owner's location consent (crm.privacy)
                lat = finite(loc["lat"], "bad_location", "crash location lat")
                lon = finite(loc["lon"], "bad_location", "crash location lon")
                stats["locations_kept"] += record_location(
                    s, ev.vin, ev.ts, lat, lon, "crash-alert"
                )
        stats["events"] += 1
        stats["fired"] += len(out.fired)
        for firing in out.fired:  # per rule, for the metrics (stream.metrics.crm_registry)
            stats["fired:" + firing.rule] += 1
        stats["parked"] += out.parked is not None
    return events


def dead_letter_of(topic: str, value: Any, err: Exception) -> tuple[bytes, dict[str, bytes]]:
    """The dead-letter record of a record ``handle_record`` failed on, with its reason."""
    if isinstance(err, WireError):
        reason = err.reason
    elif isinstance(err, DecodeError):
        reason = "crm_bad_record"
    else:  # not a database outage (DbRunner waits those out): this record's fault
        reason = f"crm_error:{type(err).__name__}"
        log.warning("CRM record on %s failed: %s", topic, str(err)[:300])
    headers = {"reason": reason.encode(), "topic": topic.encode(),
               "detail": str(err)[:500].encode("utf-8", "replace")}  # fmt: skip
    payload = value if isinstance(value, bytes) else repr(value)[:1000].encode()
    return payload, headers


class DbRunner:
    """Runs the CRM's synchronous database work on one thread, retrying while the database is
    busy or away: a record is never skipped (its offset is committed only after it went
    through), and the agent never dies of a lock timeout. One thread also keeps the agents of
    this worker from contending for SQLite's single writer lock."""

    def __init__(self, max_delay_s: float = 30.0) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-db")
        self.max_delay_s = max_delay_s
        self.broken = False

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.05, self.max_delay_s)
        while True:
            try:
                result = await loop.run_in_executor(self.executor, fn, *args)
            except OperationalError as err:  # locked, deadlock, connection lost: try again
                if not self.broken:
                    log.warning("CRM database unavailable, retrying: %s", str(err).splitlines()[0])
                    self.broken = True
                await asyncio.sleep(backoff.next())
                continue
            if self.broken:
                log.warning("CRM database reachable again")
                self.broken = False
            return result


def periodic(
    store: CrmStore,
    engine: RuleEngine,
    dispatcher: Dispatcher | None,
    stats: Counter[str],
    location_sink: InfluxLocations | None = None,
) -> list[DeadLetter]:
    """Tier changes and expiring coupons, the lifecycle jobs (``crm.lifecycle``: coupon expiry,
    referral rewards; hourly tier reviews and inactivity), parked events, the outbox, the
    retention purge; returns the parked events given up on, for the dead-letter topic."""
    dead: list[DeadLetter] = []
    stats.update({f"scan_{k}": v for k, v in scan(store, engine).items()})
    # coupon expiry and referral rewards every time; tier reviews and inactivity once an hour
    mono = time.monotonic()
    hourly = mono - stats.get("_last_lifecycle_mono", -LIFECYCLE_EVERY_S) >= LIFECYCLE_EVERY_S
    jobs = ("expire", "referrals", *(HOURLY if hourly else ()))
    stats.update({f"jobs_{k}": v for k, v in run_jobs(store, engine, only=jobs).items()})
    if hourly:
        stats["_last_lifecycle_mono"] = int(mono)
    stats.update({f"parked_{k}": v for k, v in retry_parked(store, engine, dead=dead).items()})
    if dispatcher is not None:
        stats.update({f"outbox_{k}": v for k, v in dispatcher.run_once().items()})
    now = time.monotonic()
    if now - stats.get("_last_purge_mono", -PURGE_EVERY_S) >= PURGE_EVERY_S:
        try:
            stats.update({f"purged_{k}": v for k, v in ls.purge(store, location_sink).items()})
        except SinkError as err:  # InfluxDB away: the CRM's part is done, the whole runs again
            log.warning("retention purge could not reach InfluxDB: %s", err)
            stats["purge_influx_errors"] += 1
            return dead
        stats["_last_purge_mono"] = int(now)
    return dead


def install_crm_agents(
    app: faust.App,
    store: CrmStore,
    engine: RuleEngine,
    *,
    dispatcher: Dispatcher | None = None,
    interval_s: float = 60.0,
    run: Callable[..., Any] | None = None,
    dead: Callable[[bytes, dict[str, bytes]], Awaitable[Any]] | None = None,
    location_sink: InfluxLocations | None = None,
    privacy_interval_s: float = PRIVACY_SYNC_S,
    gates: Container[str] = frozenset(),
) -> Counter[str]:
    """Register one agent per consumed topic and a timer for the periodic jobs; returns counters.

    ``dead(value, headers)`` sends a bad record to the dead-letter topic (by default
    ``carpulse.deadletter``); ``gates``: the gate cameras (``DeviceRegistry.gates``).
    ``location_sink`` deletes positions from the stream's InfluxDB (erasure, purge, withdrawal);
    without it only the CRM's own tables are purged.
    """
    stats: Counter[str] = Counter()
    run = run or DbRunner()
    if dead is None:
        deadletter = app.topic(KAFKA_DEADLETTER, value_serializer="raw", key_serializer="raw")

        async def dead(value: bytes, headers: dict[str, bytes]) -> Any:
            return await deadletter.send(value=value, headers=headers)

    app.carpulse_crm_stats = stats  # type: ignore[attr-defined]

    def make_agent(topic_name: str) -> None:
        # acks off: the agent commits its offsets itself, after the record's transactions
        topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw", acks=False)

        async def crm_agent(stream: Any) -> Any:
            offsets = SourceOffsets(app, {topic_name})
            async with contextlib.aclosing(guarded(stream.events(), offsets)) as events:
                async for event in events:  # committed when the next one is asked for
                    value = event.value
                    try:
                        await run(handle_record, store, engine, topic_name, value, stats, gates)
                    except Exception as err:  # a hostile record never stops the agent
                        payload, headers = dead_letter_of(topic_name, value, err)
                        stats["dead_lettered"] += 1
                        stats["dead_" + headers["reason"].decode()] += 1
                        await dead(payload, headers)
                    yield None

        crm_agent.__name__ = "crm_" + topic_name.replace(".", "_").replace("-", "_")
        crm_agent.__qualname__ = crm_agent.__name__
        app.agent(topic, name=f"crm.{topic_name}")(crm_agent)

    for name in CRM_TOPICS:
        make_agent(name)

    @app.timer(interval_s, on_leader=True)
    async def crm_periodic() -> None:
        try:
            given_up = await run(periodic, store, engine, dispatcher, stats, location_sink)
            for value, headers in given_up:  # the rows keep dead_at even if a send fails
                await dead(value, headers)
        except Exception:  # a database blip must not stop the timer; it runs again next time
            log.exception("CRM periodic jobs failed")
            stats["periodic_errors"] += 1

    privacy_topic = app.topic(KAFKA_PRIVACY, value_serializer="raw", key_serializer="raw")
    sync = ls.PolicySync()
    app.carpulse_privacy_sync = sync  # type: ignore[attr-defined]

    def changed_policies() -> list[Any]:
        with store.tx() as s:
            return sync.changes(ls.current_policies(s))

    @app.timer(privacy_interval_s, on_leader=True)
    async def crm_privacy_sync() -> None:
        try:
            for policy in await run(changed_policies):
                await privacy_topic.send(key=policy.vin.encode(), value=policy.encode())
                sync.mark_published([policy])
                stats["privacy_published"] += 1
            if sync.cuts:
                stats["privacy_cuts"] += await run(sync.run_cuts, location_sink)
        except Exception:  # Kafka or the database away: the next run sends what changed
            log.exception("CRM privacy sync failed")
            stats["privacy_errors"] += 1

    return stats


def build_crm_app(
    app_id: str,
    kafka: KafkaSettings,
    store: CrmStore,
    engine: RuleEngine,
    dispatcher: Dispatcher | None = None,
    interval_s: float = 60.0,
    session_timeout_s: float = 30.0,
    location_sink: InfluxLocations | None = None,
    gates: Container[str] = frozenset(),
    datadir: Path | None = None,
    web_port: int = 0,
    web_host: str = "127.0.0.1",
    faust_sensor: bool = False,
    fetch_max_wait_ms: int = StreamSettings.model_fields["fetch_max_wait_ms"].default,
) -> faust.App:
    """A Faust app of its own for the CRM worker (``carpulse crm worker``); its table data goes
    to ``datadir`` (``StreamSettings.faust_datadir``), never to the current directory. With
    ``web_port`` its web server serves ``/metrics``, ``/healthz`` and ``/readyz`` (ready: database
    and Kafka partitions). Kafka settings as the stream worker's (``make_faust_app``), with its
    consumer's fetch wait ``fetch_max_wait_ms`` (``[stream] fetch_max_wait_ms``)."""
    app = make_faust_app(
        app_id,
        kafka,
        "crm",
        session_timeout_s=session_timeout_s,
        fetch_max_wait_ms=fetch_max_wait_ms,
        datadir=str(datadir if datadir is not None else StreamSettings().faust_datadir(app_id)),
        store="memory://",
        web_enabled=bool(web_port),
        web_port=web_port or 6066,
        web_bind=web_host,
        # the group coordinator waits up to this long for members at a (re)join
        broker_rebalance_timeout=session_timeout_s,
    )
    install_crm_agents(app, store, engine, dispatcher=dispatcher, interval_s=interval_s,
                       location_sink=location_sink, gates=gates)  # fmt: skip
    app.carpulse_offset_guards = []  # type: ignore[attr-defined]
    if web_port:
        from stream.metrics import add_faust_sensor, crm_registry, install_web, kafka_assigned

        async def database() -> tuple[bool, str]:
            return await asyncio.to_thread(store.ping)

        checks = {"database": database, "kafka": lambda: kafka_assigned(app)}
        registry = crm_registry(app)
        if faust_sensor:
            add_faust_sensor(app, registry, "carpulse_crm")
        install_web(app, registry, checks)
    return app
