"""Live state for the screens: a hub of latest vehicle states, alerts and device status, fed from Kafka.

``KafkaFeed`` reads the compacted ``vehicle-state`` topic (from the start, so the hub knows every
vehicle's last state at once), ``carpulse.alerts`` (crashes) and ``carpulse.predictions``
(maintenance) into the advisor inbox, ``carpulse.status`` (each device's online/offline, the
latter usually its last will; keyed by device id, checked like at the bridge), with states that carry DTCs (routing) with aiokafka, without a consumer group: every app process
sees everything. ``StateHub`` keeps the latest state per VIN and fans changes out to the
server-sent-event streams of the open consoles; it never holds a location beyond what the state
carries, and the SSE view strips it unless the session holds a grant for that vehicle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from core.checks import valid_dtcs
from core.dtc import describe
from core.errors import WireError
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_PREDICTIONS,
    KAFKA_STATUS,
    KAFKA_VEHICLE_STATE,
    check_device_id,
)
from core.wire import decode_status

log = logging.getLogger(__name__)

SPEED: Final = "Vehicle.Speed"
FUEL: Final = "Vehicle.OBD.FuelLevel"
FUEL_ALT: Final = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
SOC: Final = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
MAX_ALERTS: Final = 50
MAX_FILING: Final = 10_000  # records waiting for the CRM database before the feed drops some
STOP_DRAIN_S: Final = 5.0  # how long a stopping dashboard waits for the cards still waiting


def describe_dtc(code: str) -> str:
    """The SAE J2012 text of a code (generic description for codes not in the table)."""
    try:
        return describe(code)
    except Exception:  # a malformed code from a device shows as itself
        return ""


def public_view(state: dict[str, Any], location_allowed: bool) -> dict[str, Any]:
    """What the console shows of a state: a fixed set of fields, the location only if allowed."""
    sig = state.get("signals") or {}

    def val(*names: str) -> float | None:
        for n in names:
            got = sig.get(n)
            if got is not None:
                return float(got[1])
        return None

    fuel, soc = val(FUEL, FUEL_ALT), val(SOC)
    return {
        "vin": state.get("vin"),
        "speed_kmh": val(SPEED),
        "ignition": state.get("ignition"),
        "fuel_pct": fuel,
        "soc_pct": soc,
        "odometer_km": state.get("odometer_km"),
        "dtcs": [
            {"code": c, "text": describe_dtc(c)} for c in valid_dtcs(state.get("active_dtcs"))
        ],
        "health": state.get("health"),
        "last_seen_us": state.get("last_seen_us"),
        "location": state.get("location") if location_allowed else None,
    }


class StateHub:
    """Latest state per VIN, recent crash alerts, and subscriber queues for the SSE streams."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ALERTS)
        self.status: dict[str, dict[str, Any]] = {}  # device -> {"state", "at_us"}
        self._subs: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self.updates = 0

    def subscribe(self) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        q: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=1000)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        self._subs.discard(q)

    def _fan_out(self, kind: str, doc: dict[str, Any]) -> None:
        for q in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled browser loses updates, not us
                q.put_nowait((kind, doc))

    def put_state(self, state: dict[str, Any]) -> None:
        vin = state.get("vin")
        if not isinstance(vin, str):
            return
        self.states[vin] = state
        self.updates += 1
        self._fan_out("state", state)

    def put_alert(self, alert: dict[str, Any]) -> None:
        alert.setdefault("received_us", int(time.time() * 1e6))
        if alert.get("kind") == "silent_end":  # the silent car reports again: its alert ends
            ended = alert.get("alarm_id")
            kept = [
                a
                for a in self.alerts
                if not (a.get("kind") == "silent" and a.get("alarm_id") == ended)
            ]
            self.alerts = deque(kept, maxlen=MAX_ALERTS)
        else:
            self.alerts.appendleft(alert)
        self._fan_out("alert", alert)

    def put_status(self, device: str, doc: dict[str, Any]) -> None:
        """A device's status (``online``, ``offline`` from its last will, ...), at arrival."""
        self.status[device] = {"state": doc["state"], "at_us": int(time.time() * 1e6)}
        self._fan_out("status", {"device": device, **self.status[device]})

    def online(self, device: str | None) -> str:
        """``online``, ``offline`` or ``unknown`` (no status heard from the device)."""
        got = self.status.get(device or "")
        return "unknown" if got is None else str(got["state"])


