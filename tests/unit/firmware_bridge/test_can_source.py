"""Live CAN input on python-can's virtual bus: blocks, timestamps, error frames and read errors."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import can
import numpy as np
import pytest

from core.errors import SourceUnavailableError
from firmware_bridge.can_source import (
    CAN_ERR_BUSOFF,
    CAN_ERR_CRTL,
    CAN_ERR_CRTL_TX_PASSIVE,
    BlockBuilder,
    CanBusSource,
)

_channels = itertools.count()


@pytest.fixture
def channel() -> str:
    return f"carpulse-test-{next(_channels)}-{time.monotonic_ns()}"


@pytest.fixture
def sender(channel: str) -> Iterator[can.BusABC]:
    bus = can.Bus(interface="virtual", channel=channel)
    yield bus
    bus.shutdown()


def _msg(i: int, **kw: object) -> can.Message:
    base = {
        "timestamp": 1_584_656_584.0 + i * 0.001001,
        "arbitration_id": 0x100 + i % 7,
        "data": bytes([i % 256]) * (i % 9),
        "is_extended_id": False,
    }
    base.update(kw)
    return can.Message(**base)  # type: ignore[arg-type]


def test_frames_arrive_as_blocks_of_n(channel: str, sender: can.BusABC) -> None:
    src = CanBusSource("virtual", channel, block_frames=10, block_ms=500)
    with src:
        sent = [_msg(i) for i in range(25)]
        for m in sent:
            sender.send(m)
        blocks = list(src.blocks(max_blocks=3))
    assert [len(b) for b in blocks] == [10, 10, 5]
    ids = np.concatenate([b.can_id for b in blocks])
    dlc = np.concatenate([b.dlc for b in blocks])
    assert ids.tolist() == [m.arbitration_id for m in sent]
    assert dlc.tolist() == [len(m.data) for m in sent]
    first = blocks[0]
    assert first.data.shape == (10, 8)
    assert bytes(first.data[3, : first.dlc[3]]) == bytes(sent[3].data)
    assert src.counters.frames == 25 and src.counters.blocks == 3


def test_timestamps_are_kept_in_microseconds(channel: str) -> None:
    """With ``preserve_timestamps`` (passed through to can.Bus) the sender's stamps must survive."""
    other = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    src = CanBusSource("virtual", channel, block_frames=3, block_ms=300, preserve_timestamps=True)
    try:
        src.open()
        stamps = [1_584_656_584.423089, 1_584_656_584.428101, 1_600_000_000.000001]
        for i, ts in enumerate(stamps):
            other.send(_msg(i, timestamp=ts))
        block = src.read_block()
    finally:
        other.shutdown()
        src.close()
    assert block.ts_us.tolist() == [1584656584423089, 1584656584428101, 1600000000000001]


def test_block_closes_after_block_ms(channel: str, sender: can.BusABC) -> None:
    with CanBusSource("virtual", channel, block_frames=1000, block_ms=80) as src:
        sender.send(_msg(1))
        t0 = time.monotonic()
        block = src.read_block()
        took = time.monotonic() - t0
        empty = src.read_block()
    assert len(block) == 1
    assert 0.05 < took < 1.0
    assert len(empty) == 0


def test_error_frames_and_bus_off_are_events_not_exceptions(
    channel: str, sender: can.BusABC
) -> None:
    with CanBusSource("virtual", channel, block_frames=100, block_ms=100) as src:
        sender.send(_msg(0))
        sender.send(can.Message(is_error_frame=True, arbitration_id=CAN_ERR_BUSOFF, data=b""))
        sender.send(
            can.Message(
                is_error_frame=True,
                arbitration_id=CAN_ERR_CRTL,
                data=bytes([0, CAN_ERR_CRTL_TX_PASSIVE, 0, 0, 0, 0, 0, 0]),
            )
        )
        sender.send(_msg(1))
        sender.send(_msg(2, is_remote_frame=True, data=b""))
        block = src.read_block()
        events = src.drain_events()
    assert len(block) == 2  # error and remote frames are not data
    c = src.counters
    assert (c.error_frames, c.bus_off, c.error_passive, c.remote_frames) == (2, 1, 1, 1)
    kinds = [e.kind for e in events]
    assert kinds == ["error_frame", "bus_off", "error_frame", "error_passive"]
    assert src.drain_events() == []


def test_read_errors_are_counted_and_logged_once(
    channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    src = CanBusSource("virtual", channel, block_frames=10, block_ms=120)
    src.open()
    src.bus.shutdown()  # python-can now raises CanOperationError on every recv
    with caplog.at_level("WARNING"):
        block = src.read_block()
    assert len(block) == 0
    assert src.counters.read_errors >= 2
    assert sum("receive failed" in r.getMessage() for r in caplog.records) == 1
    assert {e.kind for e in src.drain_events()} == {"read_error"}


def test_unknown_interface_is_a_clear_source_error() -> None:
    with pytest.raises(SourceUnavailableError, match="no-such-bus"):
        CanBusSource("no-such-bus", "x").open()


def test_slcan_on_a_missing_serial_port_is_a_clear_source_error() -> None:
    with pytest.raises(SourceUnavailableError, match="slcan"):
        CanBusSource("slcan", "/dev/carpulse-no-such-tty", bitrate=500000).open()


def test_builder_drops_oversized_and_bad_ids() -> None:
    b = BlockBuilder()
    assert not b.add(can.Message(arbitration_id=0x800, is_extended_id=False, data=b"\1"))
    fd = can.Message(arbitration_id=0x123, is_fd=True, data=bytes(range(64)), is_extended_id=False)
    assert b.add(fd)
    big = can.Message(arbitration_id=0x124, is_extended_id=False, data=bytes(8))
    big.data = bytearray(12)  # a driver that hands over more than 8 bytes for a classic frame
    assert not b.add(big)
    frames = b.flush()
    assert frames.data.shape[1] == 64
    assert (b.counters.bad_id, b.counters.oversized) == (1, 1)
    assert frames.dlc.tolist()[-1] == 64
