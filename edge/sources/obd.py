"""OBD-II source: mode 01 PIDs polled through an ELM327 (``firmware_bridge.obd``), VSS-named,
plus a read-only DTC poll (modes 01 01, 03, 07, 02) that becomes ``dtc`` events on change."""

from __future__ import annotations

import logging
import time
from collections import Counter

from core.errors import SourceUnavailableError
from core.wire import Samples
from edge.sources.base import Source

log = logging.getLogger(__name__)


class ObdSource(Source):
    """Poll ``pids`` every ``interval_s`` over an ELM327 on ``port`` (serial, pty or socket:// URL).

    ``dtc_interval_s`` (0 = off): poll stored and pending DTCs this often and at every ignition
    on (the first mode 01 round that answers after a quiet one); a change is queued as a ``dtc``
    event (``edge.dtc_watch``). ``freeze_frame``: read mode 02 frame 0 when new codes appear.
    """

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
        dtc_interval_s: float = 300.0,
        freeze_frame: bool = True,
    ) -> None:
        super().__init__(name)
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
        from firmware_bridge.obd.client import ObdClient
        from firmware_bridge.obd.elm327 import Elm327

        self.transport = Elm327(self.port, baudrate=self.baudrate, timeout=self.timeout_s).open()
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
        from edge.dtc_watch import DTC_PRIORITY
        from firmware_bridge.obd.dtc_poll import DtcReadError, poll_dtcs

        self.dtc_counters["polls"] += 1
        last = self.dtc_watch.last
        try:
            snap = poll_dtcs(self.client, freeze_frame=False)
            if self.freeze_frame and snap.stored and (last is None or snap.stored != last.stored):
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
