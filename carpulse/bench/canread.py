"""``carpulse bench canread``: log readers (fast candump vs python-can candump/ASC/BLF) and VSS transform."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.argtypes import count
from core.datasets import canlog_dir
from core.errors import ConfigError
from core.wire import Samples
from firmware_bridge.can_logs import concat_frames, read_log, write_log
from firmware_bridge.frames import read_candump
from firmware_bridge.vss import load_mapping, shipped_mappings


def _default_logs() -> Path:
    return canlog_dir()


def _median_rate(fn: Any, n_items: int, repeat: int) -> float:
    times = []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_items / statistics.median(times)


def bench_canread(argv: list[str]) -> dict[str, Any]:
    """Frames/s of each reader on the real logs, medians of ``--repeat`` runs, in one process."""
    ap = argparse.ArgumentParser(prog="carpulse bench canread")
    ap.add_argument("--data", type=Path, default=None, help="canlogs folder")
    ap.add_argument("--repeat", type=count(), default=3)
    args = ap.parse_args(argv)
    root = args.data or _default_logs()
    logs = sorted(root.glob("*/*.log"))
    if not logs:
        raise ConfigError(f"no candump logs under {root} (see ../shared/DATA.md)")
    frames = concat_frames([read_candump(p)[0] for p in logs])
    n = len(frames)
    out: dict[str, Any] = {"logs": len(logs), "frames": n}
    out["candump_fast_frames_per_s"] = _median_rate(
        lambda: [read_candump(p) for p in logs], n, args.repeat
    )
    out["candump_python_can_frames_per_s"] = _median_rate(
        lambda: [read_log(p) for p in logs], n, args.repeat
    )
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("asc", "blf"):
            path = Path(tmp) / f"all.{suffix}"
            write_log(path, frames)
            out[f"{suffix}_frames_per_s"] = _median_rate(lambda p=path: read_log(p), n, args.repeat)
            out[f"{suffix}_bytes_per_frame"] = round(path.stat().st_size / n, 2)
    out["fast_vs_python_can"] = (
        out["candump_fast_frames_per_s"] / out["candump_python_can_frames_per_s"]
    )
    # VSS transform on 1M samples spread over every mapped path of the biggest mapping
    mapping = max((load_mapping(p) for p in shipped_mappings()), key=lambda m: len(m.signals))
    names = [s.vss for s in mapping.signals]
    rng = np.random.default_rng(0)
    k = 1_000_000
    samples = Samples.from_columns(
        names, rng.integers(0, len(names), k), np.arange(k), rng.integers(0, 4, k).astype(float)
    )
    out["vss_transform_samples_per_s"] = _median_rate(
        lambda: mapping.transform(samples), k, args.repeat
    )
    for key, value in out.items():
        if isinstance(value, float):
            out[key] = round(value, 1)
    return out
