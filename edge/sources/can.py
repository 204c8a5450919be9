"""CAN source: a python-can interface or a candump log replay, decoded to VSS-named samples.

Decoding uses ``firmware_bridge``: the compiled (numba) DBC decoder, then the DBC -> VSS mapping
(names and unit transforms). With ``only_mapped`` (the default when a mapping is given) signals
the mapping does not name are dropped; otherwise they keep their private ``Vehicle.Private.Dbc``
path. A log replay keeps the recorded timing (``rate = "real"``), runs ``N`` times faster
(``rate = N``) or as fast as it can (``rate = "max"``), and stamps samples with the wall clock
(``restamp``) so they look live; ``loop`` starts over at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, SourceUnavailableError
from core.frames import Frames
from core.wire import Samples
from edge.sources.base import Source


def load_vss_mapping(mapping: str | Path | None, catalog: str | Path | None = None) -> Any:
    """A mapping file by path, or by the name of a shipped one (``gt350``), checked against the
    VSS catalog ``catalog`` (a CSV of your own, or vss-tools' export) or the shipped one."""
    if mapping is None:
        return None
    from firmware_bridge.vss import MAPPINGS_DIR, load_mapping, read_catalog

    p = Path(mapping)
    if not p.exists() and (MAPPINGS_DIR / f"{mapping}.yaml").exists():
        p = MAPPINGS_DIR / f"{mapping}.yaml"
    cat = None
    if catalog is not None:
        try:
            cat = read_catalog(catalog)
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"VSS catalog {catalog}: {err}") from err
        if not cat:
            raise ConfigError(f"VSS catalog {catalog} names no signal (columns: path, type, ...)")
    return load_mapping(p, cat)


def _empty_frames() -> Frames:
    return Frames(
        np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, bool),
        np.zeros(0, np.uint8), np.zeros((0, 8), np.uint8),
    )  # fmt: skip


class FrameDecoder:
    """Frames -> VSS samples: compiled DBC decoder, mapping transforms, optional mapped-only filter."""

    def __init__(
        self,
        dbc: str | Path,
        mapping: str | Path | None,
        *,
        strict: bool,
        only_mapped: bool | None,
        vss_catalog: str | Path | None = None,
    ) -> None:
        from firmware_bridge.compiled import CompiledDecoder
        from firmware_bridge.dbc import load_dbc

        self.mapping = load_vss_mapping(mapping, vss_catalog)
        db = load_dbc(dbc, strict=strict)
        paths = self.mapping.paths() if self.mapping is not None else {}
        self.decoder = CompiledDecoder(db, paths)
        self.only_mapped = bool(paths) if only_mapped is None else only_mapped
        if self.only_mapped and not paths:
            raise ConfigError(f"only_mapped needs a mapping for DBC {dbc}")
        wanted = set(paths.values())
        self.keep_slot = np.fromiter(
            (n in wanted for n in self.decoder.names), bool, len(self.decoder.names)
        )
        self.frames = 0
        self.unknown_id = 0
        # Compile the decoder kernel now (open), not in the first read (which has a timeout).
        self.decoder.decode(_empty_frames())

    def decode(self, frames: Frames) -> Samples:
        samples, stats = self.decoder.decode(frames)
        self.frames += stats.frames
        self.unknown_id += stats.unknown_id
        if self.only_mapped and len(samples):
            keep = self.keep_slot[samples.sig]
            samples = Samples(
                samples.names, samples.sig[keep], samples.ts_us[keep], samples.value[keep]
            )
        if self.mapping is not None and len(samples):
            samples, _ = self.mapping.transform(samples)
        return samples


