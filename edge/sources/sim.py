"""Simulated car source: ``firmware_bridge.sim`` drive cycle encoded as CAN frames, then decoded.

It runs the same decode path as a real bus (compiled DBC decoder + VSS names), stamped with the
wall clock. ``speedup`` plays the drive cycle faster than real time (tests, benchmarks).
"""

from __future__ import annotations

import time

import numpy as np

from core.frames import Frames
from core.wire import Samples
from edge.sources.base import Source
from edge.sources.can import _empty_frames


class SimSource(Source):
    """Frames of a simulated car for the wall-clock time since the last read."""

    kind = "sim"

    def __init__(
        self,
        name: str,
        *,
        seed: int = 0,
        phase_s: float = 0.0,
        speedup: float = 1.0,
        dbc: str | None = None,
        min_block_s: float = 0.05,
    ) -> None:
        super().__init__(name)
        if speedup <= 0:
            raise ValueError("speedup must be > 0")
        self.seed, self.phase_s, self.speedup, self.dbc = seed, phase_s, speedup, dbc
        self.min_block_s = min_block_s

    def _open_internal(self) -> None:
        from firmware_bridge.compiled import CompiledDecoder
        from firmware_bridge.dbc import load_dbc
        from firmware_bridge.sim import PRIUS_VSS, SimulatedCar, default_dbc

        db = load_dbc(self.dbc or default_dbc(), strict=False)
        self.car = SimulatedCar(db, seed=self.seed, phase_s=self.phase_s)
        self.decoder = CompiledDecoder(db, PRIUS_VSS)
        wanted = set(PRIUS_VSS.values())
        self.keep_slot = np.fromiter((n in wanted for n in self.decoder.names), bool)
        self.decoder.decode(_empty_frames())  # compile the kernel here, not in the first read
        self._wall0 = time.monotonic()
        self._wall0_us = time.time_ns() // 1000
        self._sim_s = 0.0

    def _read_internal(self, timeout: float) -> Samples | None:
        now_s = (time.monotonic() - self._wall0) * self.speedup
        span = now_s - self._sim_s
        if span < self.min_block_s * self.speedup:
            time.sleep(min(timeout, self.min_block_s))
            return None
        frames = self.car.frames(self._wall0_us, self._sim_s, span)
        # frames() stamps relative to its start; map simulated time back onto the wall clock.
        rel = (frames.ts_us - self._wall0_us) + self._sim_s * 1e6
        ts = (self._wall0_us + rel / self.speedup).astype(np.int64)
        self._sim_s = now_s
        frames = Frames(ts, frames.can_id, frames.extended, frames.dlc, frames.data)
        samples, _ = self.decoder.decode(frames)
        keep = self.keep_slot[samples.sig]
        return Samples(samples.names, samples.sig[keep], samples.ts_us[keep], samples.value[keep])
