"""The stream worker's decode of a telemetry message: ``core.wire``'s checks, then the sample
columns unpacked (byte shuffle, each name's running time delta and value XOR) in one compiled
pass, where ``core.wire.decode_telemetry`` makes a dozen NumPy passes (issue 22).

``decode_telemetry`` gives the very same batch or ``WireError`` for every payload: the checks are
``core.wire``'s own (``telemetry_body``), the sums wrap modulo 2**64 as NumPy's do. JSON payloads,
big-endian hosts and runs with numba's JIT disabled take ``core.wire.decode_telemetry`` itself.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import config as numba_config
from numba import njit

from core import kernel_flags
from core.wire import TELEMETRY_MAGIC, Samples, TelemetryBatch, decode_telemetry, telemetry_body


@njit(cache=kernel_flags.CACHE, nogil=True)
def _unpack(
    counts: np.ndarray,
    tbuf: np.ndarray,
    width: int,
    vbuf: np.ndarray,
    t0: int,
    sig: np.ndarray,
    ts: np.ndarray,
    bits: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Row ``r`` (names in order, ``counts[g]`` rows each): time delta = byte ``k`` of it at
    ``tbuf[k * n + r]`` (``width`` bytes, little-endian, signed), value XOR likewise in ``vbuf``
    (8 bytes); a name's first delta is from ``t0`` and its first XOR from 0."""
    n = len(sig)
    shift = np.uint64(64 - 8 * width)
    r = 0
    for g in range(len(counts)):
        t = np.int64(t0)
        x = np.uint64(0)
        for _ in range(counts[g]):
            raw = np.uint64(0)
            for k in range(width):
                raw |= np.uint64(tbuf[k * n + r]) << np.uint64(8 * k)
            t += np.int64(raw << shift) >> np.int64(shift)  # sign-extended from width bytes
            v = np.uint64(0)
            for k in range(8):
                v |= np.uint64(vbuf[k * n + r]) << np.uint64(8 * k)
            x ^= v
            sig[r] = g
            ts[r] = t
            bits[r] = x
            r += 1


# with the JIT disabled the kernel would be plain Python, slower than NumPy
COMPILED = not getattr(numba_config, "DISABLE_JIT", False) and sys.byteorder == "little"


def decode_telemetry_fast(payload: bytes) -> TelemetryBatch:
    """``core.wire.decode_telemetry``'s answer for ``payload`` (the same batch, or the same
    ``WireError``), its sample columns unpacked in one compiled pass."""
    if not COMPILED or type(payload) is not bytes or not payload.startswith(TELEMETRY_MAGIC):
        return decode_telemetry(payload)
    b = telemetry_body(payload)
    n = b.n
    sig = np.empty(n, np.int32)
    ts = np.empty(n, np.int64)
    bits = np.empty(n, np.uint64)
    _unpack(
        np.asarray(b.counts, np.int64), np.frombuffer(b.tbuf, np.uint8), b.width,
        np.frombuffer(b.vbuf, np.uint8), b.t0, sig, ts, bits,
    )  # fmt: skip
    return TelemetryBatch(
        b.device_id, b.boot_id, b.seq, Samples(b.names, sig, ts, bits.view(np.float64)),
        tuple(b.text),
    )  # fmt: skip
