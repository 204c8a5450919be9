"""Benchmarks: ``carpulse bench NAME --json``. Each prints one JSON object with ours, the baseline
measured in the same run, and their ratio. Plugins register here as ``name -> "module:function"``."""

from __future__ import annotations

import importlib
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import ConfigError

REGISTRY: dict[str, str] = {
    "wire": "carpulse.bench:bench_wire",
}


def run(name: str, **kwargs: Any) -> dict[str, Any]:
    try:
        target = REGISTRY[name]
    except KeyError as err:
        raise ConfigError(
            f"unknown benchmark {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from err
    module, _, attr = target.partition(":")
    fn: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), attr)
    return fn(**kwargs)


def median_of(fn: Callable[[], float], repeat: int) -> float:
    """Median of ``repeat`` measurements (machines are shared and noisy)."""
    return statistics.median(fn() for _ in range(max(1, repeat)))


def bench_wire(
    data: Path | None = None, batch_samples: int = 5000, batch_seconds: float = 1.0, **_: Any
) -> dict[str, Any]:
    """Bytes per sample of the wire encoding against naive JSON on batches from the real logs."""
    from carpulse.datasets import canlog_dir, car_logs
    from core.wire import TelemetryBatch, encode_telemetry, split_by_time
    from firmware_bridge.dbc import CantoolsDecoder, load_dbc
    from firmware_bridge.frames import read_candump

    logs = car_logs(data)
    if not logs:
        raise ConfigError(f"no CAN logs with DBCs under {data or canlog_dir()}")
    ours = naive = samples_total = batches = 0
    per_car: dict[str, dict[str, float]] = {}
    dbcs: dict[Path, Any] = {}
    for car, log, dbc_path in logs:
        if dbc_path not in dbcs:
            dbcs[dbc_path] = load_dbc(dbc_path, strict=False)
        frames, _report = read_candump(log)
        samples, _stats = CantoolsDecoder(dbcs[dbc_path]).decode(frames)
        car_ours = car_naive = car_n = 0
        for seq, part in enumerate(split_by_time(samples, batch_samples, int(batch_seconds * 1e6))):
            part = part.compact()
            payload = encode_telemetry(TelemetryBatch("bench-car", "boot", seq, part))
            rows = [
                {"name": name, "timestamp": ts / 1e6, "value": value}
                for name, ts, value in part.records()
            ]
            car_ours += len(payload)
            car_naive += len(json.dumps(rows).encode())
            car_n += len(part)
            batches += 1
        ours, naive, samples_total = ours + car_ours, naive + car_naive, samples_total + car_n
        c = per_car.setdefault(car, {"ours": 0, "json": 0, "samples": 0})
        c["ours"] += car_ours
        c["json"] += car_naive
        c["samples"] += car_n
    return {
        "bytes_per_sample": round(ours / samples_total, 3),
        "json_bytes_per_sample": round(naive / samples_total, 3),
        "ratio": round(naive / ours, 2),
        "samples": samples_total,
        "batches": batches,
        "logs": len(logs),
        "batch": {"max_samples": batch_samples, "max_seconds": batch_seconds},
        "per_car_ratio": {k: round(v["json"] / v["ours"], 2) for k, v in per_car.items()},
    }
