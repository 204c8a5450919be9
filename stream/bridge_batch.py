"""The ingest bridge's bulk hand-over: one Kafka batch per partition and window, one PUBACK write.

The bridge's forwarder hands a window of checked MQTT messages over at once (issue 22). Per
message, aiokafka's ``send`` costs a partitioner call, an accumulator append and a future, and
paho's ``ack`` a wake-up of its network thread and a TLS record for 4 bytes. Here the records of
one partition go into one batch (``create_batch``/``send_batch``: one future for all of them),
and the acknowledgements of a batch leave in one write.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

MAX_KEYS = 100_000  # devices whose partition is remembered (forgotten all at once past it)
_PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 PUBACK: type, remaining length 2, message id


class Partitions:
    """The partition aiokafka's default partitioner gives a key (murmur2 of the key modulo the
    topic's partition count), computed once per key and partition count."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, bytes], tuple[int, int]] = {}
        self._partitioner = DefaultPartitioner()

    def of(self, producer: AIOKafkaProducer, topic: str, key: bytes) -> int | None:
        """The key's partition, or None while the topic's metadata is not known yet."""
        cluster = producer.client.cluster
        parts = cluster.partitions_for_topic(topic)
        if not parts:
            return None
        known = self._known.get((topic, key))
        if known is not None and known[0] == len(parts):
            return known[1]
        available = list(cluster.available_partitions_for_topic(topic) or ())
        partition = int(self._partitioner(key, sorted(parts), available))
        if len(self._known) >= MAX_KEYS:
            self._known.clear()
        self._known[(topic, key)] = (len(parts), partition)
        return partition


def fill(
    producer: AIOKafkaProducer,
    items: Sequence[Any],
    record: Callable[[Any], tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
    max_record: int | None = None,
) -> tuple[list[tuple[Any, list[Any]]], list[Any]]:
    """Put ``items`` (in order) into closed batches of at most ``max_batch_size`` bytes.

    ``record(item)`` gives its key, value and headers. Returns ``[(batch, its items)]`` and the
    items that fit in no batch: a record larger than a batch on its own, or one whose batch
    would be over ``max_record`` bytes (the topics' ``max.message.bytes``; the producer's
    ``send`` refuses it before a broker does). Those go one by one.
    """
    out: list[tuple[Any, list[Any]]] = []
    alone: list[Any] = []
    builder, chunk = producer.create_batch(), list[Any]()
    for item in items:
        key, value, headers = record(item)
        if (
            max_record is not None
            and DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) > max_record
        ):
            alone.append(item)
            continue
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            if not chunk:  # too large for an empty batch
                alone.append(item)
                continue
            builder.close()
            out.append((builder, chunk))
            builder, chunk = producer.create_batch(), []
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                alone.append(item)
                continue
        chunk.append(item)
    if chunk:
        builder.close()  # closed: sent at once, not after the producer's own linger
        out.append((builder, chunk))
    return out, alone


def ack_all(client: mqtt.Client, acks: Iterable[tuple[int, int]]) -> None:
    """Acknowledge ``(mid, qos)`` pairs: the QoS 1 ones as one write of their PUBACKs.

    paho's ``ack`` queues one packet per message: one wake-up of the network thread and one TLS
    record each. The PUBACK packets are concatenated into one queued packet instead (paho has
    no public call for that; without its ``_packet_queue`` each is acknowledged on its own).
    """
    mids = []
    for mid, qos in acks:
        if qos == 1:
            mids.append(mid)
        else:  # QoS 0: nothing to send; QoS 2 (never subscribed so): paho's own call
            client.ack(mid, qos)
    queue = getattr(client, "_packet_queue", None)
    if len(mids) == 1 or queue is None:
        for mid in mids:
            client.ack(mid, 1)
    elif mids:
        packet = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
        queue(mqtt.PUBACK, packet, 0, 1)
