"""``carpulse bench edge``: the agent's footprint replaying a real CAN log into a local Mosquitto.

The agent runs as its own process (``carpulse edge run``) against a local stack on free ports in a
temporary directory. CPU is read from ``/proc/<pid>/stat`` of that process only (user + system,
in % of one core) over a measuring window that starts after warm-up (imports, numba compilation
and the first published batch); frames and wire bytes come from the agent's stats file. Three
phases: the log at its recorded rate, replayed faster to the CAN bus maximum (about 4,500
frames/s at 500 kbit/s), and as fast as the agent can go (``frames_per_s``). Each figure is the
median of ``--runs`` runs.

Memory, read at the end of each measuring window: ``rss_mb`` (VmRSS), ``private_mb`` (unshared:
Private_Clean + Private_Dirty of ``smaps_rollup``) and ``peak_rss_mb`` (VmHWM, which includes
numba's compilation at start). Start-up: ``cold_start_s`` and ``warm_start_s`` are the medians of
``--cold-runs`` runs of the time from starting ``carpulse edge run`` to the broker's first PUBACK,
with an empty ``numba_cache_dir`` and with the one the cold run filled.

Kernels: ``--kernels aot`` (the default) first builds them ahead of time (``carpulse edge
build-kernels``, timed as ``build_kernels_s``) and the agent runs them without importing numba;
``--kernels jit`` sets ``[edge] aot = false``, so numba compiles them (the figures before issue 21
item 1). The run fails rather than report figures for the mode the agent did not run.

CAN intrusion detection (``[edge.intrusion]``): a fourth phase replays at the bus maximum with the
detector on, its profile learned from the bench log by ``carpulse ids learn``; it reports the
agent's CPU with and without the detector and the detector's own share, read from the thread CPU
time the agent counts around each scoring call (``intrusion.cpu_s`` in its stats file), which is
steadier on a busy machine than the difference of two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.argtypes import count
from core.datasets import shared_data_dir
from core.errors import ConfigError

DEFAULT_LOG = "canlogs/gt350/normalsportcomfortengineon.log"
DEFAULT_DBC = "canlogs/gt350/ford_lincoln_base_pt.dbc"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _private_mb(pid: int) -> float:
    """Unshared memory (Private_Clean + Private_Dirty of ``smaps_rollup``): what the agent alone costs."""
    kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kb += int(line.split()[1])
    return kb / 1024


def _stats(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return {}


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise ConfigError(f"bench edge: timed out waiting for {what}")


def _edge_toml(
    stack: Any, workdir: Path, name: str, source: dict[str, Any], extra: str = "", tables: str = ""
) -> tuple[Path, Path]:
    state = workdir / name
    text = "".join(
        ln + "\n"
        for ln in stack.config_file.read_text().splitlines()
        if not ln.startswith("state_dir")
    )
    mine = f'device_id = "bench-{name}"\nstate_dir = "{state}"\nstats_file = "{state / "stats.json"}"\n'
    mine += extra
    text = text.replace("[edge]\n", "[edge]\n" + mine, 1)
    text += "\n[[edge.sources]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in source.items())
    text += tables
    path = workdir / f"{name}.toml"
    path.write_text(text)
    return path, state / "stats.json"


def _phase(
    stack: Any,
    workdir: Path,
    name: str,
    source: dict[str, Any],
    measure_s: float,
    kernels: str,
    tables: str = "",
) -> dict[str, float]:
    cfg, stats_path = _edge_toml(stack, workdir, name, source, kernels, tables)
    with open(workdir / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "carpulse", "edge", "run", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(lambda: _stats(stats_path).get("acked", 0) > 0, 120, f"{name}: the first PUBACK")
        time.sleep(1.5)  # let the first batches and any one-off compilation settle
        s1 = _stats(stats_path)
        _wait(lambda: _stats(stats_path).get("time") != s1.get("time"), 5, "fresh stats")
        s1, c1, t1 = _stats(stats_path), _cpu_s(proc.pid), time.monotonic()
        time.sleep(measure_s)
        old = s1.get("time")
        _wait(lambda: _stats(stats_path).get("time") != old, 5, "fresh stats")
        s2, c2, t2 = _stats(stats_path), _cpu_s(proc.pid), time.monotonic()
        _check_kernels(s2, kernels, name)
        peak = _status_mb(proc.pid, "VmHWM")
        rss = _status_mb(proc.pid, "VmRSS")
        anon = _status_mb(proc.pid, "RssAnon")
        private = _private_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    span = s2["time"] - s1["time"]
    ids: dict[str, float] = {}
    if "intrusion" in s2:  # the detector's thread CPU time between the two stats files
        i1, i2 = s1.get("intrusion", {}), s2["intrusion"]
        ids = {
            "ids_cpu_pct": 100 * (i2["cpu_s"] - i1.get("cpu_s", 0.0)) / span,
            "ids_frames_per_s": (i2["frames"] - i1.get("frames", 0)) / span,
            "ids_flagged": float(i2["flagged"]),
        }
    return {
        **ids,
        "cpu_pct": 100 * (c2 - c1) / (t2 - t1),
        "frames_per_s": (s2["frames"] - s1["frames"]) / span,
        "wire_bytes_per_s": (s2["bytes_enqueued"] - s1["bytes_enqueued"]) / span,
        "samples_per_s": (s2["samples_out"] - s1["samples_out"]) / span,
        "rss_mb": rss,
        "peak_rss_mb": peak,
        "private_mb": private,
        "rss_anon_mb": anon,
    }


def _check_kernels(stats: dict[str, Any], kernels: str, name: str) -> None:
    """Figures are never labelled "aot" when the agent fell back to numba's JIT (or the reverse)."""
    wanted = "aot" if "aot_dir" in kernels else "jit"
    if stats.get("kernels") != wanted:
        raise ConfigError(
            f"bench edge {name}: the agent ran {stats.get('kernels')} kernels, not {wanted} "
            f"(see its log in the bench's work dir)"
        )


