"""``carpulse bench edge-queue``: what each fsync policy of the durable queue costs the SD card.

The agent commits about two transactions a second at its recorded rate: ``put`` of one batch
(``--payload`` bytes, the agent's wire bytes per second) and ``ack`` of the batch the broker
acknowledged. A writer process (``python -m carpulse.bench.edge_queue writer``) runs ``--pairs`` such
pairs as fast as it can under ``strace -c``, once per policy; the syscall counts and the bytes
sent to the block layer (``write_bytes`` of ``/proc/<pid>/io``) per pair are scaled to the
agent's rate of ``--rate`` pairs per second, so the figures are per minute of driving. The
writer is also the one the power-loss test kills (it prints ``P id boot seq`` after each ``put``
returned and ``A id...`` after each ``ack`` returned: what the caller was told is stored).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.argtypes import count
from core.errors import ConfigError

SYSCALLS = ("fsync", "fdatasync", "pwrite64")  # SQLite writes with pwrite64 only; stdout is write


def writer(argv: list[str]) -> int:
    """Put batches and ack them one behind, forever or ``--pairs`` times; report on stdout."""
    from edge.queue import DurableQueue
    from edge.seqstate import SequenceCounter

    ap = argparse.ArgumentParser(prog="python -m carpulse.bench.edge_queue writer")
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--fsync", choices=("full", "normal"), default="full")
    ap.add_argument("--payload", type=count(), default=2100)
    ap.add_argument("--pairs", type=count(0), default=0, help="0: until killed")
    ap.add_argument("--max-bytes", type=count(), default=256 * 1024 * 1024)
    ap.add_argument("--io-out", type=Path, default=None, help="write /proc/self/io here at the end")
    args = ap.parse_args(argv)
    q = DurableQueue(args.db, fsync=args.fsync, max_bytes=args.max_bytes, ttl_s=None)
    seq = SequenceCounter(args.db.parent, "bench-queue")
    out = sys.stdout
    n = 0
    pending: list[int] = []
    while args.pairs == 0 or n < args.pairs:
        s = seq.next()
        body = s.to_bytes(8, "big") * (args.payload // 8 + 1)
        rid = q.put("telemetry", "t", body[: args.payload], priority=5, boot_id=seq.boot_id, seq=s)
        if rid is not None:
            out.write(f"P {rid} {seq.boot_id} {s}\n")
            out.flush()
            pending.append(rid)
        if len(pending) > 1:  # the broker acknowledges the previous batch
            ids = pending[:-1]
            q.ack(ids)
            out.write("A " + " ".join(map(str, ids)) + "\n")
            out.flush()
            pending = pending[-1:]
        n += 1
    q.close()
    if args.io_out is not None:
        args.io_out.write_text(Path("/proc/self/io").read_text())
    return 0


def _strace_counts(path: Path) -> dict[str, int]:
    counts = dict.fromkeys(SYSCALLS, 0)
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in counts:
            counts[parts[-1]] = int(parts[3])
    return counts


def _io(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split(": ") for ln in path.read_text().splitlines())}


def bench_edge_queue(argv: list[str]) -> dict[str, Any]:
    """Writes and bytes per minute for ``fsync = "full"`` and ``"normal"``."""
    ap = argparse.ArgumentParser(prog="carpulse bench edge-queue", description=__doc__)
    ap.add_argument("--pairs", type=count(), default=1200, help="put+ack pairs per policy")
    ap.add_argument("--payload", type=count(), default=2100, help="bytes per batch (bench edge)")
    ap.add_argument("--rate", type=float, default=1.0, help="batches per second of the agent")
    ap.add_argument("--dir", type=Path, default=None, help="where the queue file goes (the card)")
    args = ap.parse_args(argv)
    if shutil.which("strace") is None:
        raise ConfigError("bench edge-queue needs strace (apt-get install strace)")
    out: dict[str, Any] = {"pairs": args.pairs, "payload": args.payload, "rate": args.rate}
    with tempfile.TemporaryDirectory(prefix="carpulse-bench-queue-", dir=args.dir) as tmp:
        for mode in ("full", "normal"):
            work = Path(tmp) / mode
            work.mkdir()
            trace, io = work / "strace.txt", work / "io.txt"
            cmd = [
                "strace", "-f", "-c", "-o", str(trace), "-e", "trace=" + ",".join(SYSCALLS),
                sys.executable, "-m", "carpulse.bench.edge_queue", "writer", "--db", str(work / "q.db"),
                "--fsync", mode, "--payload", str(args.payload), "--pairs", str(args.pairs),
                "--io-out", str(io),
            ]  # fmt: skip
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
            wall = time.perf_counter() - t0
            calls = _strace_counts(trace)
            per_min = 60.0 * args.rate / args.pairs
            syncs = calls["fsync"] + calls["fdatasync"]
            out[mode] = {
                "fsyncs_per_min": round(syncs * per_min, 1),
                "writes_per_min": round(calls["pwrite64"] * per_min, 1),
                "block_bytes_per_min": round(_io(io)["write_bytes"] * per_min),
                "payload_bytes_per_min": round(args.payload * 60 * args.rate),
                "pairs_per_s_max": round(args.pairs / wall, 1),
                "syscalls": calls,
            }
    full, normal = out["full"], out["normal"]
    out["fsync_ratio_full_vs_normal"] = round(
        full["fsyncs_per_min"] / max(normal["fsyncs_per_min"], 1e-9), 1
    )
    out["block_bytes_ratio_full_vs_normal"] = round(
        full["block_bytes_per_min"] / max(normal["block_bytes_per_min"], 1), 2
    )
    return out


if __name__ == "__main__":
    if sys.argv[1:2] != ["writer"]:
        sys.exit("usage: python -m carpulse.bench.edge_queue writer --db PATH [...]")
    raise SystemExit(writer(sys.argv[2:]))
