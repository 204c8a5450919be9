"""The agent's decode and campaign kernels over a real CAN log, as digests to compare processors.

``python -m edge.arch_digest --log L --dbc D --mapping M`` prints one JSON object: the machine
(``platform.machine()``), whether numba compiled the kernels, and a SHA-256 of every output array
(decoded samples, periodic windows, on-change selection). Two processors agree bit for bit when
the digests are equal; ``carpulse bench edge-arm64`` runs it on x86_64 and, under qemu, in an
arm64 root, and compares. It needs only numpy, numba, cantools and pydantic (what a Pi installs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BLOCK = 4096  # frames per decode call, about the agent's micro-batch at bus maximum


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def digest(log: Path, dbc: Path, mapping: str | None, period_us: int = 100_000) -> dict[str, Any]:
    """Decode ``log`` block by block as the agent does, feed the kernels, hash every output."""
    from edge.campaign_kernels import (
        _periodic,
        on_change_state,
        on_change_update,
        periodic_state,
        periodic_update,
    )
    from edge.sources.can import FrameDecoder
    from firmware_bridge.frames import read_candump

    t0 = time.perf_counter()
    frames, _ = read_candump(log)
    dec = FrameDecoder(dbc, mapping, strict=False, only_mapped=None)
    names: tuple[str, ...] = ()
    sig: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    val: list[np.ndarray] = []
    windows: list[tuple[np.ndarray, ...]] = []
    kept: list[np.ndarray] = []
    per: dict[str, np.ndarray] = {}
    chg: dict[str, np.ndarray] = {}
    base = 0
    for start in range(0, len(frames), BLOCK):
        s = dec.decode(frames.slice(start, start + BLOCK))
        if not len(s):
            continue
        if s.names != names:  # the agent maps names to slots; here a slot is the name's index
            names = s.names
            per = periodic_state(len(names)) if not per else _grown(per, len(names))
            chg = on_change_state(len(names)) if not chg else _grown(chg, len(names))
        slot_of = np.arange(len(names), dtype=np.int32)
        windows.append(periodic_update(slot_of, s.sig, s.ts_us, s.value, period_us, per))
        kept.append(on_change_update(slot_of, s.sig, s.value, 0.5, chg) + base)
        base += len(s)
        sig.append(s.sig)
        ts.append(s.ts_us)
        val.append(s.value)
    cat = np.concatenate
    win = [cat([w[i] for w in windows]) for i in range(6)] if windows else []
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": __import__("numba").__version__,
        "compiled": bool(getattr(_periodic, "signatures", None)),
        "frames": len(frames),
        "samples": int(sum(len(x) for x in sig)),
        "names": hashlib.sha256("\n".join(names).encode()).hexdigest(),
        "decoded": _sha(cat(sig), cat(ts), cat(val)),
        "periodic_windows": len(win[0]) if win else 0,
        "periodic": _sha(*win) if win else "",
        "on_change_kept": int(sum(len(k) for k in kept)),
        "on_change": _sha(cat(kept)) if kept else "",
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _grown(state: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    from edge.campaign_kernels import grow_state

    grow_state(state, n)
    return state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.arch_digest", description=__doc__)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--dbc", type=Path, required=True)
    ap.add_argument("--mapping", default=None)
    args = ap.parse_args(argv)
    json.dump(digest(args.log, args.dbc, args.mapping), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
