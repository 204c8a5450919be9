"""The bridge's bulk hand-over helpers: batches split at the size limit in order, one PUBACK write."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer

from stream.bridge_batch import ack_all, fill


def test_fill_keeps_order_and_splits_at_the_batch_size() -> None:
    async def run() -> tuple[list[list[bytes]], list[bytes], list[bool]]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=1024 * 1024)
        try:
            items = [b"a" * 600_000, b"b" * 2_000_000, b"c" * 100, b"d" * 500_000, b"e" * 10]
            chunks, alone = fill(producer, items, lambda v: (b"k", v, [("bridge", b"t")]))
            return (
                [[v[:1] for v in chunk] for _, chunk in chunks],
                alone,
                [builder.closed() for builder, _ in chunks],
            )
        finally:
            await producer.stop()

    chunks, alone, closed = asyncio.run(run())
    # a record larger than a batch goes alone in its own; the rest fill batches up to 1 MiB
    assert chunks == [[b"a"], [b"b"], [b"c", b"d", b"e"]]
    assert alone == []
    assert closed == [True, True, True]  # closed: the producer sends them without lingering


def _client() -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t", manual_ack=True)


def test_ack_all_sends_the_pubacks_of_a_batch_as_one_packet() -> None:
    client = _client()
    ack_all(client, [(1, 1), (2, 0), (300, 1), (65535, 1)])
    packets = [p["packet"] for p in client._out_packet]
    # QoS 0 needs none; three PUBACKs (type 0x40, length 2, message id) in one queued write
    assert packets == [b"\x40\x02\x00\x01" + b"\x40\x02\x01\x2c" + b"\x40\x02\xff\xff"]


def test_ack_all_one_message_is_paho_s_own_ack() -> None:
    client = _client()
    ack_all(client, [(7, 1)])
    assert [bytes(p["packet"]) for p in client._out_packet] == [b"\x40\x02\x00\x07"]
    ack_all(client, [])
    assert len(client._out_packet) == 1
