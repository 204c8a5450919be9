"""Faust's aiokafka transport with the worker consumer's fetch wait taken from the settings.

faust-streaming 0.15 creates the worker's ``AIOKafkaConsumer`` with ``fetch_max_wait_ms=1500``
written into ``AIOKafkaConsumerThread._create_worker_consumer`` (no app setting reaches it). A
broker that holds an empty fetch for the whole wait instead of answering when data arrives (the
memory broker used before Apache Kafka did) then delays a record by up to 1.5 s: most of the end-to-end latency (BENCHMARKS.md, "End-to-end").
These subclasses only change that one value, on the consumer Faust has just built and before
it starts (the fetcher is made at ``start()`` from it); ``install_transport`` installs it
through the ``App.transport`` setter, so the installed Faust stays untouched;
``stream.kafka_options.make_faust_app`` does it for both Faust apps (stream and CRM workers).
"""

from __future__ import annotations

from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

# Faust's own value (aiokafka's default is 500 ms).
FAUST_FETCH_MAX_WAIT_MS = 1500


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


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with a configurable consumer fetch wait."""

    Consumer = Consumer
    fetch_max_wait_ms: int = FAUST_FETCH_MAX_WAIT_MS


def install_transport(app: Any, fetch_max_wait_ms: int) -> Transport:
    """Make ``app`` consume through ``Transport``; call before the app's first topic or agent."""
    transport = Transport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    app.transport = transport
    return transport
