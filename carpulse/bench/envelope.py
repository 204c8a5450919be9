"""``carpulse bench envelope``: the ingest bridge's check of a telemetry message against the worker's
full decode of the same message, in CPU time of the measuring thread (issue 22).

The messages are ``bench e2e``'s (``synth``: 16 signals, 4 per CAN frame); the bridge's check is
``stream.bridge.route`` as paho's network thread calls it (topic, size, envelope, device id), the
worker's is ``core.wire.decode_telemetry``. CPU time, not wall time: on a shared machine the other
processes' load slows both alike but is not counted. Figures are medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from core.argtypes import count


def _per_call_us(calls: list[Callable[[], object]], rounds: int) -> float:
    """Median over ``rounds`` of the thread CPU time per call, in microseconds."""
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        for call in calls:
            call()
        times.append((time.thread_time() - start) / len(calls) * 1e6)
    return statistics.median(times)


def bench_envelope(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="carpulse bench envelope")
    ap.add_argument("--batch-samples", type=count(4), default=2000, help="samples per message")
    ap.add_argument("--messages", type=count(), default=400, help="messages per round (8 devices)")
    ap.add_argument("--rounds", type=count(), default=7)
    args = ap.parse_args(argv)

    from carpulse.bench.e2e import BASE_US, synth
    from core.wire import decode_telemetry, encode_telemetry
    from stream.bridge import route

    rng = np.random.default_rng(7)
    devices = [f"bench-v{i}" for i in range(8)]
    msgs = [
        (
            f"carpulse/v1/{d}/telemetry",
            encode_telemetry(synth(d, i, BASE_US, args.batch_samples, rng)),
        )
        for i, d in enumerate(devices)
    ]
    limit = 16 * 1024 * 1024
    refused = [r.reason for t, p in msgs if (r := route(t, p, limit)).reason is not None]
    if refused:  # a check that refuses the bench's own messages measures nothing
        raise RuntimeError(f"the bridge refused the bench's messages: {refused}")
    picks = [msgs[i % len(msgs)] for i in range(args.messages)]
    check = _per_call_us([functools.partial(route, t, p, limit) for t, p in picks], args.rounds)
    decode = _per_call_us([functools.partial(decode_telemetry, p) for _, p in picks], args.rounds)
    n = args.batch_samples - args.batch_samples % 4
    return {
        "bridge_check_us_per_message": round(check, 2),
        "worker_decode_us_per_message": round(decode, 2),
        "bridge_check_us_per_sample": round(check / n, 5),
        "check_to_decode_ratio": round(check / decode, 3),
        "message_bytes": round(float(np.mean([len(p) for _, p in msgs]))),
        "samples_per_message": n,
        "messages": args.messages,
        "rounds": args.rounds,
    }
