"""Live CAN input through python-can: any interface it supports, read into ``Frames`` blocks.

python-can hands us one ``can.Message`` object per frame; that boundary is the only place with
per-frame Python. :class:`BlockBuilder` turns messages into column lists and emits one
:class:`~core.frames.Frames` block per N frames or T milliseconds, so everything
downstream works on arrays.

Error frames, bus-off and read errors are not exceptions: they become :class:`BusEvent` records and
:class:`BusCounters`, and a broken link is logged once when it breaks and once when it recovers.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import can
import numpy as np

from core.errors import SourceUnavailableError
from core.frames import CAN_EFF_MASK, Frames
from firmware_bridge.frames import MAX_REPORTED

log = logging.getLogger(__name__)

# SocketCAN error classes carried in the id of an error frame (linux/can/error.h); python-can keeps
# them in ``arbitration_id`` of a message with ``is_error_frame`` set.
CAN_ERR_TX_TIMEOUT = 0x001
CAN_ERR_LOSTARB = 0x002
CAN_ERR_CRTL = 0x004
CAN_ERR_PROT = 0x008
CAN_ERR_TRX = 0x010
CAN_ERR_ACK = 0x020
CAN_ERR_BUSOFF = 0x040
CAN_ERR_BUSERROR = 0x080
CAN_ERR_RESTARTED = 0x100
# data[1] of a CAN_ERR_CRTL frame
CAN_ERR_CRTL_RX_PASSIVE = 0x10
CAN_ERR_CRTL_TX_PASSIVE = 0x20
CAN_ERR_CRTL_RX_WARNING = 0x04
CAN_ERR_CRTL_TX_WARNING = 0x08

MAX_EVENTS = 256
CLASSIC_MAX = 8
FD_MAX = 64


@dataclass(frozen=True, slots=True)
class BusEvent:
    """Something that happened on the bus that is not a data frame."""

    ts_us: int
    kind: str  # error_frame | bus_off | error_passive | error_warning | restarted | read_error | recovered | bad_record
    detail: str = ""


@dataclass
class BusCounters:
    """What a source saw besides good frames; the caller can tell exactly what was dropped."""

    frames: int = 0
    blocks: int = 0
    error_frames: int = 0
    bus_off: int = 0
    error_passive: int = 0
    error_warning: int = 0
    remote_frames: int = 0
    oversized: int = 0  # payload longer than 8 (classic) or 64 (FD) bytes
    bad_id: int = 0  # id wider than its format allows
    bad_records: int = 0  # corrupt log lines / objects a reader could not parse
    read_errors: int = 0  # python-can raised while receiving
    examples: list[str] = field(default_factory=list)

    def note(self, why: str) -> None:
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(why)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify_error_frame(msg: can.Message) -> list[str]:
    """Event kinds for one error frame (SocketCAN error classes; other drivers just say 'error_frame')."""
    kinds = ["error_frame"]
    cls = msg.arbitration_id
    data = bytes(msg.data)
    if cls & CAN_ERR_BUSOFF:
        kinds.append("bus_off")
    if cls & CAN_ERR_RESTARTED:
        kinds.append("restarted")
    if cls & CAN_ERR_CRTL and len(data) > 1:
        if data[1] & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
            kinds.append("error_passive")
        elif data[1] & (CAN_ERR_CRTL_RX_WARNING | CAN_ERR_CRTL_TX_WARNING):
            kinds.append("error_warning")
    return kinds


class BlockBuilder:
    """Collect python-can messages into ``Frames`` blocks; counts and drops what is not a data frame."""

    def __init__(
        self,
        counters: BusCounters | None = None,
        on_event: Callable[[BusEvent], None] | None = None,
    ) -> None:
        self.counters = counters or BusCounters()
        self._on_event = on_event
        self._reset()

    def _reset(self) -> None:
        self._ts: list[int] = []
        self._id: list[int] = []
        self._ext: list[bool] = []
        self._payloads: list[bytes] = []

    def __len__(self) -> int:
        return len(self._ts)

    def first_ts_us(self) -> int | None:
        return self._ts[0] if self._ts else None

    def _event(self, ts_us: int, kind: str, detail: str = "") -> None:
        if self._on_event is not None:
            self._on_event(BusEvent(ts_us, kind, detail))

    def add(self, msg: can.Message) -> bool:
        """Add one message; returns True when it became a frame of the block."""
        c = self.counters
        ts_us = round(msg.timestamp * 1_000_000)
        if msg.is_error_frame:
            for kind in classify_error_frame(msg):
                if kind == "error_frame":
                    c.error_frames += 1
                elif kind == "bus_off":
                    c.bus_off += 1
                elif kind == "error_passive":
                    c.error_passive += 1
                elif kind == "error_warning":
                    c.error_warning += 1
                self._event(ts_us, kind, f"class 0x{msg.arbitration_id:x}")
            return False
        if msg.is_remote_frame:
            c.remote_frames += 1
            return False
        payload = bytes(msg.data)
        limit = FD_MAX if msg.is_fd else CLASSIC_MAX
        if len(payload) > limit:
            c.oversized += 1
            c.note(f"id 0x{msg.arbitration_id:x}: {len(payload)} bytes > {limit}")
            return False
        can_id = msg.arbitration_id
        if can_id < 0 or can_id > (CAN_EFF_MASK if msg.is_extended_id else 0x7FF):
            c.bad_id += 1
            c.note(f"id 0x{can_id:x} does not fit a {'29' if msg.is_extended_id else '11'}-bit id")
            return False
        self._ts.append(ts_us)
        self._id.append(can_id)
        self._ext.append(bool(msg.is_extended_id))
        self._payloads.append(payload)
        return True

    def flush(self) -> Frames:
        """The collected frames as one block (possibly empty); the builder starts over."""
        payloads = self._payloads
        n = len(payloads)
        width = CLASSIC_MAX if all(len(p) <= CLASSIC_MAX for p in payloads) else FD_MAX
        data = np.zeros((n, width), dtype=np.uint8)
        if n:
            flat = np.frombuffer(b"".join(p.ljust(width, b"\0") for p in payloads), np.uint8)
            data[:] = flat.reshape(n, width)
        frames = Frames(
            np.asarray(self._ts, dtype=np.int64),
            np.asarray(self._id, dtype=np.uint32),
            np.asarray(self._ext, dtype=bool),
            np.fromiter((len(p) for p in payloads), dtype=np.uint8, count=n),
            data,
        )
        self.counters.frames += n
        if n:
            self.counters.blocks += 1
        self._reset()
        return frames


class CanBusSource:
    """Frames from a live python-can bus (``socketcan``, ``slcan``, ``virtual``, ``pcan``...).

    ``interface`` and ``channel`` are python-can's names; every other keyword (``bitrate``,
    ``tty_baudrate``, ``receive_own_messages``, ``can_filters``...) goes to ``can.Bus`` unchanged.
    """

    def __init__(
        self,
        interface: str,
        channel: str | int | None = None,
        *,
        block_frames: int = 1024,
        block_ms: float = 100.0,
        **bus_config: Any,
    ) -> None:
        if block_frames < 1 or block_ms <= 0:
            raise ValueError("block_frames must be >= 1 and block_ms > 0")
        self.interface = interface
        self.channel = channel
        self.block_frames = block_frames
        self.block_ms = block_ms
        self.bus_config = bus_config
        self.counters = BusCounters()
        self._events: deque[BusEvent] = deque(maxlen=MAX_EVENTS)
        self._builder = BlockBuilder(self.counters, self._events.append)
        self._bus: can.BusABC | None = None
        self._broken = False

    def __repr__(self) -> str:
        return f"CanBusSource({self.interface!r}, {self.channel!r})"

    def open(self) -> None:
        if self._bus is not None:
            return
        try:
            self._bus = can.Bus(interface=self.interface, channel=self.channel, **self.bus_config)
        except (can.CanError, OSError, ValueError, ImportError, TypeError) as err:
            raise SourceUnavailableError(
                f"cannot open CAN interface {self.interface!r} channel {self.channel!r}: {err}"
            ) from err

    def close(self) -> None:
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None

    def __enter__(self) -> CanBusSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bus(self) -> can.BusABC:
        if self._bus is None:
            raise SourceUnavailableError(f"{self!r} is not open")
        return self._bus

    def drain_events(self) -> list[BusEvent]:
        """Events since the last call (at most the last ``MAX_EVENTS``)."""
        out = list(self._events)
        self._events.clear()
        return out

    def _recv(self, timeout: float) -> can.Message | None:
        try:
            msg = self.bus.recv(timeout=timeout)
        except can.CanError as err:
            # A driver that raises on bus-off or an unplugged adapter: count, log once, go on.
            self.counters.read_errors += 1
            self._events.append(BusEvent(round(time.time() * 1e6), "read_error", str(err)))
            if not self._broken:
                log.warning("%r: receive failed (%s); counting further errors quietly", self, err)
                self._broken = True
            time.sleep(min(timeout, 0.05))
            return None
        if self._broken and msg is not None:
            log.warning("%r: receiving again after %d error(s)", self, self.counters.read_errors)
            self._events.append(BusEvent(round(msg.timestamp * 1e6), "recovered"))
            self._broken = False
        return msg

    def read_block(self) -> Frames:
        """Receive until ``block_frames`` frames or ``block_ms`` have passed; may be empty."""
        builder = self._builder
        deadline = time.monotonic() + self.block_ms / 1000.0
        while len(builder) < self.block_frames:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = self._recv(left)
            if msg is not None:
                builder.add(msg)
        return builder.flush()

    def blocks(
        self, *, max_blocks: int | None = None, stop: Callable[[], bool] | None = None
    ) -> Iterator[Frames]:
        """Non-empty blocks until ``stop()`` says so or ``max_blocks`` were yielded."""
        done = 0
        self.open()
        while (max_blocks is None or done < max_blocks) and not (stop and stop()):
            frames = self.read_block()
            if len(frames):
                done += 1
                yield frames
