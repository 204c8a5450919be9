"""OBD-II source: mode 01 PIDs polled through an ELM327 (``firmware_bridge.obd``), VSS-named,
plus a read-only DTC poll (modes 01 01, 03, 07, 02) that becomes ``dtc`` events on change."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from core.errors import SourceUnavailableError
from core.wire import Samples
from edge.sources.base import Source

log = logging.getLogger(__name__)


class ObdSource(Source):
    """Poll ``pids`` every ``interval_s`` over an ELM327 on ``port`` (serial, pty or socket:// URL).

    ``dtc_interval_s`` (0 = off): poll stored and pending DTCs this often and at every ignition
    on (the first mode 01 round that answers after a quiet one); a change is queued as a ``dtc``
    event (``edge.dtc_watch``). ``freeze_frame``: read mode 02 frame 0 when new codes appear.
    ``dtc_protocol = "uds"`` reads them with UDS 19 02 instead of modes 03/07/01 01 (no freeze
    frame). ``can_channel`` (with ``can_interface``) talks ISO 15765-4 straight on a CAN bus
    through can-isotp instead of an ELM327 on ``port``.
    """

    kind = "obd"

    def __init__(
        self,
        name: str,
        *,
        port: str = "",
        pids: list[int] | None = None,
        interval_s: float = 1.0,
        baudrate: int = 38400,
        timeout_s: float = 2.0,
        dtc_interval_s: float = 300.0,
        freeze_frame: bool = True,
        dtc_protocol: str = "obd",
        can_channel: str = "",
        can_interface: str = "socketcan",
    ) -> None:
        super().__init__(name)
        if not port and not can_channel:
            raise ValueError("set port (an ELM327) or can_channel (ISO-TP on a CAN bus)")
        if dtc_protocol not in ("obd", "uds"):
            raise ValueError(f"dtc_protocol must be 'obd' or 'uds', got {dtc_protocol!r}")
        self.dtc_protocol = dtc_protocol
        self.can_channel, self.can_interface = can_channel, can_interface
        self._bus: Any = None  # the python-can bus under an ISO-TP transport
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if dtc_interval_s < 0:
            raise ValueError("dtc_interval_s must be >= 0 (0 = no DTC polling)")
        self.port, self.pids, self.interval_s = port, pids, interval_s
        self.baudrate, self.timeout_s = baudrate, timeout_s
        self.dtc_interval_s, self.freeze_frame = dtc_interval_s, freeze_frame
        self.dtc_counters: Counter[str] = Counter()  # polls, events, errors (bad answers)
        self._next = 0.0
        self._next_dtc = 0.0
        self._ignition_on = False
        from edge.dtc_watch import DtcWatcher

        self.dtc_watch = DtcWatcher()

    def _open_internal(self) -> None:
        from firmware_bridge.obd.base import ObdTransport
        from firmware_bridge.obd.client import ObdClient

        self.transport: ObdTransport
        if self.can_channel:
            import can

            from firmware_bridge.obd.isotp_can import IsoTpObd

            try:
                bus = can.Bus(channel=self.can_channel, interface=self.can_interface)
            except (can.CanError, OSError) as err:
                raise SourceUnavailableError(f"CAN {self.can_channel}: {err}") from err
            self._bus = bus
            self.transport = IsoTpObd(bus)
        else:
            from firmware_bridge.obd.elm327 import Elm327

            self.transport = Elm327(
                self.port, baudrate=self.baudrate, timeout=self.timeout_s
            ).open()
        self.client = ObdClient(self.transport)
        if self.pids is None:
            self.pids = self.client.discover()
        self._ignition_on = False  # a reconnect polls the DTCs again

    def _read_internal(self, timeout: float) -> Samples | None:
        wait = self._next - time.monotonic()
        if wait > 0:
            time.sleep(min(timeout, wait))
            return None
        self._next = time.monotonic() + self.interval_s
        reading = self.client.read(self.pids or [])
        came_on = reading.ignition_on and not self._ignition_on
        self._ignition_on = reading.ignition_on
        due = came_on or time.monotonic() >= self._next_dtc
        if self.dtc_interval_s > 0 and reading.ignition_on and due:
            self._next_dtc = time.monotonic() + self.dtc_interval_s
            self.poll_dtcs()
        return reading.samples()

    def poll_dtcs(self) -> dict[str, object] | None:
        """One DTC poll; a change is queued as a ``dtc`` event and returned. Never raises for a
        bad answer (counted in ``dtc_counters['errors']``); a lost link raises as reads do."""
        from core.errors import DtcReadError
        from edge.dtc_watch import DTC_PRIORITY
        from firmware_bridge.obd.dtc_poll import poll_dtcs

        self.dtc_counters["polls"] += 1
        last = self.dtc_watch.last
        try:
            if self.dtc_protocol == "uds":
                from firmware_bridge.obd.uds import poll_uds_dtcs

                snap = poll_uds_dtcs(self.transport)
            else:
                snap = poll_dtcs(self.client, freeze_frame=False)
            if (
                self.dtc_protocol == "obd"
                and self.freeze_frame
                and snap.stored
                and (last is None or snap.stored != last.stored)
            ):
                snap = poll_dtcs(self.client, freeze_frame=True)
        except SourceUnavailableError:
            raise
        except DtcReadError as err:
            self.dtc_counters["errors"] += 1
            self.transport.warn_once("dtc_read", f"{self!r}: DTC poll without answer: {err}")
            return None
        except Exception as err:  # hostile adapter output must never stop the source
            self.dtc_counters["errors"] += 1
            self.transport.warn_once("dtc_crash", f"{self!r}: DTC poll failed: {err!r}")
            return None
        data = self.dtc_watch.update(snap)
        if data is not None:
            self.dtc_counters["events"] += 1
            self.events.append(("dtc", time.time_ns() // 1000, DTC_PRIORITY, data))
            log.info("%r: DTCs %s (MIL %s)", self, data["codes"], data["mil"])
        return data

    def _close_internal(self) -> None:
        self.transport.close()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.shutdown()
