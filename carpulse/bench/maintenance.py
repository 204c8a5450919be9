"""Speed of the maintenance kernels: ``python -m carpulse.bench.maintenance [--samples N] [--slots V]``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from carpulse.bench import median_of
from core.argtypes import count
from models.maintenance.battery import BatteryState, PackState, update_battery, update_pack
from models.maintenance.oil import OilState, update_oil
from models.maintenance.service import UsageState, update_usage


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timer(fn: Callable[[], object]) -> Callable[[], float]:
    return lambda: _timed(fn)


def bench_maintenance(argv: list[str]) -> dict[str, Any]:
    """Samples/s of each kernel on one core, ``--slots`` vehicles interleaved, median of ``--repeat``."""
    ap = argparse.ArgumentParser(prog="python -m carpulse.bench.maintenance")
    ap.add_argument("--samples", type=count(), default=2_000_000)
    ap.add_argument("--slots", type=count(), default=10_000)
    ap.add_argument("--repeat", type=count(), default=5)
    args = ap.parse_args(argv)
    if args.samples < args.slots:  # each run steps every vehicle at least once
        ap.error(f"--samples {args.samples} is below --slots {args.slots}")
    n, v = args.samples - args.samples % args.slots, args.slots
    rng = np.random.default_rng(0)
    slot = np.tile(np.arange(v), n // v)
    ts = np.repeat(np.arange(n // v, dtype=np.float64), v)
    day = np.repeat(np.arange(n // v), v)
    odo = ts * 40.0
    rpm, temp = rng.uniform(800, 4000, n), rng.uniform(20, 130, n)
    volts = rng.uniform(9.0, 14.5, n)
    m = n // 10
    cells = rng.uniform(3.6, 3.8, (m, 96))

    runs: dict[str, tuple[int, Callable[[], object]]] = {
        "oil_samples_per_s": (n, lambda: update_oil(OilState.empty(v), slot, ts, rpm, temp)),
        "battery_samples_per_s": (
            n,
            lambda: update_battery(BatteryState.empty(v), slot, ts, volts),
        ),
        "usage_samples_per_s": (n, lambda: update_usage(UsageState.empty(v), slot, day, odo, odo)),
        "pack_rows_96_cells_per_s": (
            m,
            lambda: update_pack(PackState.empty(v), slot[:m], cells, ts[:m], np.full(m, np.nan)),
        ),
    }
    out: dict[str, Any] = {"samples": n, "slots": v}
    for name, (calls, fn) in runs.items():
        fn()  # compile
        out[name] = round(calls / median_of(_timer(fn), args.repeat))
    return out


if __name__ == "__main__":
    print(json.dumps(bench_maintenance([])))
