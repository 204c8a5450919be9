"""GNSS source: NMEA 0183 from a serial receiver (``firmware_bridge.gnss``), VSS-named samples."""

from __future__ import annotations

from core.wire import Samples
from edge.sources.base import Source


class GnssSource(Source):
    """Position, speed, heading and fix quality from a receiver on ``port``."""

    kind = "gnss"

    def __init__(self, name: str, *, port: str, baudrate: int = 9600) -> None:
        super().__init__(name)
        self.port, self.baudrate = port, baudrate
        self.text_dropped = 0  # string-valued samples (fix type) are not carried as numbers

    def _open_internal(self) -> None:
        from firmware_bridge.gnss import GnssReader

        self.reader = GnssReader(self.port, self.baudrate).open()

    def _read_internal(self, timeout: float) -> Samples | None:
        samples, text = self.reader.read(timeout)
        self.text_dropped += len(text)
        return samples

    def _close_internal(self) -> None:
        self.reader.close()