class CanSource(Source):
    """``log = "file.log"`` to replay, or ``interface``/``channel`` for a live python-can bus."""

    kind = "can"

    def __init__(
        self,
        name: str,
        *,
        dbc: str,
        mapping: str | None = None,
        vss_catalog: str | None = None,
        log: str | None = None,
        interface: str | None = None,
        channel: str | int | None = None,
        rate: str | float = "real",
        loop: bool = False,
        restamp: bool = True,
        strict: bool = True,
        only_mapped: bool | None = None,
        block_frames: int = 4096,
        block_ms: float = 100.0,
        bus_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name)
        if (log is None) == (interface is None):
            raise ConfigError(
                f"source {name!r}: give either 'log' or 'interface', not both or neither"
            )
        if isinstance(rate, str) and rate not in ("real", "max"):
            raise ConfigError(
                f"source {name!r}: rate must be 'real', 'max' or a number, not {rate!r}"
            )
        if not isinstance(rate, str) and not rate > 0:
            raise ConfigError(f"source {name!r}: rate must be > 0")
        self.dbc, self.mapping_name, self.strict, self.only_mapped = (
            dbc,
            mapping,
            strict,
            only_mapped,
        )
        self.vss_catalog = vss_catalog
        self.log_path = log
        self.interface, self.channel = interface, channel
        self.speed = 1.0 if rate == "real" else (0.0 if rate == "max" else float(rate))
        self.loop, self.restamp = loop, restamp
        self.block_frames, self.block_ms = block_frames, block_ms
        self.bus_options = dict(bus_options or {})
        self.decoder: FrameDecoder | None = None
        self._frames: Frames | None = None
        self._bus: Any = None
        self._pos = 0
        self._done = False
        # Called with every raw frame block before it is decoded (edge.intrusion), in this thread.
        self.frame_hooks: list[Callable[[Frames], None]] = []

    @property
    def exhausted(self) -> bool:
        return self._done

    @property
    def frames_read(self) -> int:
        return 0 if self.decoder is None else self.decoder.frames

    def _open_internal(self) -> None:
        if not Path(self.dbc).exists():
            raise SourceUnavailableError(f"source {self.name!r}: DBC {self.dbc} does not exist")
        self.decoder = FrameDecoder(
            self.dbc, self.mapping_name, strict=self.strict, only_mapped=self.only_mapped,
            vss_catalog=self.vss_catalog,
        )  # fmt: skip
        if self.log_path is not None:
            from firmware_bridge.frames import read_candump

            frames, _report = read_candump(self.log_path)
            if not len(frames):
                raise SourceUnavailableError(f"source {self.name!r}: {self.log_path} has no frames")
            self._frames = frames
            self._src0 = int(frames.ts_us[0])
            self._span = int(frames.ts_us[-1]) - self._src0 + 1000  # one loop of the log, in us
            self._start_replay()
        else:
            from firmware_bridge.can_source import CanBusSource

            self._bus = CanBusSource(
                str(self.interface),
                self.channel,
                block_frames=self.block_frames,
                block_ms=self.block_ms,
                **self.bus_options,
            )
            self._bus.open()

    def _start_replay(self) -> None:
        self._pos = 0
        self._loops = 0
        self._wall0 = time.monotonic()
        self._last_emit = self._wall0
        self._wall0_us = time.time_ns() // 1000

    def _read_internal(self, timeout: float) -> Samples | None:
        assert self.decoder is not None
        if self._bus is not None:
            return self._decode(self._bus.read_block())
        return self._replay(timeout)

    def _decode(self, frames: Frames, bus: Frames | None = None) -> Samples:
        assert self.decoder is not None
        if len(frames):
            for hook in self.frame_hooks:
                hook(frames if bus is None else bus)
        return self.decoder.decode(frames)

    @property
    def replay_loops(self) -> int:
        """How often a looping replay started over (a seam in the bus's timing); 0 when live."""
        return getattr(self, "_loops", 0)

    def _replay(self, timeout: float) -> Samples | None:
        assert self._frames is not None and self.decoder is not None
        f = self._frames
        n = len(f)
        if self._pos >= n:
            if not self.loop:
                self._done = True
                time.sleep(min(timeout, 0.05))
                return None
            self._pos = 0
            self._loops += 1
        if self.speed == 0:
            end = min(n, self._pos + self.block_frames)
        else:
            # Deliver blocks of about block_ms, as a bus driver does, not a trickle of frames.
            wait = self._last_emit + self.block_ms / 1000 - time.monotonic()
            if wait > 0:
                time.sleep(min(timeout, wait))
                return None
            self._last_emit = time.monotonic()
            # Source time reached by now, relative to the log's first frame.
            due = (time.monotonic() - self._wall0) * 1e6 * self.speed - self._loops * self._span
            end = int(np.searchsorted(f.ts_us, self._src0 + due, side="right"))
            end = min(end, self._pos + self.block_frames)
            if end <= self._pos:
                wait = (int(f.ts_us[self._pos]) - self._src0 - due) / 1e6 / self.speed
                time.sleep(max(0.0, min(timeout, wait)))
                return None
        block = f.slice(self._pos, end)
        self._pos = end
        # The bus as recorded (frame hooks judge its timing), moved to now when restamping.
        bus = block
        if self.restamp:
            shift = self._wall0_us - self._src0 + self._loops * self._span
            bus = Frames(block.ts_us + shift, block.can_id, block.extended, block.dlc, block.data)
            if self.speed:
                # Source time runs speed-times faster; keep the wall-clock spacing of the replay.
                rel = (block.ts_us - self._src0 + self._loops * self._span) / self.speed
                ts = (self._wall0_us + rel).astype(np.int64)
                block = Frames(ts, block.can_id, block.extended, block.dlc, block.data)
            else:
                block = bus
        return self._decode(block, bus)

    def _close_internal(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None
