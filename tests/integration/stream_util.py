"""Helpers of the stream tests: Faust workers as processes, producing to and reading Kafka topics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from carpulse.stack import Stack, free_port, stop_processes
from stream.bridge import ensure_topics
from tests.integration.helpers import pipeline_env


def spawn_worker(
    stack: Stack, log: Path, env: dict[str, str], loglevel: str = "warn"
) -> subprocess.Popen[bytes]:
    """A Faust worker process; each gets its own web port."""
    env = {**env, "CARPULSE_STREAM__WEB_PORT": str(free_port())}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "carpulse", "stream", "worker", "--loglevel", loglevel],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def worker_env(stack: Stack, **extra: str) -> dict[str, str]:
    return pipeline_env(stack, **extra)


def create_topics(stack: Stack, names: Sequence[str]) -> None:
    k = stack.settings.kafka  # type: ignore[attr-defined]
    asyncio.run(ensure_topics(k, k.partitions, k.replication, list(names)))


def produce(
    stack: Stack, records: Sequence[tuple[str, bytes | None, bytes]], pace_s: float = 0.0
) -> list[float]:
    """Send ``(topic, key, value)`` records (acks=all); returns each record's send time."""
    options = stack.settings.kafka.client_options()  # type: ignore[attr-defined]

    async def run() -> list[float]:
        producer = AIOKafkaProducer(**options, acks="all", linger_ms=0)
        await producer.start()
        sent: list[float] = []
        try:
            for topic, key, value in records:
                sent.append(time.time())
                await producer.send_and_wait(topic, value, key=key)
                if pace_s:
                    await asyncio.sleep(pace_s)
        finally:
            await producer.stop()
        return sent

    return asyncio.run(run())


def consume(
    stack: Stack,
    topic: str,
    done: Callable[[list[Any]], bool],
    timeout: float,
) -> list[Any]:
    """Read ``topic`` from the start until ``done(records)`` or the timeout; returns records."""
    options = stack.settings.kafka.client_options()  # type: ignore[attr-defined]

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, **options, auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        out: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not done(out):
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    out.extend(records)
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    stop_processes(procs)
