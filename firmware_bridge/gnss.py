"""GNSS receivers speaking NMEA 0183 over serial: position, speed, heading, fix, HDOP as VSS samples."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import pynmea2
import serial

from core.errors import SourceUnavailableError
from core.wire import Samples

log = logging.getLogger(__name__)

LAT: Final = "Vehicle.CurrentLocation.Latitude"
LON: Final = "Vehicle.CurrentLocation.Longitude"
ALT: Final = "Vehicle.CurrentLocation.Altitude"
HEADING: Final = "Vehicle.CurrentLocation.Heading"
H_ACCURACY: Final = "Vehicle.CurrentLocation.HorizontalAccuracy"
FIX_TYPE: Final = "Vehicle.CurrentLocation.GNSSReceiver.FixType"  # a string in VSS
# Not in the VSS v6 catalog: receiver-level figures kept under the receiver branch as extensions.
GNSS_SPEED: Final = "Vehicle.CurrentLocation.GNSSReceiver.Speed"  # km/h over ground
HDOP: Final = "Vehicle.CurrentLocation.GNSSReceiver.HDOP"
FIX_QUALITY: Final = "Vehicle.CurrentLocation.GNSSReceiver.FixQuality"  # GGA quality 0-8
SATELLITES: Final = "Vehicle.CurrentLocation.GNSSReceiver.SatellitesInUse"
EXTENSIONS: Final = frozenset({GNSS_SPEED, HDOP, FIX_QUALITY, SATELLITES})

KNOT_KMH: Final = 1.852
MAX_LINE: Final = 256  # NMEA says 82 characters; anything much longer is noise

# GGA quality -> VSS augmentation suffix. Consumer receivers report SBAS fixes as 2 (DGPS);
# RTK (4, 5) is ground-based. Dead reckoning (6), manual (7) and simulation (8) are not fixes.
_AUGMENTATION: Final = {
    1: "",
    2: "_SATELLITE_BASED_AUGMENTATION",
    3: "",
    4: "_GROUND_BASED_AUGMENTATION",
    5: "_GROUND_BASED_AUGMENTATION",
}


def fix_type(quality: int, dimension: int) -> str:
    """VSS ``FixType`` from GGA quality and GSA mode (2 = 2D, 3 = 3D)."""
    if quality not in _AUGMENTATION or dimension < 2:
        return "NONE"
    return ("TWO_D" if dimension == 2 else "THREE_D") + _AUGMENTATION[quality]


@dataclass(slots=True)
class NmeaParser:
    """Turns NMEA lines into samples; bad lines are counted (and logged once per kind), never raised.

    ``uere_m`` converts HDOP into the VSS horizontal accuracy in metres (accuracy ~ HDOP x UERE);
    4 m is a typical single-frequency receiver figure, a documented estimate, not a measurement.
    """

    uere_m: float = 4.0
    counters: Counter[str] = field(default_factory=Counter)
    dimension: int = 3  # from GSA; assume 3D until a GSA says otherwise
    _rows: list[tuple[str, int, float]] = field(default_factory=list)
    _text: list[tuple[str, int, str]] = field(default_factory=list)
    _warned: set[str] = field(default_factory=set)

    def _drop(self, kind: str, line: str, detail: str = "") -> None:
        self.counters[kind] += 1
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(
                "NMEA %s dropped: %r %s (further ones are counted)", kind, line[:80], detail
            )

    def feed(self, line: str | bytes, ts_us: int) -> None:
        """Parse one line received at ``ts_us`` (microseconds since the epoch)."""
        if isinstance(line, bytes | bytearray):
            line = bytes(line).decode("ascii", "replace")
        line = line.strip()
        if not line:
            return
        if len(line) > MAX_LINE or "\ufffd" in line or not line.startswith(("$", "!")):
            self._drop("garbage", line)
            return
        if "*" not in line:
            self._drop("no_checksum", line)
            return
        try:
            msg = pynmea2.parse(line, check=True)
        except pynmea2.ChecksumError as err:
            self._drop("checksum_error", line, str(err))
            return
        except (pynmea2.ParseError, ValueError, TypeError, IndexError, AttributeError) as err:
            self._drop("parse_error", line, str(err))
            return
        self.counters["sentences"] += 1
        n_rows, n_text = len(self._rows), len(self._text)
        try:
            self._take(msg, ts_us)
        except (ValueError, TypeError, AttributeError, ArithmeticError) as err:
            # pynmea2 parses lazily: a field that is not a number fails only when read.
            # Drop the whole sentence, not just the bad field.
            del self._rows[n_rows:], self._text[n_text:]
            self._drop("bad_field", line, str(err))

    def _num(self, value: Any) -> float | None:
        if value in (None, ""):
            return None
        out = float(value)
        return out if math.isfinite(out) else None

    def _add(self, name: str, ts_us: int, value: float | None) -> None:
        if value is not None:
            self._rows.append((name, ts_us, value))

    def _take(self, msg: Any, ts_us: int) -> None:
        kind = type(msg).__name__
        if kind == "GGA":
            quality = int(msg.gps_qual or 0)
            self._add(FIX_QUALITY, ts_us, float(quality))
            self._text.append((FIX_TYPE, ts_us, fix_type(quality, self.dimension)))
            if quality in _AUGMENTATION and msg.lat and msg.lon:
                self._position(msg, ts_us)
                self._add(ALT, ts_us, self._num(msg.altitude))
                hdop = self._num(msg.horizontal_dil)
                self._add(HDOP, ts_us, hdop)
                self._add(H_ACCURACY, ts_us, None if hdop is None else hdop * self.uere_m)
                self._add(SATELLITES, ts_us, self._num(msg.num_sats))
        elif kind == "RMC":
            if msg.status == "A" and msg.lat and msg.lon:  # V = warning, no valid fix
                self._position(msg, ts_us)
                knots = self._num(msg.spd_over_grnd)
                self._add(GNSS_SPEED, ts_us, None if knots is None else knots * KNOT_KMH)
                self._add(HEADING, ts_us, self._heading(msg.true_course))
        elif kind == "VTG":
            self._add(GNSS_SPEED, ts_us, self._num(msg.spd_over_grnd_kmph))
            self._add(HEADING, ts_us, self._heading(msg.true_track))
        elif kind == "GSA":
            self.dimension = int(msg.mode_fix_type or 1)
        else:
            self.counters["ignored"] += 1

    def _heading(self, value: Any) -> float | None:
        deg = self._num(value)
        return None if deg is None or not 0.0 <= deg <= 360.0 else deg % 360.0

    def _position(self, msg: Any, ts_us: int) -> None:
        lat, lon = float(msg.latitude), float(msg.longitude)
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError(f"position {lat}, {lon} out of range")
        self._add(LAT, ts_us, lat)
        self._add(LON, ts_us, lon)

    def feed_many(self, lines: Iterable[str | bytes], ts_us: int) -> None:
        for line in lines:
            self.feed(line, ts_us)

    def drain(self) -> tuple[Samples, list[tuple[str, int, str]]]:
        """Samples and text samples (FixType) parsed since the last drain."""
        rows, text = self._rows, self._text
        self._rows, self._text = [], []
        return (Samples.from_records(rows) if rows else Samples.empty()), text


class GnssReader:
    """A GNSS receiver on a serial port (``/dev/ttyACM0``, a pty, or a pyserial URL)."""

    def __init__(self, port: str, baudrate: int = 9600, parser: NmeaParser | None = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parser = parser or NmeaParser()
        self._ser: Any = None

    def open(self) -> GnssReader:
        try:
            self._ser = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=0.2)
        except (serial.SerialException, OSError, ValueError) as err:
            raise SourceUnavailableError(f"cannot open GNSS port {self.port}: {err}") from err
        return self

    def read(self, seconds: float) -> tuple[Samples, list[tuple[str, int, str]]]:
        """Read lines for ``seconds`` and return what they held."""
        if self._ser is None:
            self.open()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                line = self._ser.readline(MAX_LINE + 2)
                if line:
                    self.parser.feed(line, time.time_ns() // 1000)
        except (serial.SerialException, OSError) as err:
            self.close()
            raise SourceUnavailableError(f"GNSS receiver on {self.port} went away: {err}") from err
        return self.parser.drain()

    def close(self) -> None:
        if self._ser is not None:
            self._ser.close()
            self._ser = None
