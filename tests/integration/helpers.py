"""Running pipeline processes against the test stack and querying InfluxDB."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from carpulse.stack import Stack, stop_processes, wait_until
from carpulse.stack import pipeline_env as stack_pipeline_env


def pipeline_env(stack: Stack, **extra: str) -> dict[str, str]:
    return stack_pipeline_env(stack.config_file, "test", **extra)


@contextmanager
def pipeline(stack: Stack, log_dir: Path, **extra: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The ingest bridge and the Faust worker as real processes; stopped on exit."""
    env = pipeline_env(stack, **extra)
    procs = []
    for name, args in (("bridge", ["stream", "bridge"]), ("worker", ["stream", "worker"])):
        with open(log_dir / f"{name}.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "carpulse", *args],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        yield procs
    finally:
        stop_processes(procs)


def influx_query(stack: Stack, q: str, db: str = "carpulse") -> list[dict[str, Any]]:
    """Run an InfluxQL query; returns the series of the first statement."""
    url = f"http://{stack.s.host}:{stack.s.influx_port}/query?" + urllib.parse.urlencode(
        {"db": db, "q": q, "epoch": "u"}
    )
    with urllib.request.urlopen(url, timeout=30) as resp:
        doc = json.load(resp)
    result = doc["results"][0]
    if "error" in result:
        raise AssertionError(f"InfluxQL error: {result['error']}")
    return result.get("series", [])  # type: ignore[no-any-return]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """``carpulse.stack.wait_until`` failing the test when the time runs out."""
    return wait_until(predicate, timeout, what, interval, error=AssertionError)


def topic_config(stack: Any, topic: str) -> dict[str, str | None]:
    """A topic's configuration as the broker describes it."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    from stream.kafka_options import topic_configs

    async def run() -> dict[str, str | None]:
        admin = AIOKafkaAdminClient(**stack.settings.kafka.client_options())
        await admin.start()
        try:
            return (await topic_configs(admin, [topic]))[topic]
        finally:
            await admin.close()

    return asyncio.run(run())


def uncommitted(stack: Any, group: str, topics: list[str]) -> int:
    """Records of ``topics`` beyond the offsets consumer group ``group`` committed (its lag)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> int:
        c = AIOKafkaConsumer(
            **stack.settings.kafka.client_options(),
            group_id=group,
            enable_auto_commit=False,
        )
        await c.start()  # never subscribes: it only asks the coordinator for the commits
        try:
            await c.topics()  # metadata of every topic
            tps = [TopicPartition(t, p) for t in topics for p in c.partitions_for_topic(t) or ()]
            ends = await c.end_offsets(tps)
            lag = 0
            for tp in tps:
                lag += ends[tp] - ((await c.committed(tp)) or 0)
            return lag
        finally:
            await c.stop()

    return asyncio.run(run())
