"""Replay a real candump log as telemetry: decode, cut into batches, publish over MQTT/TLS."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.config import CarpulseSettings
from core.topics import device_topic
from core.wire import Samples, TelemetryBatch, encode_telemetry, split_by_time
from edge.publisher import MqttPublisher, device_mqtt_settings
from edge.seqstate import SequenceCounter
from firmware_bridge.dbc import CantoolsDecoder, decode_raise, load_dbc
from firmware_bridge.frames import read_candump

log = logging.getLogger(__name__)


def batches_for(samples: Samples, s: CarpulseSettings) -> list[Samples]:
    """Cut decoded samples into wire batches as the agent does (time span and size caps)."""
    return [
        part.compact()
        for part in split_by_time(
            samples, s.edge.batch_max_samples, int(s.edge.batch_max_interval_s * 1e6)
        )
    ]


def publish_samples(
    samples: Samples,
    device_id: str,
    s: CarpulseSettings,
    *,
    rate: str = "max",
    progress: bool = False,
) -> dict[str, Any]:
    """Publish samples as telemetry batches; ``rate='real'`` keeps the source timing."""
    seq = SequenceCounter(s.edge.state_dir, device_id)
    pub = MqttPublisher(device_mqtt_settings(s, device_id), seq.boot_id)
    pub.connect()
    topic = device_topic(device_id, "telemetry")
    parts = batches_for(samples, s)
    sent_bytes = 0
    t_start = time.monotonic()
    src0 = int(samples.ts_us[0]) if len(samples) else 0
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"{device_id}: publishing", total=len(parts))
    try:
        for part in parts:
            if rate == "real":
                due = (int(part.ts_us[-1]) - src0) / 1e6
                delay = due - (time.monotonic() - t_start)
                if delay > 0:
                    time.sleep(delay)
            payload = encode_telemetry(TelemetryBatch(device_id, seq.boot_id, seq.next(), part))
            pub.publish(topic, payload)
            sent_bytes += len(payload)
            if bar is not None:
                bar.advance(task)
        pub.flush()
    finally:
        if bar is not None:
            bar.stop()
        pub.close()
    elapsed = time.monotonic() - t_start
    return {
        "device_id": device_id,
        "boot_id": seq.boot_id,
        "batches": len(parts),
        "samples": len(samples),
        "bytes": sent_bytes,
        "seconds": round(elapsed, 3),
    }


def replay_log(
    log_path: Path | str,
    dbc_path: Path | str,
    device_id: str,
    s: CarpulseSettings,
    *,
    rate: str = "max",
    strict: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Read, decode (cantools) and publish a candump log; returns what was sent and dropped."""
    frames, report = read_candump(log_path)
    decoder = CantoolsDecoder(load_dbc(dbc_path, strict=strict))
    samples = decode_raise(frames, decoder)
    result = publish_samples(samples, device_id, s, rate=rate, progress=progress)
    result.update(frames=len(frames), bad_lines=report.bad_lines)
    return result
