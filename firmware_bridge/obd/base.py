"""The OBD-II transport contract (ELM327 or raw ISO-TP), read-only unless a write is authorised.

::

    ObdTransport.request(payload)      checks the service, counts, calls
        -> _request_internal(payload)  the plugin: ELM327 over serial, ISO-TP over python-can
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from core.backoff import Backoff
from core.errors import SourceError, WriteRefusedError
from firmware_bridge.obd.responses import ElmResponse

log = logging.getLogger(__name__)

# Services that only read (SAE J1979): current data, freeze frame, DTCs, O2/monitor results,
# pending DTCs, vehicle info, permanent DTCs; and UDS ReadDTCInformation (0x19, ISO 14229-1:
# every sub-function reads). Everything else changes the car and is refused.
READ_SERVICES: Final = frozenset({0x01, 0x02, 0x03, 0x05, 0x06, 0x07, 0x09, 0x0A, 0x19})


class WriteAuthorization(ABC):
    """Permission to send one kind of write, filled in by the edge agent from a signed command.

    The transport asks :meth:`permits` just before sending; an implementation decides on the
    request bytes and the VIN of the car the adapter is plugged into.
    """

    @abstractmethod
    def permits(self, request: bytes, vin: str | None) -> bool:
        """True when ``request`` may be sent to the car with ``vin``."""


@dataclass(slots=True)
class ScopedAuthorization(WriteAuthorization):
    """Allows given services for one VIN until a deadline, a limited number of times.

    This is what the edge agent builds after verifying a signed command; it holds no key itself.
    """

    services: frozenset[int]
    vin: str | None  # None: any car (bench use only)
    expires_at: float  # time.monotonic() deadline
    uses: int = 1
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def permits(self, request: bytes, vin: str | None) -> bool:
        if not request or request[0] not in self.services or self.uses <= 0:
            return False
        if self.clock() > self.expires_at:
            return False
        if self.vin is not None and self.vin != vin:
            return False
        self.uses -= 1
        return True


class ObdTransport(ABC):
    """Sends one OBD-II request and returns every ECU's answer."""

    #: protocol description, e.g. "ISO 15765-4 (CAN 11/500)"
    protocol: str = ""
    #: whether several mode 01 PIDs fit in one request (CAN: up to 6)
    max_pids_per_request: int = 6

    def __init__(self) -> None:
        self.vin: str | None = None  # set by the client once read: authorisations are per car
        self.counters: Counter[str] = Counter()
        self._warned: set[str] = set()

    def request(
        self, payload: bytes, authorization: WriteAuthorization | None = None
    ) -> ElmResponse:
        """Send ``payload`` (service byte first) and collect the answers.

        Raises ``WriteRefusedError`` for any non-read service without a permitting
        authorisation, ``SourceUnavailableError`` when the link is gone.
        """
        if not payload:
            raise ValueError("empty OBD request")
        if payload[0] not in READ_SERVICES and (
            authorization is None or not authorization.permits(bytes(payload), self.vin)
        ):
            self.counters["refused"] += 1
            raise WriteRefusedError(
                f"service 0x{payload[0]:02X} changes the vehicle and is refused without a "
                "signed command (pass a WriteAuthorization that permits it)"
            )
        self.counters["requests"] += 1
        resp = self._request_internal(bytes(payload))
        self.counters[resp.status.value] += 1
        if resp.dropped:
            self.counters["dropped"] += len(resp.dropped)
            self.warn_once("dropped", f"dropped unparseable adapter output: {resp.dropped[0]!r}")
        return resp

    def warn_once(self, key: str, message: str) -> None:
        """Log a kind of bad input once; later ones are only counted."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s (further ones are counted, not logged)", message)

    @abstractmethod
    def _request_internal(self, payload: bytes) -> ElmResponse:
        """Send and collect; the plugin's hook."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the link."""


T = TypeVar("T")


def with_backoff(
    connect: Callable[[], T],
    attempts: int = 8,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``connect`` until it succeeds, doubling the wait after each ``SourceError``.

    The failure is logged once, the recovery once; the last error is raised after ``attempts``.
    """
    backoff = Backoff(first_delay, max_delay)
    for attempt in range(1, attempts + 1):
        try:
            result = connect()
        except SourceError as err:
            if attempt == 1:
                log.warning("OBD link down (%s); retrying with backoff", err)
            if attempt == attempts:
                raise
            sleep(backoff.next())
            continue
        if attempt > 1:
            log.warning("OBD link back after %d attempts", attempt)
        return result
    raise AssertionError("unreachable")
