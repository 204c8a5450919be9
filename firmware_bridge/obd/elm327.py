"""ELM327 adapters over pyserial: init sequence, prompt handling, adaptive timeout, unplug detection."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import serial

from core.errors import SourceTimeoutError, SourceUnavailableError
from firmware_bridge.obd.base import ObdTransport
from firmware_bridge.obd.responses import (
    CAN_11,
    LEGACY,
    ElmResponse,
    Status,
    clean,
    family_of,
    parse_response,
)

log = logging.getLogger(__name__)

PROTOCOLS: Final = {
    "0": "AUTO",
    "1": "SAE J1850 PWM",
    "2": "SAE J1850 VPW",
    "3": "ISO 9141-2",
    "4": "ISO 14230-4 (KWP 5BAUD)",
    "5": "ISO 14230-4 (KWP FAST)",
    "6": "ISO 15765-4 (CAN 11/500)",
    "7": "ISO 15765-4 (CAN 29/500)",
    "8": "ISO 15765-4 (CAN 11/250)",
    "9": "ISO 15765-4 (CAN 29/250)",
    "A": "SAE J1939 (CAN 29/250)",
    "B": "USER1 CAN",
    "C": "USER2 CAN",
}

# Echo off, no linefeeds, no spaces (fewer bytes on a slow UART), headers on (to tell ECUs
# apart and to reassemble ISO-TP ourselves), automatic protocol, adaptive timing.
INIT_SEQUENCE: Final = ("ATE0", "ATL0", "ATS0", "ATH1", "ATSP0", "ATAT1")
PROMPT: Final = b">"
ST_UNIT_S: Final = 0.004  # ATST counts 4 ms


class Elm327(ObdTransport):
    """One ELM327 (or clone) on a serial port, pseudo-terminal or ``socket://`` URL."""

    def __init__(
        self,
        port: str,
        baudrate: int = 38400,
        timeout: float = 2.0,
        search_timeout: float = 12.0,
        max_response: int = 4096,
        initial_st: int = 0x32,
        serial_factory: Callable[..., Any] = serial.serial_for_url,
    ) -> None:
        super().__init__()
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.search_timeout = search_timeout  # the first request makes the ELM try every protocol
        self.max_response = max_response
        self.st = initial_st
        self._factory = serial_factory
        self._ser: Any = None
        self.family = CAN_11
        self.adapter = ""
        self.ignition_on = False
        self.latencies: deque[float] = deque(maxlen=64)

    # ----- link ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def open(self) -> Elm327:
        """Open the port, reset and configure the adapter, find the car's protocol.

        A car that does not answer (ignition off) is not an error: ``ignition_on`` is False and
        :meth:`probe` can be called again later.
        """
        self.close()
        try:
            self._ser = self._factory(self.port, baudrate=self.baudrate, timeout=self.timeout)
        except (serial.SerialException, OSError, ValueError) as err:
            self._ser = None
            raise SourceUnavailableError(f"cannot open ELM327 port {self.port}: {err}") from err
        try:
            self._ser.reset_input_buffer()
            # No bare CR first: an ELM repeats the last command on an empty line.
            banner = clean(self._exchange("ATZ", 3.0))
            self.adapter = next((ln for ln in banner if ln.startswith("ELM")), " ".join(banner))
            for cmd in (*INIT_SEQUENCE, f"ATST{self.st:02X}"):
                self.at(cmd)
            self.probe()
        except BaseException:
            self.close()
            raise
        return self

    def probe(self) -> bool:
        """Ask for PIDs 01-20 to wake the bus and learn the protocol; True if the car answered."""
        raw = self._exchange("0100", self.search_timeout)
        digit = "".join(clean(self._exchange("ATDPN", self.timeout)))[-1:] or "0"
        self.protocol = PROTOCOLS.get(digit, f"unknown ({digit})")
        self.family = family_of(digit)
        self.max_pids_per_request = 1 if self.family == LEGACY else 6
        resp = parse_response(raw, self.family, "0100")
        self.ignition_on = resp.status is Status.OK
        return self.ignition_on

    def close(self) -> None:
        if self._ser is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._ser.close()
            self._ser = None

    def _fail(self, err: BaseException) -> SourceUnavailableError:
        self.close()
        self.counters["unplugged"] += 1
        return SourceUnavailableError(f"ELM327 on {self.port} went away: {err}")

    def _exchange(self, cmd: str, timeout: float, expect_prompt: bool = True) -> str:
        """Write ``cmd`` + CR and read up to the ``>`` prompt; returns the text before it."""
        ser = self._ser
        if ser is None:
            raise SourceUnavailableError(f"ELM327 on {self.port} is not open")
        try:
            if ser.timeout != timeout:  # pyserial reconfigures the tty on every set: only if needed
                ser.timeout = timeout
            ser.write(cmd.encode("ascii") + b"\r")
            # One overall deadline (pyserial's read_until), capped in size: a babbling adapter
            # must not grow the buffer without bound.
            buf = bytes(ser.read_until(PROMPT, self.max_response + 1))
            if PROMPT not in buf and len(buf) > self.max_response:
                self.counters["oversized"] += 1
                self.warn_once(
                    "oversized", f"ELM327 answer to {cmd!r} over {self.max_response} bytes"
                )
                ser.reset_input_buffer()
                return ""
        except (serial.SerialException, OSError) as err:
            raise self._fail(err) from err
        if PROMPT not in buf:
            if not expect_prompt:
                return buf.decode("ascii", "replace")
            self.counters["timeouts"] += 1
            raise SourceTimeoutError(
                f"ELM327 on {self.port}: no prompt after {cmd!r} in {timeout} s"
            )
        text = buf[: buf.rindex(PROMPT)].decode("ascii", "replace")
        if "\ufffd" in text:
            self.counters["garbage_bytes"] += text.count("\ufffd")
            self.warn_once("garbage", f"non-ASCII bytes from ELM327 after {cmd!r}")
        return text

    def at(self, cmd: str) -> list[str]:
        """Send an AT command; return its lines (without echo)."""
        lines = [
            ln for ln in clean(self._exchange(cmd, self.timeout)) if ln != cmd.replace(" ", "")
        ]
        if lines[-1:] == ["?"]:
            self.counters["at_rejected"] += 1
            self.warn_once(f"at:{cmd}", f"ELM327 rejected {cmd}")
        return lines

    def voltage(self) -> float | None:
        """Battery voltage at the OBD socket (``ATRV``), or None if the answer is odd."""
        lines = self.at("ATRV")
        try:
            return float(lines[0].rstrip("V"))
        except (IndexError, ValueError):
            return None

    # ----- requests ------------------------------------------------------------------------

    def _request_internal(self, payload: bytes) -> ElmResponse:
        text = payload.hex().upper()
        start = time.monotonic()
        raw = self._exchange(text, self.timeout if self.ignition_on else self.search_timeout)
        resp = parse_response(raw, self.family, text)
        if resp.status is Status.OK:
            self.latencies.append(time.monotonic() - start)
            self.ignition_on = True
        return resp

    def tune_timeout(self, margin: float = 3.0, floor: int = 0x08) -> int:
        """Set ``ATST`` to ``margin`` x the slowest recent answer (adaptive timing on top of ATAT1).

        A tight timeout is what makes NO DATA cheap: the ELM waits ATST for an ECU that will not
        answer. Returns the value set.
        """
        if not self.latencies:
            return self.st
        worst = max(self.latencies)
        st = max(floor, min(0xFF, math.ceil(worst * margin / ST_UNIT_S)))
        if st != self.st:
            self.at(f"ATST{st:02X}")
            self.st = st
        return st

    def __enter__(self) -> Elm327:
        return self.open() if not self.is_open else self

    def __exit__(self, *exc: object) -> None:
        self.close()
