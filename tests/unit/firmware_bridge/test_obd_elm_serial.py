"""The ELM327 link against a misbehaving adapter on a pty: garbage, oversized answers, silence."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from core.errors import SourceTimeoutError
from firmware_bridge.obd.client import ObdClient
from firmware_bridge.obd.elm327 import Elm327


@pytest.fixture
def adapter() -> Iterator[Callable[[Callable[[str], bytes]], Elm327]]:
    """Start a fake adapter thread answering each CR-terminated command with ``reply(cmd)``."""
    master, slave = os.openpty()
    stop = threading.Event()

    def start(reply: Callable[[str], bytes]) -> Elm327:
        def serve() -> None:
            buf = b""
            while not stop.is_set():
                try:
                    chunk = os.read(master, 256)
                except OSError:
                    return
                buf += chunk
                while b"\r" in buf:
                    line, buf = buf.split(b"\r", 1)
                    os.write(master, reply(line.decode()))

        threading.Thread(target=serve, daemon=True).start()
        return Elm327(os.ttyname(slave), timeout=0.5, search_timeout=0.5, max_response=512)

    yield start
    stop.set()
    os.close(slave)
    os.close(master)


def _normal(cmd: str) -> bytes:
    if cmd == "ATZ":
        return b"\r\rELM327 v1.5\r\r>"
    if cmd == "ATDPN":
        return b"A6\r\r>"
    if cmd.startswith("AT"):
        return b"OK\r\r>"
    if cmd == "0100":
        return b"7E8064100BE1FA813\r\r>"
    return b"\xff\xfe\x00garbage\x80\r7E803410D32\r\r>"  # noise around a good frame


def test_garbage_bytes_are_counted_and_the_frame_kept(adapter) -> None:  # type: ignore[no-untyped-def]
    elm = adapter(_normal).open()
    try:
        reading = ObdClient(elm).read([0x0D])
        assert reading.values == {0x0D: 50.0}
        assert elm.counters["garbage_bytes"] > 0 and elm.counters["dropped"] >= 1
    finally:
        elm.close()


def test_oversized_answer_is_dropped_not_buffered(adapter) -> None:  # type: ignore[no-untyped-def]
    def babble(cmd: str) -> bytes:
        return b"7E8 41 0D " * 200 + b"\r>" if cmd == "010D" else _normal(cmd)

    elm = adapter(babble).open()
    try:
        reading = ObdClient(elm).read([0x0D])
        assert reading.values == {} and elm.counters["oversized"] == 1
    finally:
        elm.close()


def test_silent_adapter_times_out_clearly(adapter) -> None:  # type: ignore[no-untyped-def]
    elm = adapter(lambda cmd: b"" if cmd == "ATZ" else _normal(cmd))
    with pytest.raises(SourceTimeoutError, match="no prompt after 'ATZ'"):
        elm.open()
    assert not elm.is_open
