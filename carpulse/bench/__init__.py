"""Benchmarks of the foundation (``carpulse bench wire``) and helpers shared by every benchmark."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.argtypes import count
from core.errors import ConfigError


def median_of(fn: Callable[[], float], repeat: int) -> float:
    """Median of ``repeat`` measurements (machines are shared and noisy)."""
    return statistics.median(fn() for _ in range(max(1, repeat)))


def bench_wire(argv: list[str]) -> dict[str, Any]:
    """Bytes per sample of the wire encoding against naive JSON on batches from the real logs."""
    ap = argparse.ArgumentParser(prog="carpulse bench wire")
    ap.add_argument(
        "--data", type=Path, default=None, help="canlogs folder (default ../shared/data/canlogs)"
    )
    ap.add_argument("--batch-samples", type=count(), default=5000)
    ap.add_argument("--batch-seconds", type=float, default=1.0)
    args = ap.parse_args(argv)
    return wire_figures(args.data, args.batch_samples, args.batch_seconds)


def wire_figures(data: Path | None, batch_samples: int, batch_seconds: float) -> dict[str, Any]:
    """The figures of ``bench wire`` (deterministic: sizes, not times)."""
    from core.datasets import canlog_dir, car_logs
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
