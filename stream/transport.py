"""Faust's aiokafka transport with the worker consumer's fetch wait taken from the settings.

faust-streaming 0.15 creates the worker's ``AIOKafkaConsumer`` with ``fetch_max_wait_ms=1500``
written into ``AIOKafkaConsumerThread._create_worker_consumer`` (no app setting reaches it). A
broker that holds an empty fetch for the whole wait instead of answering when data arrives (the
memory broker used before Apache Kafka did) then delays a record by up to 1.5 s: most of the end-to-end latency (BENCHMARKS.md, "End-to-end").
These subclasses only change that one value, on the consumer Faust has just built and before
it starts (the fetcher is made at ``start()`` from it); ``install_transport`` installs it
through the ``App.transport`` setter, so the installed Faust stays untouched;
``stream.kafka_options.make_faust_app`` does it for both Faust apps (stream and CRM workers).

Fetch pacing (``FetchPacer``, the stream worker's ``[stream] fetch_batch_wait_ms``): with a fetch
answered as soon as one byte is there, a busy worker sends a fetch request for every record or
two, and each one encodes and decodes every assigned partition in Python (about 0.7 ms of CPU,
a third of the worker's CPU at 400k samples/s: BENCHMARKS.md, issue 22). While records keep
coming, the pacer asks the broker to wait up to ``fetch_batch_wait_ms`` for ``BATCH_MIN_BYTES``;
the first fetch that comes back empty turns it back to answering at once. An idle worker, and so
a crash event reaching a quiet worker, waits no longer than before; under load an event may wait
up to ``fetch_batch_wait_ms`` more.

The consumer's drain hands a record to its streams inline instead of through four tasks per
record when the delivery blocks on nothing (``stream.drain``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

from stream.drain import drain_messages

log = logging.getLogger(__name__)
# the private members of aiokafka's Fetcher that FetchPacer reads and switches
FETCHER_MEMBERS: Final = ("_proc_fetch_request", "_fetch_min_bytes", "_fetch_max_wait_ms")

# Faust's own value (aiokafka's default is 500 ms).
FAUST_FETCH_MAX_WAIT_MS = 1500
# What a paced fetch asks for: the wait, not this, ends it at the stream's rates (2.6 MB/s at
# 400k samples/s: 130 kB in 50 ms).
BATCH_MIN_BYTES: Final = 1024 * 1024
# fetches in a row that bring records within the batch wait before batching starts (a lone
# event on a quiet worker does not make the next one wait)
BATCH_AFTER: Final = 2


class FetchPacer:
    """Switches an aiokafka ``Fetcher`` between answering at once (``min_bytes`` 1, the idle
    wait) and waiting for a batch (``BATCH_MIN_BYTES``, at most ``batch_wait_ms``): fetches that
    keep bringing records sooner than ``batch_wait_ms`` start batching, one that brings none
    ends it."""

    def __init__(self, fetcher: Any, batch_wait_ms: int) -> None:
        self.fetcher = fetcher
        self.batch_wait_ms = batch_wait_ms
        self.idle = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
        self.batching = False
        self.streak = 0
        self.switches = 0
        self._proc = fetcher._proc_fetch_request
        # the fetch routine looks the method up for every request: the instance's comes first
        fetcher._proc_fetch_request = self._proc_fetch_request

    async def _proc_fetch_request(self, assignment: Any, node_id: Any, request: Any) -> Any:
        t0 = time.monotonic()
        got = await self._proc(assignment, node_id, request)
        if not got:
            self.streak = 0
            if self.batching:
                self._set(False)
        elif not self.batching:
            quick = time.monotonic() - t0 < self.batch_wait_ms / 1000
            self.streak = self.streak + 1 if quick else 0
            if self.streak >= BATCH_AFTER:
                self._set(True)
        return got

    def _set(self, batching: bool) -> None:
        self.batching = batching
        self.switches += 1
        min_bytes, wait_ms = (BATCH_MIN_BYTES, self.batch_wait_ms) if batching else self.idle
        self.fetcher._fetch_min_bytes = min_bytes
        self.fetcher._fetch_max_wait_ms = wait_ms


def pace(fetcher: Any, batch_wait_ms: int) -> FetchPacer | None:
    """A ``FetchPacer`` on ``fetcher``, or None when pacing is off (0 ms) or this aiokafka's
    Fetcher lacks the private members it switches (a newer release): the worker then runs
    unpaced, as before the pacing, and says so once, instead of refusing to start."""
    if batch_wait_ms <= 0:
        return None
    if not all(hasattr(fetcher, a) for a in FETCHER_MEMBERS):
        log.warning(
            "stream: this aiokafka %s has no Fetcher.%s: fetch pacing ([stream] "
            "fetch_batch_wait_ms) is off, each fetch is answered at once (more CPU per sample)",
            aiokafka.__version__, "/".join(FETCHER_MEMBERS),
        )  # fmt: skip
        return None
    return FetchPacer(fetcher, batch_wait_ms)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The consumer thread; its worker consumer waits at most ``Transport.fetch_max_wait_ms``."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = cast(Transport, transport).fetch_max_wait_ms
        # aiokafka keeps the constructor argument here and hands it to its Fetcher at start();
        # fail loudly if a new aiokafka renamed it rather than silently keeping Faust's 1.5 s.
        if getattr(consumer, "_fetch_max_wait_ms", None) != FAUST_FETCH_MAX_WAIT_MS:
            raise RuntimeError(
                "stream.transport: this faust/aiokafka version builds its consumer differently; "
                "check stream.fetch_max_wait_ms support"
            )
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    async def on_start(self) -> None:
        await super().on_start()  # the consumer has started: its Fetcher exists
        batch_wait_ms = cast(Transport, self.transport).fetch_batch_wait_ms
        self.pacer = pace(getattr(self._consumer, "_fetcher", None), batch_wait_ms)


class Consumer(faust_aiokafka.Consumer):
    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's drain without four tasks per record (stream.drain)
        await drain_messages(self, fetcher)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with a configurable consumer fetch wait."""

    Consumer = Consumer
    fetch_max_wait_ms: int = FAUST_FETCH_MAX_WAIT_MS
    fetch_batch_wait_ms: int = 0  # 0: no fetch pacing (FetchPacer)


def install_transport(app: Any, fetch_max_wait_ms: int, fetch_batch_wait_ms: int = 0) -> Transport:
    """Make ``app`` consume through ``Transport``; call before the app's first topic or agent."""
    transport = Transport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    transport.fetch_batch_wait_ms = fetch_batch_wait_ms
    app.transport = transport
    return transport
