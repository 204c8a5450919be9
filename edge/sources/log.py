"""Log source: a recorded CAN log (candump ``-L``, Vector ASC, BLF...) played as if it were the bus.

python-can's readers (``firmware_bridge.can_logs``, the suffix picks the format) stream the file in
blocks, so a log of any size is read in constant memory; records no bus could carry are counted
and skipped with their file:line (``counters``), never raised. Frames go through the same
compiled DBC decoder and VSS mapping as a live bus (``edge.sources.can.FrameDecoder``), so the
agent's campaigns, durable queue and publisher see exactly what a car would send.

``rate`` paces the replay: ``"max"`` as fast as it can (the default), ``"real"`` at the recorded
speed, a number ``N`` at N times the recorded speed. ``restamp`` moves the timestamps to now (a
looping demo car looks live); without it the samples keep the log's own time, so what lands in
the database can be compared with the log. ``loop`` starts over at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.errors import ConfigError, SourceUnavailableError
from core.frames import Frames
from core.wire import Samples
from edge.sources.base import Source
from edge.sources.can import FrameDecoder

# What a log reader refused: records no bus could carry (BusCounters fields).
REFUSED = ("bad_records", "bad_id", "oversized", "read_errors")


def parse_rate(rate: str | float, name: str = "log") -> float:
    """``"max"`` -> 0 (no pacing), ``"real"`` -> 1, a number ``N > 0`` -> N (times log speed)."""
    if isinstance(rate, str):
        if rate in ("max", "real"):
            return 0.0 if rate == "max" else 1.0
        try:
            rate = float(rate)
        except ValueError:
            raise ConfigError(
                f"source {name!r}: rate must be 'real', 'max' or a number, not {rate!r}"
            ) from None
    if not (isinstance(rate, int | float) and 0 < float(rate) < float("inf")):
        raise ConfigError(f"source {name!r}: rate must be > 0, not {rate!r}")
    return float(rate)


class LogSource(Source):
    """``log = "drive.blf"`` and ``dbc`` (plus ``mapping``): the log's frames as VSS samples."""

    kind = "log"

    def __init__(
        self,
        name: str,
        *,
        log: str,
        dbc: str,
        mapping: str | None = None,
        vss_catalog: str | None = None,
        rate: str | float = "max",
        loop: bool = False,
        restamp: bool = False,
        strict: bool = True,
        only_mapped: bool | None = None,
        block_frames: int = 4096,
        block_ms: float = 100.0,
    ) -> None:
        super().__init__(name)
        self.speed = parse_rate(rate, name)
        if not 1 <= block_frames <= 1 << 20:
            raise ConfigError(f"source {name!r}: block_frames must be 1..1048576")
        if not block_ms > 0:
            raise ConfigError(f"source {name!r}: block_ms must be > 0")
        self.log_path, self.dbc, self.mapping_name = Path(log), dbc, mapping
        self.vss_catalog, self.strict, self.only_mapped = vss_catalog, strict, only_mapped
        self.loop, self.restamp = loop, restamp
        self.block_frames, self.block_ms = block_frames, block_ms
        self.decoder: FrameDecoder | None = None
        self.log_counters: Any = None  # firmware_bridge.can_source.BusCounters of the last pass
        self.refused_total = 0  # over every pass (a looping replay reads the file again)
        self._blocks: Iterator[Frames] | None = None
        self._pending: Frames | None = None
        self._done = False
        self._loops = 0
        self._src0: int | None = None  # the log's first timestamp (us)
        self._last_ts = 0  # the latest log timestamp seen in this pass
        self._offset = 0  # added to log time after each loop, so time keeps going forward
        self._wall0 = 0.0
        self._wall0_us = 0
        # Called with every raw frame block before it is decoded (edge.intrusion), in this thread.
        self.frame_hooks: list[Callable[[Frames], None]] = []

    @property
    def exhausted(self) -> bool:
        return self._done

    @property
    def frames_read(self) -> int:
        return 0 if self.decoder is None else self.decoder.frames

    @property
    def replay_loops(self) -> int:
        """How often a looping replay started over (a seam in the bus's timing)."""
        return self._loops

    @property
    def refused(self) -> int:
        """Records refused so far (corrupt lines, ids wider than 29 bits, > 64 data bytes...)."""
        return self.refused_total + self._refused_now()

    def _refused_now(self) -> int:
        c = self.log_counters
        return 0 if c is None else sum(int(getattr(c, k)) for k in REFUSED)

    def refused_examples(self) -> list[str]:
        """The first few refused records, each with its file:line."""
        return [] if self.log_counters is None else list(self.log_counters.examples)

    def _open_internal(self) -> None:
        if not self.log_path.is_file():
            raise SourceUnavailableError(
                f"source {self.name!r}: CAN log {self.log_path} does not exist or is not a file"
            )
        if not Path(self.dbc).is_file():
            raise SourceUnavailableError(f"source {self.name!r}: DBC {self.dbc} does not exist")
        if self.decoder is None:
            self.decoder = FrameDecoder(
                self.dbc, self.mapping_name, strict=self.strict, only_mapped=self.only_mapped,
                vss_catalog=self.vss_catalog,
            )  # fmt: skip
        self._src0, self._last_ts, self._offset, self._loops = None, 0, 0, 0
        self._done = False
        self._start_pass()
        self._wall0 = time.monotonic()
        self._wall0_us = time.time_ns() // 1000

    def _start_pass(self) -> None:
        from firmware_bridge.can_logs import replay_log
        from firmware_bridge.can_source import BusCounters

        self.refused_total += self._refused_now()
        self.log_counters = BusCounters()
        self._blocks = replay_log(
            self.log_path, block_frames=self.block_frames, block_ms=self.block_ms,
            counters=self.log_counters,
        )  # fmt: skip
        self._pending = None

    def _next_block(self) -> Frames | None:
        """The next non-empty block of the log (starting over when looping), None at the end."""
        assert self._blocks is not None
        for _attempt in range(2):
            block = next(self._blocks, None)
            if block is not None:
                return block
            if not self.loop or self._src0 is None:
                return None
            # Start over: the next pass follows the last frame by one millisecond.
            self._offset += self._last_ts - self._src0 + 1000
            self._loops += 1
            self._start_pass()
        return None

    def _read_internal(self, timeout: float) -> Samples | None:
        assert self.decoder is not None
        if self._done:
            time.sleep(min(timeout, 0.05))
            return None
        block = self._pending
        if block is None:
            block = self._next_block()
            if block is None:
                self._done = True
                return None
            if self._src0 is None:
                self._src0 = int(block.ts_us[0])
            self._last_ts = max(self._last_ts, int(block.ts_us.max()))
        assert self._src0 is not None
        if self.speed:
            # Hand the block over when the replay clock reaches its first frame.
            due = (int(block.ts_us[0]) + self._offset - self._src0) / self.speed
            wait = self._wall0 + due / 1e6 - time.monotonic()
            if wait > 0:
                self._pending = block
                time.sleep(min(timeout, wait))
                if time.monotonic() < self._wall0 + due / 1e6:
                    return None
        self._pending = None
        return self._decode(block)

    def _decode(self, block: Frames) -> Samples:
        assert self.decoder is not None and self._src0 is not None
        bus = samples = block
        if self._offset or self.restamp:
            ts = block.ts_us + self._offset
            out = ts
            if self.restamp:
                rel = ts - self._src0
                ts = self._wall0_us + rel
                # Source time runs speed-times faster: keep the replay's wall-clock spacing.
                out = self._wall0_us + (rel / self.speed).astype("int64") if self.speed else ts
            bus = Frames(ts, block.can_id, block.extended, block.dlc, block.data)
            samples = Frames(out, block.can_id, block.extended, block.dlc, block.data)
        # Frame hooks (edge.intrusion) judge the bus as recorded, moved in time only.
        for hook in self.frame_hooks:
            hook(bus)
        return self.decoder.decode(samples)

    def _close_internal(self) -> None:
        if self._blocks is not None:
            close = getattr(self._blocks, "close", None)
            if close is not None:
                close()  # the reader's file handle
            self._blocks = None
