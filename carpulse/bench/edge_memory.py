"""``carpulse bench edge-memory``: what the decoder costs in memory with and without numba's LLVM.

Each option runs in its own process that decodes a real log with the agent's ``FrameDecoder``
(4,096-frame blocks) and reports VmRSS, private memory (``smaps_rollup``), VmHWM, frames/s and a
digest of the decoded samples:

- ``imports``: numpy, cantools, pydantic and the frame reader, nothing decoded (the floor);
- ``jit_cold``: numba compiles the decoder (empty cache dir); ``jit_warm``: loads it from the cache;
- ``no_jit``: ``NUMBA_DISABLE_JIT=1``, the kernel as plain Python loops (numba still imported);
- ``aot``: the agent's kernels compiled ahead of time (``carpulse edge build-kernels``,
  ``numba.pycc``) and loaded as ``carpulse edge run`` loads them (``core.jit.use_aot``), so numba
  and its LLVM are never imported: the option issue 21 item 1 chose. Its digest must equal the JIT one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from carpulse.bench.edge import DEFAULT_DBC, DEFAULT_LOG
from core.argtypes import count
from core.datasets import shared_data_dir
from core.errors import ConfigError

MODES = ("imports", "jit_cold", "jit_warm", "no_jit", "aot")


def _mem() -> dict[str, float]:
    st = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            st[line.split(":")[0]] = int(line.split()[1]) / 1024
    priv = sum(
        int(ln.split()[1])
        for ln in Path("/proc/self/smaps_rollup").read_text().splitlines()
        if ln.startswith(("Private_Clean:", "Private_Dirty:"))
    )
    return {"rss_mb": st["VmRSS"], "private_mb": priv / 1024, "peak_rss_mb": st["VmHWM"]}


def _decode_all(log: Path, dbc: Path, mapping: str) -> dict[str, Any]:
    from edge.sources.can import FrameDecoder
    from firmware_bridge.frames import read_candump

    frames, _ = read_candump(log)
    dec = FrameDecoder(dbc, mapping, strict=False, only_mapped=None)
    h = hashlib.sha256()
    for start in range(0, len(frames), 4096):
        s = dec.decode(frames.slice(start, start + 4096))
        for a in (s.sig, s.ts_us, s.value):
            h.update(a.tobytes())
    t0 = time.perf_counter()
    for start in range(0, len(frames), 4096):
        dec.decode(frames.slice(start, start + 4096))
    return {"fps": round(len(frames) / (time.perf_counter() - t0)), "digest": h.hexdigest()}


def _build_aot(out_dir: Path) -> None:
    """The agent's build (``edge.aot.AOT_KERNELS``), as ``carpulse edge build-kernels`` makes it."""
    from edge.aot import build_kernels

    build_kernels(out_dir)


def child(argv: list[str]) -> int:
    mode, log, dbc, mapping, aot_dir = argv
    out: dict[str, Any] = {"mode": mode}
    if mode == "build_aot":
        _build_aot(Path(aot_dir))
        return 0
    if mode == "aot":
        from core.jit import use_aot
        from edge.aot import AOT_KERNELS

        loaded, line = use_aot(Path(aot_dir), AOT_KERNELS)
        if not loaded:
            raise SystemExit(line)
    if mode == "imports":
        import cantools  # noqa: F401
        import pydantic  # noqa: F401

        from firmware_bridge.frames import read_candump  # noqa: F401
    else:
        out |= _decode_all(Path(log), Path(dbc), mapping)
    out["llvm_loaded"] = "llvmlite" in sys.modules
    out |= _mem()
    print(json.dumps(out))
    return 0


def bench_edge_memory(argv: list[str]) -> dict[str, Any]:
    """RSS, private and peak memory of the decoder for each option, median of ``--runs``."""
    ap = argparse.ArgumentParser(prog="carpulse bench edge-memory", description=__doc__)
    data = shared_data_dir()
    ap.add_argument("--log", type=Path, default=data / DEFAULT_LOG)
    ap.add_argument("--dbc", type=Path, default=data / DEFAULT_DBC)
    ap.add_argument("--mapping", default="gt350")
    ap.add_argument("--runs", type=count(), default=3)
    args = ap.parse_args(argv)
    for p in (args.log, args.dbc):
        if not p.exists():
            raise ConfigError(f"bench edge-memory: {p} is missing (see ../shared/DATA.md)")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="carpulse-bench-mem-") as tmp:
        work = Path(tmp)

        def run(mode: str, cache: Path, **env: str) -> dict[str, Any]:
            cmd = [
                sys.executable,
                "-m",
                "carpulse.bench.edge_memory",
                mode,
                str(args.log),
                str(args.dbc),
            ]
            e = dict(os.environ, NUMBA_CACHE_DIR=str(cache), CARPULSE_NUMBA_CACHE="1", **env)
            got = subprocess.run(
                [*cmd, args.mapping, str(work)], env=e, capture_output=True, text=True, check=False
            )
            if got.returncode != 0:
                raise ConfigError(f"bench edge-memory {mode}: {got.stderr[-1500:]}")
            return json.loads(got.stdout.splitlines()[-1]) if mode != "build_aot" else {}  # type: ignore[no-any-return]

        run("build_aot", work / "aot-cache")
        for i in range(args.runs):
            cache = work / f"cache{i}"
            results["imports"].append(run("imports", cache))
            results["jit_cold"].append(run("jit_cold", cache))
            results["jit_warm"].append(run("jit_warm", cache))
            results["no_jit"].append(run("no_jit", cache, NUMBA_DISABLE_JIT="1"))
            results["aot"].append(run("aot", cache))

    def med(rs: list[dict[str, Any]], key: str) -> float:
        vals = sorted(r[key] for r in rs)
        return round(vals[len(vals) // 2], 1)

    out: dict[str, Any] = {"runs": args.runs, "log": str(args.log)}
    for mode, rs in results.items():
        row = {k: med(rs, k) for k in ("rss_mb", "private_mb", "peak_rss_mb")}
        if mode != "imports":
            row["frames_per_s"] = med(rs, "fps")
            row["digest"] = rs[0]["digest"][:16]
        row["llvm_loaded"] = rs[0]["llvm_loaded"]
        out[mode] = row
    out["aot_equals_jit"] = out["aot"]["digest"] == out["jit_warm"]["digest"]
    out["no_jit_equals_jit"] = out["no_jit"]["digest"] == out["jit_warm"]["digest"]
    return out


if __name__ == "__main__":
    raise SystemExit(child(sys.argv[1:]))
