"""``carpulse bench obd``: PIDs/s against ELM327-emulator, batched requests vs one PID per request."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from carpulse.bench import median_of
from core.argtypes import count
from firmware_bridge.obd.client import ObdClient
from firmware_bridge.obd.elm327 import Elm327
from firmware_bridge.obd.emulator import ElmEmulator
from firmware_bridge.obd.pids import DEFAULT_PIDS, PIDS


def _rate(client: ObdClient, pids: list[int], rounds: int) -> float:
    start = time.perf_counter()
    got = 0
    for _ in range(rounds):
        got += len(client.read(pids).values)
    return got / (time.perf_counter() - start)


def _python_obd_rate(port: str, pids: list[int], rounds: int, repeat: int) -> float | None:
    """The same PIDs through python-OBD (one query per PID), or None if it is not installed."""
    try:
        import obd  # python-OBD, installed with elm327-emulator
    except ImportError:
        return None
    obd.logger.setLevel(logging.ERROR)
    conn = obd.OBD(port, baudrate=38400, fast=True, timeout=2.0, check_voltage=False)
    try:
        cmds = [obd.commands[1][p] for p in pids if p < len(obd.commands[1])]
        cmds = [c for c in cmds if c is not None]
        conn.query(cmds[0])  # warm-up: protocol search

        def one() -> float:
            start = time.perf_counter()
            got = sum(
                1 for _ in range(rounds) for c in cmds if not conn.query(c, force=True).is_null()
            )
            return got / (time.perf_counter() - start)

        return median_of(one, repeat)
    finally:
        conn.close()


def bench_obd(argv: list[str]) -> dict[str, Any]:
    """PIDs/s for our batched client, a naive one-PID-per-request loop and python-OBD."""
    ap = argparse.ArgumentParser(prog="carpulse bench obd")
    ap.add_argument("--rounds", type=count(), default=20, help="polling rounds per run")
    ap.add_argument("--repeat", type=count(), default=5, help="runs; the median is reported")
    ap.add_argument(
        "--ecu-delay",
        type=float,
        default=0.03,
        help="emulated ECU answer time per request in s (real ECUs: 10-50 ms)",
    )
    ap.add_argument("--no-python-obd", action="store_true", help="skip the python-OBD baseline")
    args = ap.parse_args(argv)
    with ElmEmulator() as emu:
        if args.ecu_delay:
            emu.set_delay(args.ecu_delay)
        with Elm327(emu.port) as elm:
            client = ObdClient(elm)
            supported = set(client.discover())
            pids: list[int] = [p for p in DEFAULT_PIDS if p in supported and p in PIDS]
            client.read(pids)  # learn which PIDs the ECU leaves out of multi-PID answers
            readable = sorted(client.read(pids).values)
            ours = median_of(lambda: _rate(client, readable, args.rounds), args.repeat)
            naive_client = ObdClient(elm, batch=False)
            naive = median_of(lambda: _rate(naive_client, readable, args.rounds), args.repeat)
            requests_per_round = len(readable) / max(1, elm.max_pids_per_request)
            counters = dict(elm.counters)
        python_obd = None
        if not args.no_python_obd:
            python_obd = _python_obd_rate(emu.port, readable, args.rounds, args.repeat)
    out: dict[str, Any] = {
        "pids": [f"{p:02X}" for p in readable],
        "ecu_delay_s": args.ecu_delay,
        "pids_per_s": round(ours, 1),
        "naive_pids_per_s": round(naive, 1),
        "speedup_vs_naive": round(ours / naive, 2),
        "python_obd_pids_per_s": None if python_obd is None else round(python_obd, 1),
        "speedup_vs_python_obd": None if not python_obd else round(ours / python_obd, 2),
        "requests_per_round": round(requests_per_round, 2),
        "baseline": (
            "naive: our ELM327 client asking one PID per request, sequentially; python_obd: "
            "python-OBD 0.7 OBD.query() per PID (fast mode). Same emulator, same PIDs, same run."
        ),
        "emulator": "ELM327-emulator 'car' scenario over a pseudo-terminal",
        "rounds": args.rounds,
        "repeat": args.repeat,
        "counters": counters,
    }
    return out