def _cold_start(
    stack: Any, workdir: Path, name: str, source: dict[str, Any], cache: Path, kernels: str
) -> float:
    """Seconds from ``Popen`` of ``carpulse edge run`` to the broker's first PUBACK (agent clock).

    ``cache`` is the agent's ``numba_cache_dir``: empty for a cold start, filled by an earlier
    run for a warm one. The OS page cache stays warm (Python's own files are read from RAM).
    """
    cfg, stats_path = _edge_toml(
        stack, workdir, name, source, kernels + f"numba_cache_dir = {json.dumps(str(cache))}\n"
    )
    with open(workdir / f"{name}.log", "ab") as out:
        t0 = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "carpulse", "edge", "run", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        first = _wait(
            lambda: _stats(stats_path).get("first_ack_time"), 300, f"{name}: first PUBACK"
        )
        _check_kernels(_stats(stats_path), kernels, name)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return float(first) - t0


def _learn_profile(log: Path, out: Path) -> Path:
    """The bench log's own intrusion profile, written by ``carpulse ids learn`` (its own process)."""
    subprocess.run(
        [sys.executable, "-m", "carpulse", "ids", "learn", str(log), "--model", "bench",
         "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def _med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def bench_edge(argv: list[str]) -> dict[str, Any]:
    """Run the three phases ``--runs`` times and return the medians."""
    ap = argparse.ArgumentParser(prog="carpulse bench edge", description=__doc__)
    data = shared_data_dir()
    ap.add_argument("--log", type=Path, default=data / DEFAULT_LOG, help="candump -L log")
    ap.add_argument("--dbc", type=Path, default=data / DEFAULT_DBC)
    ap.add_argument("--mapping", default="gt350", help="VSS mapping (file or shipped name)")
    ap.add_argument("--bus-max", type=float, default=4500.0, help="frames/s of a full CAN bus")
    ap.add_argument("--measure-s", type=float, default=10.0, help="measuring window per phase")
    ap.add_argument("--runs", type=count(), default=3)
    ap.add_argument(
        "--cold-runs", type=count(0), default=5, help="cold and warm starts each (0: skip them)"
    )
    ap.add_argument(
        "--kernels",
        choices=("aot", "jit"),
        default="aot",
        help="aot: build the kernels ahead of time first (carpulse edge build-kernels) and run "
        "the agent without numba; jit: [edge] aot = false, numba compiles them",
    )
    ap.add_argument(
        "--kernels-dir", type=Path, help="with --kernels aot: a build to use (default: build one)"
    )
    args = ap.parse_args(argv)
    for p in (args.log, args.dbc):
        if not p.exists():
            raise ConfigError(f"bench edge: {p} is missing (see ../shared/DATA.md)")
    from carpulse.stack import Stack, free_stack_settings
    from firmware_bridge.frames import read_candump

    frames, _ = read_candump(args.log)
    log_fps = len(frames) / ((int(frames.ts_us[-1]) - int(frames.ts_us[0])) / 1e6)
    base = {
        "type": "can",
        "log": str(args.log),
        "dbc": str(args.dbc),
        "mapping": args.mapping,
        "loop": True,
    }
    phases = {
        "real": dict(base, rate="real"),
        "bus_max": dict(base, rate=args.bus_max / log_fps),
        "max": dict(base, rate="max"),
        "bus_max_ids": dict(base, rate=args.bus_max / log_fps),
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in phases}
    starts: dict[str, list[float]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="carpulse-bench-edge-") as tmp:
        work = Path(tmp)
        build: dict[str, Any] = {}
        kernels = "aot = false\n"
        if args.kernels == "aot":
            from edge.aot import build_kernels

            kdir = args.kernels_dir or work / "kernels"
            if args.kernels_dir is None:
                build = build_kernels(kdir)
            kernels = f"aot_dir = {json.dumps(str(kdir))}\n"
        stack = Stack(free_stack_settings(work / "stack"))
        profile = _learn_profile(args.log, work / "bench.ids.json")
        ids_table = f'\n[edge.intrusion]\nenabled = true\nprofile = "{profile}"\n'
        try:
            stack.up()
            for run in range(args.cold_runs):  # a fresh cache each run, then the same one again
                cache = work / f"numba-cache{run}"
                for kind in ("cold", "warm"):
                    secs = _cold_start(stack, work, f"{kind}{run}", phases["real"], cache, kernels)
                    starts[kind].append(secs)
            for run in range(args.runs):
                for name, src in phases.items():
                    tables = ids_table if name.endswith("_ids") else ""
                    results[name].append(
                        _phase(stack, work, f"{name}{run}", src, args.measure_s, kernels, tables)
                    )
        finally:
            stack.down()

    def med(phase: str, key: str, nd: int = 1) -> float:
        return round(statistics.median(r[key] for r in results[phase]), nd)

    return {
        "frames_per_s": med("max", "frames_per_s", 0),
        "cpu_pct_at_real_rate": med("real", "cpu_pct"),
        "cpu_pct_at_bus_max": med("bus_max", "cpu_pct"),
        "rss_mb": round(max(r["rss_mb"] for rs in results.values() for r in rs), 1),
        "private_mb": round(max(r["private_mb"] for rs in results.values() for r in rs), 1),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for rs in results.values() for r in rs), 1),
        "cold_start_s": _med(starts["cold"]),
        "warm_start_s": _med(starts["warm"]),
        "cold_start_runs_s": [round(x, 2) for x in starts["cold"]],
        "warm_start_runs_s": [round(x, 2) for x in starts["warm"]],
        "wire_bytes_per_s": med("real", "wire_bytes_per_s", 0),
        "log": str(args.log),
        "log_frames_per_s": round(log_fps),
        "frames_per_s_at_real_rate": med("real", "frames_per_s", 0),
        "frames_per_s_at_bus_max": med("bus_max", "frames_per_s", 0),
        "cpu_pct_at_max": med("max", "cpu_pct"),
        "samples_per_s_at_real_rate": med("real", "samples_per_s", 0),
        "rss_anon_mb": round(max(r["rss_anon_mb"] for rs in results.values() for r in rs), 1),
        "rss_mb_by_phase": {k: round(max(r["rss_mb"] for r in rs), 1) for k, rs in results.items()},
        "cpu_pct_at_bus_max_ids": med("bus_max_ids", "cpu_pct"),
        "ids_cpu_pct_at_bus_max": med("bus_max_ids", "ids_cpu_pct", 3),
        "ids_cpu_share_pct": round(
            statistics.median(
                100 * r["ids_cpu_pct"] / r["cpu_pct"]
                for r in results["bus_max_ids"]
                if r["cpu_pct"]
            ),
            2,
        ),
        "ids_frames_per_s_at_bus_max": med("bus_max_ids", "ids_frames_per_s", 0),
        "ids_flagged": max(int(r["ids_flagged"]) for r in results["bus_max_ids"]),
        "ids_note": "bus_max_ids: the bus_max phase with [edge.intrusion] on (profile learned "
        "from the bench log); ids_cpu_pct_at_bus_max: the detector's thread CPU time in % of one "
        "core, ids_cpu_share_pct: its share of the agent's CPU in that phase",
        "runs": args.runs,
        "measure_s": args.measure_s,
        "kernels": args.kernels,
        "build_kernels_s": build.get("seconds"),
        "target": {"cpu_pct_at_bus_max": 10.0, "rss_mb": 150.0},
        "rss_note": "rss_mb: VmRSS at the end of each measuring window (max over runs); "
        "private_mb: Private_Clean+Private_Dirty of smaps_rollup; peak_rss_mb: VmHWM",
    }