class KafkaFeed:
    """Consumes the stream's output topics into the hub (and predictions into ``on_prediction``)."""

    def __init__(
        self,
        bootstrap: str,
        hub: StateHub,
        on_record: Callable[[str, dict[str, Any]], None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap, self.hub, self.on_record = bootstrap, hub, on_record
        # security options (protocol, SASL account, TLS context) as aiokafka takes them
        self.options = dict(options or {"bootstrap_servers": bootstrap})
        self.bad = 0
        self.task: asyncio.Task[None] | None = None
        # the CRM writes happen on one thread of their own, in order: a busy or slow database
        # (SQLite waits up to 5 s for its write lock) never stalls the live feed or the pages
        self._filer: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.filing = 0  # records handed to the filer thread and not yet written
        self.not_filed = 0  # the writes that failed (the filer tries again with later records)
        self.dropped = 0  # records not handed over: MAX_FILING were already waiting
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="dashboard-kafka-feed")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self._filer is not None:  # a clean stop writes what waits, for a few seconds at most
            await asyncio.to_thread(self.drain, STOP_DRAIN_S)
            self._filer.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        topics = (KAFKA_VEHICLE_STATE, KAFKA_ALERTS, KAFKA_PREDICTIONS, KAFKA_STATUS)
        while True:
            consumer = AIOKafkaConsumer(
                *topics,
                **self.options,
                group_id=None,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=50,  # the console's 2 s budget: do not sit on a half-full fetch
                metadata_max_age_ms=5000,  # pick up topics the stream creates after we start
            )
            try:
                await consumer.start()
                self.ready.set()
                log.info("dashboard feed connected to %s", self.bootstrap)
                async for msg in consumer:
                    self.handle(msg.topic, msg.value, msg.key)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as err:
                log.warning("dashboard feed lost Kafka (%s); retrying in 2 s", err)
                await asyncio.sleep(2.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    def handle(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """One record; a bad one is counted and skipped, never raised."""
        if value is None:
            return
        if topic == KAFKA_STATUS:
            try:
                device = check_device_id(key.decode() if isinstance(key, bytes) else "")
                self.hub.put_status(device, decode_status(value))
            except (WireError, UnicodeDecodeError) as err:
                self.bad += 1
                if self.bad <= 10:
                    log.warning("dashboard feed: bad record on %s: %s", topic, err)
            return
        try:
            doc = json.loads(value)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            self.bad += 1
            if self.bad <= 10:
                log.warning("dashboard feed: bad record on %s: %s", topic, err)
            return
        if topic == KAFKA_VEHICLE_STATE:
            self.hub.put_state(doc)
        elif topic == KAFKA_ALERTS:
            self.hub.put_alert(doc)
        if self.on_record is not None and (topic == KAFKA_PREDICTIONS or doc.get("active_dtcs")):
            with self._lock:
                if self.filing >= MAX_FILING:  # the database is away: later records file again
                    self.dropped += 1
                    if self.dropped % 1000 == 1:
                        log.warning("dashboard feed: %d records waiting for the CRM database; "
                                    "%d not filed so far", self.filing, self.dropped)  # fmt: skip
                    return
                self.filing += 1
            if self._filer is None:
                self._filer = ThreadPoolExecutor(1, thread_name_prefix="dashboard-filer")
            self._filer.submit(self._file, topic, doc)

    def _file(self, topic: str, doc: dict[str, Any]) -> None:
        try:
            if self.on_record is not None:
                self.on_record(topic, doc)
        except Exception as err:  # a CRM hiccup must not stop the live feed
            self.not_filed += 1
            if self.not_filed <= 10 or self.not_filed % 1000 == 0:
                log.warning("dashboard feed: %s record not filed (%d so far): %s",
                            topic, self.not_filed, str(err).splitlines()[0][:300])  # fmt: skip
        finally:
            with self._lock:
                self.filing -= 1

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the records handed to the filer thread are written (or failed)."""
        deadline = time.monotonic() + timeout
        while self.filing and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.filing == 0
