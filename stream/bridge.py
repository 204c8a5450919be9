"""MQTT -> Kafka ingest bridge.

Subscribes with QoS 1 (shared subscription, persistent session) to every device's telemetry,
events and status, checks each message against the wire contract and produces it to Kafka keyed
by device id. An MQTT message is acknowledged (PUBACK) only after Kafka acknowledged the record,
so a bridge that dies loses nothing: the broker redelivers what was not acknowledged. Invalid
messages go to the dead-letter topic with the reason in the headers, then are acknowledged.

The bridge checks a telemetry message's envelope (topic, size, header, the device id it names:
``core.wire.telemetry_device``) and forwards its bytes; the samples are decoded once, in the stream
worker, which dead-letters what does not decode or names another device than the record's key.
Events, status and command acks are small and decoded in full here.

Messages are checked on paho's network thread (a thread pool with ``[bridge] decode_workers``),
off the event loop, and queued for one forwarder task on the loop. Every ``[kafka] linger_ms``
window it puts the records of each partition into one batch without waiting for Kafka (all of a
window's batches share one produce request) and acknowledges a batch's MQTT messages from that
batch's future, in one write; a device's messages reach Kafka in the order they came (with no
pool).

Hostile input never stalls the bridge: the check of one message is bounded; *any* exception
while handling one message (not only ``WireError``) makes it a dead letter with a reason and a
counter, and the message is acknowledged. Only a Kafka outage leaves a
message unacknowledged (the broker redelivers it once Kafka is back); a record Kafka refuses for
good (too large, invalid) is dead-lettered as ``kafka_refused``. Each device has a token
bucket (``[bridge] rate_per_device``, ``burst_per_device``): what it sends beyond that is
acknowledged and dropped at once in the network thread, counted as ``rate_limited``, so a flood
costs neither a decode nor a Kafka write. Messages over ``max_payload_bytes`` are dead-lettered
with their first 64 KiB only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)

from core.backoff import exponential
from core.commands import decode_ack
from core.config import CarpulseSettings, KafkaSettings
from core.errors import ConfigError, PublishError, WireError
from core.observe import ObsServer
from core.topics import (
    KAFKA_BY_CHANNEL,
    KAFKA_DEADLETTER,
    KAFKA_TELEMETRY,
    parse_topic,
    subscription,
)
from core.wire import decode_event, decode_status, telemetry_device
from stream.bridge_batch import Partitions, ack_all, fill
from stream.kafka_options import kafka_problem, topic_configs

log = logging.getLogger(__name__)

CHANNELS = ("telemetry", "events", "status", "cmd-ack")
# Kafka refusing one record (not an outage): retrying it would hold it in flight for ever.
REFUSED_RECORD = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    InvalidMessageError,
    CorruptRecordException,
)
DEAD_PAYLOAD_MAX = 64 * 1024  # what is kept of an oversized message in the dead-letter topic
BATCH_BYTES = 1024 * 1024  # Kafka producer batch per partition (aiokafka's default is 16 KiB)
MAX_BUCKETS = 100_000  # devices remembered by the rate limiter (oldest forgotten first)
# queued messages that end the forwarder's window early (Mosquitto's max_inflight_messages is 100)
FLUSH_AT = 50
_LINGER = (KAFKA_TELEMETRY, KAFKA_DEADLETTER)  # records that wait for the window's end


@dataclass
class BridgeCounters:
    received: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    rate_limited: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, reason: str) -> None:
        with self.lock:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            if reason == "rate_limited":
                self.rate_limited += 1
            else:
                self.dead_lettered += 1


class RateLimiter:
    """A token bucket per device: ``rate`` messages a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, at)
        self.lock = threading.Lock()

    def allow(self, device: str) -> bool:
        now = self.clock()
        with self.lock:
            tokens, at = self.buckets.pop(device, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            ok = tokens >= 1.0
            self.buckets[device] = (tokens - 1.0 if ok else tokens, now)  # most recent last
            if len(self.buckets) > MAX_BUCKETS:
                self.buckets.pop(next(iter(self.buckets)))
            return ok


# a checked MQTT message waiting for the forwarder: (client, mid, qos, MQTT topic, route)
Item = tuple[mqtt.Client, int, int, str, "Route"]


def _topic_device(topic: str) -> str:
    """The device segment of a topic, unchecked (the rate limiter's key)."""
    parts = topic.split("/", 3)
    return parts[2][:64] if len(parts) > 2 else ""


def validate(topic: str, payload: bytes) -> tuple[str, str]:
    """Check one MQTT message; return ``(kafka_topic, device_id)`` or raise ``WireError``."""
    device_id, channel = parse_topic(topic)
    if channel == "telemetry":  # the envelope only: the worker decodes the samples, once
        said = telemetry_device(payload)
        if said != device_id:
            raise WireError("device_mismatch", f"batch says {said!r}, topic {device_id!r}")
    elif channel == "events":
        event = decode_event(payload)
        if event.device_id != device_id:
            raise WireError(
                "device_mismatch", f"event says {event.device_id!r}, topic {device_id!r}"
            )
    elif channel == "status":
        decode_status(payload)
    elif channel == "cmd-ack":
        decode_ack(payload)
    elif channel not in KAFKA_BY_CHANNEL:
        raise WireError("bad_topic", f"channel {channel[:64]!r} is not bridged")
    return KAFKA_BY_CHANNEL[channel], device_id


@dataclass(frozen=True, slots=True)
class Route:
    """Where one MQTT message goes: ``reason`` None forwards it, else it is a dead letter."""

    kafka_topic: str
    key: bytes | None
    payload: bytes
    reason: str | None = None
    detail: str = ""

    def headers(self, topic: str) -> list[tuple[str, bytes]]:
        """The dead-letter headers: reason, detail and the MQTT topic it came on."""
        return [
            ("reason", (self.reason or "").encode()),
            ("detail", self.detail[:500].encode("utf-8", "replace")),
            ("mqtt_topic", topic[:300].encode("utf-8", "replace")),
        ]


def route(topic: str, payload: bytes, max_payload: int) -> Route:
    """Forward or dead-letter one MQTT message; never raises (runs on the decode pool)."""
    try:
        if len(payload) > max_payload:
            raise WireError("too_large", f"{len(payload)} bytes > {max_payload}")
        kafka_topic, device_id = validate(topic, payload)
        return Route(kafka_topic, device_id.encode(), payload)
    except Exception as err:  # every failure to handle one message is a dead letter
        return dead_route(payload, err)


def dead_route(payload: bytes, err: BaseException) -> Route:
    if isinstance(err, WireError):
        reason, detail = err.reason, err.detail
    else:  # a bug or an input no check foresaw: still a dead letter, never a stuck message
        reason, detail = f"internal_error:{type(err).__name__}", str(err)[:500]
    return Route(KAFKA_DEADLETTER, None, payload[:DEAD_PAYLOAD_MAX], reason, detail)


async def ensure_topics(
    kafka: KafkaSettings | str,
    partitions: int,
    replication: int,
    names: list[str],
    component: str | None = None,
) -> None:
    """Create topics that do not exist yet (``kafka``: the settings, or a bare bootstrap)."""
    if isinstance(kafka, str):
        options: dict[str, Any] = {"bootstrap_servers": kafka}
        configs: dict[str, str] = {}
    else:
        options = kafka.client_options(component)
        configs = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [
            NewTopic(n, partitions, replication, topic_configs=configs)
            for n in names
            if n not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                resp = await admin.create_topics(new)
                # per-topic errors come back in the response, not as exceptions
                for topic, code, *rest in resp.topic_errors:
                    if code and code != TopicAlreadyExistsError.errno:
                        message = rest[0] if rest else ""
                        raise for_code(code)(f"topic {topic}: {message or 'refused'}")
    finally:
        await admin.close()


async def message_limit(kafka: KafkaSettings, names: list[str], component: str) -> int | None:
    """The smallest ``max.message.bytes`` of topics ``names`` (None when it cannot be read).

    The bridge sizes its batches and its largest record by it, so the brokers never refuse a
    record or a batch for its size: with the idempotent producer a batch refused by a broker
    leaves a gap in the partition's sequence numbers, and every later batch to that partition
    then fails with OutOfOrderSequenceNumber (seen: one oversized message stalled its partition).
    """
    admin = AIOKafkaAdminClient(**kafka.client_options(component))
    try:
        await admin.start()
        configs = await topic_configs(admin, names)
        limits = [
            int(value)
            for config in configs.values()
            if (value := config.get("max.message.bytes")) is not None
        ]
        return min(limits) if limits else None
    except (KafkaError, ValueError, TypeError) as err:
        log.warning("could not read max.message.bytes of %s (%s): batches of at most %d bytes",
                    names, err, BATCH_BYTES)  # fmt: skip
        return None
    finally:
        await admin.close()


class IngestBridge:
    """One bridge instance; several may share the load through the MQTT shared subscription."""

    def __init__(self, settings: CarpulseSettings, name: str = "bridge-1") -> None:
        self.s = settings
        self.name = name
        self.counters = BridgeCounters()
        b = settings.bridge
        self.limiter = RateLimiter(b.rate_per_device, b.burst_per_device)
        self._decoder = (  # None: messages are checked on paho's network thread
            ThreadPoolExecutor(b.decode_workers, thread_name_prefix=f"{name}-decode")
            if b.decode_workers
            else None
        )
        self._inbox: list[Item] = []  # checked messages waiting for the loop's forwarder
        self._partitions = Partitions()
        self._inbox_lock = threading.Lock()
        self._woken = False  # a wake-up of the forwarder is already on its way
        self._hurried = False  # and one that ends its window now
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._forwarding: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # dead letters of refused records
        self._headers = [("bridge", name.encode())]
        self._rate_logged: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: AIOKafkaProducer | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()  # SUBACK of the current connection
        self._stop = asyncio.Event()
        self._refused: str | None = None
        self._pending = 0  # MQTT messages handed to Kafka and not acknowledged yet
        self._pending_lock = threading.Lock()
        self._unsubscribed = threading.Event()
        self._draining = False
        self._kafka_error: str | None = None  # the last failed send, until one goes through
        self.message_limit: int | None = None  # the topics' max.message.bytes, once read
        self.metrics_port = settings.metrics.bridge_port  # 0 = no /metrics, /healthz, /readyz
        self.obs: ObsServer | None = None
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        m = self.s.mqtt
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"carpulse-{self.name}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if m.ca_file is None:
            raise ConfigError("mqtt.ca_file is not set: the bridge connects over TLS only")
        try:
            client.tls_set(ca_certs=str(m.ca_file))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"mqtt.ca_file {m.ca_file}: {err}") from err
        client.username_pw_set(m.username, m.resolved_password())
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_unsubscribe = lambda *args: self._unsubscribed.set()
        client.on_subscribe = self._on_subscribe
        return client

    # paho callbacks run in paho's network thread ---------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        if reason.is_failure:
            self._refused = str(reason)
            log.error("MQTT broker refused bridge %s: %s", self.name, reason)
            return
        subs = [(subscription(ch, self.s.mqtt.share_group), 1) for ch in CHANNELS]
        client.subscribe(subs)
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reasons, props) -> None:  # type: ignore[no-untyped-def]
        # the SUBACK: from here on the broker keeps what devices publish for this session (a
        # message published before a bridge's first subscription has no session to go to)
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self._refused = f"subscriptions refused: {refused}"
            log.error("MQTT broker refused bridge %s's subscriptions: %s", self.name, refused)
            return
        self._subscribed.set()
        log.info("bridge %s connected to MQTT and subscribed", self.name)

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:  # type: ignore[no-untyped-def]
        if self._connected.is_set():
            log.warning("bridge %s lost MQTT: %s (paho reconnects)", self.name, reason)
        self._connected.clear()
        self._subscribed.clear()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        # paho's network thread: an exception here would kill it, so none leaves this method
        mid, qos = msg.mid, msg.qos
        if self._draining:
            # stopping with a plain subscription: not acknowledged, so the broker keeps it in
            # this persistent session and delivers it again when the bridge is back
            return
        try:
            topic = msg._topic.decode("utf-8", "replace")  # .topic raises on bad UTF-8
            device = _topic_device(topic)
            if not self.limiter.allow(device):
                self._rate_limited(device)
                client.ack(mid, qos)
                return
            self._submit(client, mid, qos, topic, bytes(msg.payload))
        except Exception:
            log.exception(
                "bridge %s: message %s could not be handled; acknowledged", self.name, mid
            )
            self.counters.count("internal_error")
            with contextlib.suppress(Exception):
                client.ack(mid, qos)

    def _rate_limited(self, device: str) -> None:
        with self.counters.lock:
            self.counters.received += 1
        self.counters.count("rate_limited")
        now = time.monotonic()
        if now - self._rate_logged.get(device, -60.0) >= 60.0:  # once a minute per device
            if len(self._rate_logged) > 10_000:
                self._rate_logged.clear()
            self._rate_logged[device] = now
            log.warning("bridge %s: device %r over its rate limit, dropping", self.name, device)

    def _submit(self, client: mqtt.Client, mid: int, qos: int, topic: str, payload: bytes) -> None:
        # The check (route: ~30 us for a telemetry envelope) runs right here on paho's thread by
        # default, off the event loop; each hop to another thread cost more than the check
        # itself (issue 22). ``[bridge] decode_workers`` > 0 puts it on a pool instead.
        with self._pending_lock:
            self._pending += 1
        if self._decoder is None:
            self._enqueue(client, mid, qos, topic, self._route(topic, payload))
            return
        try:
            job = self._decoder.submit(self._route_and_enqueue, client, mid, qos, topic, payload)
        except Exception as err:  # the pool is shut down: still a dead letter
            self._enqueue(client, mid, qos, topic, dead_route(payload, err))
            return
        job.add_done_callback(lambda j: self._job_done(j, mid))

    def _route(self, topic: str, payload: bytes) -> Route:
        return route(topic, payload, self.s.bridge.max_payload_bytes)

    def _job_done(self, job: Any, mid: int) -> None:
        # a queued check cancelled at shutdown never reached the loop: not acknowledged, so the
        # broker redelivers it; anything else that escaped _route_and_enqueue is a bug, logged
        if job.cancelled():
            self._settled()
        elif job.exception() is not None:
            self._settled()
            log.error("bridge %s: message %s lost in the decode pool: %r", self.name, mid,
                      job.exception())  # fmt: skip

    def _route_and_enqueue(
        self, client: mqtt.Client, mid: int, qos: int, topic: str, payload: bytes
    ) -> None:
        """Decode pool thread: check one message (never raises) and queue it for the loop."""
        self._enqueue(client, mid, qos, topic, self._route(topic, payload))

    def _enqueue(self, client: mqtt.Client, mid: int, qos: int, topic: str, r: Route) -> None:
        """Any thread: queue a checked message for the loop's forwarder, in arrival order.

        The loop is woken only when the queue was empty: what arrives while it waits or works
        waits for the same turn, and one turn hands all of it to the producer. An event, a
        status, a command ack or a full queue (``FLUSH_AT``) ends the window at once.
        """
        with self._inbox_lock:
            self._inbox.append((client, mid, qos, topic, r))
            hurry = not self._hurried and (
                r.kafka_topic not in _LINGER or len(self._inbox) >= FLUSH_AT
            )
            if not hurry and self._woken:
                return
            self._woken = True
            self._hurried = self._hurried or hurry
        try:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._nudge, hurry)
        except RuntimeError:  # the loop is closed: not acknowledged, the broker redelivers
            pass

    def _nudge(self, hurry: bool) -> None:
        self._wake.set()
        if hurry:
            self._hurry.set()

    def _settled(self, n: int = 1) -> None:
        with self._pending_lock:
            self._pending -= n

    # asyncio side --------------------------------------------------------------------------------
    async def _forwarder(self) -> None:
        """Hand queued messages to the producer in arrival order without waiting for Kafka.

        The first message after a quiet moment opens a window of ``[kafka] linger_ms``; what
        came within it is handed over at once (``_hand_over``) and acknowledged from its batch's
        future, so nothing is acknowledged before Kafka has its record (one task for all).
        """
        window = self.s.kafka.linger_ms / 1000
        while True:
            await self._wake.wait()
            self._wake.clear()
            if window > 0 and not self._hurry.is_set():
                # the linger, here rather than in the producer: what comes within it is handed
                # over at once, so every partition's batch goes in the same produce request
                # (the producer lingers per partition, from each batch's first record) and
                # paho's thread wakes the loop once a window, not once a message
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), window)
            with self._inbox_lock:
                batch, self._inbox = self._inbox, []
                self._woken = self._hurried = False
            self._hurry.clear()
            await self._hand_over(batch)

    async def _hand_over(self, batch: list[Item]) -> None:
        """One window's messages to the producer: a closed batch per partition (one future),
        dead letters and what fits no batch one by one. Order per partition is arrival order."""
        producer = self._producer
        if producer is None:  # stopped: not acknowledged, the broker redelivers
            self._settled(len(batch))
            return
        with self.counters.lock:
            self.counters.received += len(batch)
        groups: dict[tuple[str, int], list[Item]] = {}
        alone: list[Item] = []
        for item in batch:
            r = item[4]
            p = None
            if r.reason is None and r.key is not None:
                p = self._partitions.of(producer, r.kafka_topic, r.key)
            if p is None:  # a dead letter, or the topic's metadata is not there yet
                alone.append(item)
            else:
                groups.setdefault((r.kafka_topic, p), []).append(item)
        left = len(batch)
        try:
            for (kafka_topic, partition), items in groups.items():
                chunks, too_large = fill(producer, items, self._record, self.message_limit)
                alone += too_large
                for builder, chunk in chunks:
                    try:
                        fut = await producer.send_batch(builder, kafka_topic, partition=partition)
                    except asyncio.CancelledError:
                        raise
                    except Exception as err:  # the producer is closing, or a bug
                        self._batch_done(chunk, err)
                    else:
                        fut.add_done_callback(functools.partial(self._batch_sent, chunk))
                    left -= len(chunk)
            for item in alone:
                await self._forward_one(*item)
                left -= 1
        except asyncio.CancelledError:  # stopping: the rest is not acknowledged
            self._settled(left)
            raise
        except Exception:  # a bug: these messages stay unacknowledged, the next window goes on
            self._settled(left)
            log.exception("bridge %s: %d messages not forwarded", self.name, left)

    def _record(self, item: Item) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        # which bridge forwarded a record: tracing, and the load-split check of the tests
        return item[4].key, item[4].payload, self._headers

    def _batch_sent(self, chunk: list[Item], fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():  # the producer is going away: the broker redelivers
            self._settled(len(chunk))
            return
        self._batch_done(chunk, fut.exception())

    def _batch_done(self, chunk: list[Item], err: BaseException | None) -> None:
        """Kafka's answer for a batch: acknowledge all of it, or as ``_sent_done`` says."""
        if err is None:
            self._kafka_error = None
            with self.counters.lock:
                self.counters.forwarded += len(chunk)
            self._settled(len(chunk))
            by_client: dict[int, tuple[mqtt.Client, list[tuple[int, int]]]] = {}
            for client, mid, qos, _, _ in chunk:
                by_client.setdefault(id(client), (client, []))[1].append((mid, qos))
            for client, acks in by_client.values():
                ack_all(client, acks)
        elif isinstance(err, REFUSED_RECORD) and len(chunk) > 1:
            # Kafka refused the batch: each record goes again on its own, so only the one it
            # refuses is dead-lettered (nothing of a refused batch was written)
            task = asyncio.ensure_future(self._one_by_one(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            for client, mid, qos, topic, r in chunk:
                self._sent_done(client, mid, qos, topic, r, err)

    async def _one_by_one(self, chunk: list[Item]) -> None:
        """A refused batch's records again, each in a batch of its own, in order: the
        producer's ``send`` would put them back into one batch (and Kafka would refuse them all)."""
        for n, item in enumerate(chunk):
            try:
                await self._forward_alone(item)
            except asyncio.CancelledError:
                self._settled(len(chunk) - n)
                raise

    async def _forward_alone(self, item: Item) -> None:
        client, mid, qos, topic, r = item
        producer = self._producer
        if producer is None:  # stopped: not acknowledged, the broker redelivers
            self._settled()
            return
        err: BaseException | None = None
        try:
            builder = producer.create_batch()
            key, value, headers = self._record(item)
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise RecordTooLargeError(f"{len(value)} bytes fit no batch")
            builder.close()
            partition = self._partitions.of(producer, r.kafka_topic, r.key or b"")
            if partition is None:
                raise KafkaError(f"no metadata for topic {r.kafka_topic}")
            await (await producer.send_batch(builder, r.kafka_topic, partition=partition))
        except asyncio.CancelledError:
            raise
        except Exception as err_:  # refused alone, an outage, or the producer closing
            err = err_
        self._sent_done(client, mid, qos, topic, r, err)

    async def _forward_one(
        self, client: mqtt.Client, mid: int, qos: int, topic: str, r: Route
    ) -> None:
        """One record on its own: a dead letter, or a record no batch takes."""
        producer = self._producer
        if producer is None:  # stopped: not acknowledged, the broker redelivers
            self._settled()
            return
        if r.reason is not None:
            self.counters.count(r.reason)
            key, headers = None, r.headers(topic)
        else:
            key, headers = r.key, self._headers
        try:
            fut = await producer.send(r.kafka_topic, r.payload, key=key, headers=headers)
        except Exception as err:  # refused before it was queued, or the producer is closing
            self._sent_done(client, mid, qos, topic, r, err)
            return
        fut.add_done_callback(lambda f: self._sent(f, client, mid, qos, topic, r))

    def _sent(
        self,
        fut: asyncio.Future[Any],
        client: mqtt.Client,
        mid: int,
        qos: int,
        topic: str,
        r: Route,
    ) -> None:
        if fut.cancelled():  # the producer is going away: the broker redelivers
            self._settled()
            return
        self._sent_done(client, mid, qos, topic, r, fut.exception())

    def _sent_done(
        self,
        client: mqtt.Client,
        mid: int,
        qos: int,
        topic: str,
        r: Route,
        err: BaseException | None,
    ) -> None:
        """Kafka's answer for one record: acknowledge, dead-letter or leave for redelivery."""
        if err is None:
            self._kafka_error = None
            if r.reason is None:
                with self.counters.lock:
                    self.counters.forwarded += 1
            self._settled()
            client.ack(mid, qos)
        elif isinstance(err, REFUSED_RECORD) and r.reason is None:
            # this record can never go: a dead letter, not a retry (still in flight till then)
            why = WireError("kafka_refused", f"{type(err).__name__}: {err}")
            self.counters.count("kafka_refused")
            d = dead_route(r.payload, why)
            task = asyncio.ensure_future(self._dead_letter(client, mid, qos, topic, d))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(err, ProducerClosed):  # stopping: the broker redelivers it
            self._settled()
        else:  # Kafka down: leave unacknowledged; the broker redelivers after reconnect
            self._settled()
            self._kafka_error = f"{type(err).__name__}: {err}"[:200]
            log.error("bridge %s could not hand a message to Kafka: %s", self.name, err)

    async def _dead_letter(
        self, client: mqtt.Client, mid: int, qos: int, topic: str, d: Route
    ) -> None:
        producer = self._producer
        if producer is None:  # stopped: not acknowledged, the broker redelivers
            self._settled()
            return
        try:
            fut = await producer.send(d.kafka_topic, d.payload, headers=d.headers(topic))
            await fut
        except asyncio.CancelledError:
            self._settled()
            raise
        except Exception as err:
            self._sent_done(client, mid, qos, topic, d, err)
            return
        self._sent_done(client, mid, qos, topic, d, None)

    async def _start_kafka(self) -> None:
        """Topics checked and the producer started; raises on the first failure."""
        k = self.s.kafka
        await ensure_topics(
            k,
            k.partitions,
            k.replication,
            [*KAFKA_BY_CHANNEL.values(), KAFKA_DEADLETTER],
            component="bridge",
        )
        limit = await message_limit(k, [*KAFKA_BY_CHANNEL.values(), KAFKA_DEADLETTER], "bridge")
        if limit is not None and limit < self.s.bridge.max_payload_bytes:
            log.warning(
                "bridge %s: [bridge] max_payload_bytes %d is over the topics' max.message.bytes "
                "%d: messages in between are dead-lettered as kafka_refused",
                self.name, self.s.bridge.max_payload_bytes, limit,
            )  # fmt: skip
        self.message_limit = limit
        producer = AIOKafkaProducer(
            **k.client_options("bridge"),
            acks="all" if k.acks == "all" else int(k.acks),
            linger_ms=0,  # the forwarder lingers (one window for all partitions)
            # a telemetry message is ~13 KB: with the default 16 KB batches each would be its own
            # batch and request; 1 MiB lets the linger window gather them (fewer, larger requests)
            max_batch_size=min(BATCH_BYTES, limit or BATCH_BYTES),
            # a record over the topics' limit is refused here, before it takes a sequence number
            max_request_size=limit or 16 * 1024 * 1024,
            # no duplicates from the producer's own retries (needs acks=all)
            enable_idempotence=k.acks == "all",
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        if self._forwarding is None:
            self._forwarding = asyncio.ensure_future(self._forwarder())

    async def start(self, kafka_attempts: int | None = None) -> None:
        """Connect to Kafka (retried with backoff) and then to MQTT.

        Kafka unreachable, a refused login or a missing ACL is logged once in one line naming the
        broker, the principal and the topic, then retried with backoff (0.5 s doubling to 30 s)
        until it works, ``kafka_attempts`` run out or a stop is requested: a supervisor sees a
        waiting bridge, not a restart loop. Nothing is read from MQTT before Kafka is up, so
        devices' messages wait in their persistent session.
        """
        k = self.s.kafka
        self._loop = asyncio.get_running_loop()
        attempt, said = 0, ""
        while True:
            attempt += 1
            try:
                await self._start_kafka()
                break
            except KafkaError as err:
                line = kafka_problem(k, "bridge", err)
                if kafka_attempts is not None and attempt >= kafka_attempts:
                    raise PublishError(line) from err
                if line != said:
                    log.error("bridge %s: %s; retrying with backoff", self.name, line)
                    said = line
            delay = exponential(attempt - 1, 0.5, 30.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                raise PublishError(f"bridge {self.name} stopped before Kafka was reachable")
        if said:
            log.warning("bridge %s: Kafka at %s reachable again", self.name, k.bootstrap)
        m = self.s.mqtt
        try:
            self.client.connect(m.host, m.port, keepalive=m.keepalive_s)
        except (OSError, ssl.SSLError) as err:
            await self._stop_kafka()
            raise PublishError(f"bridge cannot reach MQTT at {m.host}:{m.port}: {err}") from err
        self.client.loop_start()
        for _ in range(150):
            if self._subscribed.is_set():  # started: the broker keeps what devices send us
                return
            if self._refused:
                break
            await asyncio.sleep(0.1)
        await self.stop()
        raise PublishError(
            f"MQTT broker at {m.host}:{m.port} refused the bridge: {self._refused or 'timeout'}"
        )

    async def stop(self, drain_s: float = 10.0) -> None:
        """Leave the shared subscription, finish what is in flight, then disconnect.

        Mosquitto keeps routing a shared subscription's share to a member whose persistent
        session is offline (queued until it comes back). Unsubscribing first hands our share to
        the other bridges at once; what was already sent to us is forwarded and acknowledged
        before the disconnect. A bridge killed with -9 cannot do this: its share waits in its
        session until it is restarted under the same name (see README, production notes).
        With a plain subscription (``[mqtt] share_group = ""``) the bridge stays subscribed:
        new messages are left unacknowledged and wait in its persistent session.
        """
        if self._connected.is_set():
            if self.s.mqtt.share_group:
                self._unsubscribed.clear()
                self.client.unsubscribe(
                    [subscription(ch, self.s.mqtt.share_group) for ch in CHANNELS]
                )
                await asyncio.to_thread(self._unsubscribed.wait, 5.0)
            else:
                self._draining = True
            deadline = time.monotonic() + drain_s
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                with self._pending_lock:
                    busy = self._pending > 0
                if busy:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= 0.3:
                    break
                await asyncio.sleep(0.05)
        self._connected.clear()
        self.client.disconnect()
        self.client.loop_stop()
        await self._stop_kafka()
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)

    async def _stop_kafka(self) -> None:
        if self._producer is not None:
            # flushes what the forwarder handed over; its answers come after the disconnect, so
            # those messages stay unacknowledged and the broker redelivers them (duplicates in
            # Kafka, never a loss)
            await self._producer.stop()
            self._producer = None
        for task in [self._forwarding, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._forwarding = None

    # health and metrics (read from the obs server's threads) ------------------------------------
    def in_flight(self) -> int:
        with self._pending_lock:
            return self._pending

    def mqtt_up(self) -> bool:
        return self._connected.is_set() and self._subscribed.is_set()

    def kafka_ok(self) -> tuple[bool, str]:
        if self._producer is None:
            return False, f"producer not started (Kafka at {self.s.kafka.bootstrap})"
        if self._kafka_error is not None:
            return False, f"last send failed: {self._kafka_error}"
        return True, "producer up"

    def start_obs(self, host: str | None = None) -> ObsServer | None:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` when ``metrics_port`` is set: ready
        when MQTT is connected and the Kafka producer is up."""
        if not self.metrics_port or self.obs is not None:
            return self.obs
        from stream.metrics import bridge_registry, render

        registry = bridge_registry(self)
        m = self.s.mqtt
        checks = {
            "mqtt": lambda: (self.mqtt_up(), f"{m.host}:{m.port}"),
            "kafka": self.kafka_ok,
        }
        where = host or self.s.metrics.host
        self.obs = ObsServer(where, self.metrics_port, lambda: render(registry), checks).start()
        return self.obs

    async def run_forever(self) -> None:
        """Run until ``request_stop`` or SIGTERM/SIGINT, then stop gracefully (see ``stop``)."""
        self.start_obs()  # before Kafka: /readyz says what the bridge waits for
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # only possible in the main thread; embedded bridges call request_stop themselves
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            try:
                await self._stop.wait()
            finally:
                await self.stop()
        finally:
            if self.obs is not None:
                self.obs.close()

    def request_stop(self) -> None:
        self._stop.set()
