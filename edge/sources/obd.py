"""OBD-II source: mode 01 PIDs polled through an ELM327 (``firmware_bridge.obd``), VSS-named."""

from __future__ import annotations

import time

from core.wire import Samples
from edge.sources.base import Source


class ObdSource(Source):
    """Poll ``pids`` every ``interval_s`` over an ELM327 on ``port`` (serial, pty or socket:// URL)."""

    kind = "obd"

    def __init__(
        self,
        name: str,
        *,
        port: str,
        pids: list[int] | None = None,
        interval_s: float = 1.0,
        baudrate: int = 38400,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(name)
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.port, self.pids, self.interval_s = port, pids, interval_s
        self.baudrate, self.timeout_s = baudrate, timeout_s
        self._next = 0.0

    def _open_internal(self) -> None:
        from firmware_bridge.obd.client import ObdClient
        from firmware_bridge.obd.elm327 import Elm327

        self.transport = Elm327(self.port, baudrate=self.baudrate, timeout=self.timeout_s).open()
        self.client = ObdClient(self.transport)
        if self.pids is None:
            self.pids = self.client.discover()

    def _read_internal(self, timeout: float) -> Samples | None:
        wait = self._next - time.monotonic()
        if wait > 0:
            time.sleep(min(timeout, wait))
            return None
        self._next = time.monotonic() + self.interval_s
        return self.client.read_samples(self.pids or [])

    def _close_internal(self) -> None:
        self.transport.close()
