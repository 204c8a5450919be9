"""``carpulse obd scan``: one-shot read of VIN, protocol, supported PIDs, values and DTCs."""

from __future__ import annotations

import argparse
from typing import Any

from firmware_bridge.obd.client import ObdClient
from firmware_bridge.obd.elm327 import Elm327


def _pid(text: str) -> int:
    return int(text, 16)


def scan(argv: list[str]) -> dict[str, Any]:
    """Scan the car behind an ELM327 and return one JSON-able dict."""
    ap = argparse.ArgumentParser(prog="carpulse obd scan")
    ap.add_argument("--port", required=True, help="serial port, pty or pyserial URL of the ELM327")
    ap.add_argument("--baudrate", type=int, default=38400)
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per request")
    ap.add_argument(
        "--pids", type=_pid, nargs="*", default=None, help="hex PIDs (default: every supported one)"
    )
    args = ap.parse_args(argv)
    with Elm327(args.port, baudrate=args.baudrate, timeout=args.timeout) as elm:
        out = ObdClient(elm).scan(args.pids)
        out["adapter"] = elm.adapter
        out["battery_voltage"] = elm.voltage()
        return out
