"""OBD-II over raw CAN (ISO 15765-4, 11-bit ids) with can-isotp on python-can, and an ECU simulator."""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import can
import isotp

from core.errors import SourceUnavailableError
from firmware_bridge.obd.base import ObdTransport
from firmware_bridge.obd.pids import BITMAP_PIDS
from firmware_bridge.obd.responses import ElmResponse, Status

log = logging.getLogger(__name__)

FUNCTIONAL_ID: Final = 0x7DF  # broadcast request id of ISO 15765-4
# Physical request / response ids of the 8 possible emission ECUs: 0x7E0+i -> 0x7E8+i.
ECU_PAIRS: Final = tuple((0x7E0 + i, 0x7E8 + i) for i in range(8))
PAD: Final = 0xAA  # ISO 15765-4 frames are always 8 bytes; the filler value is free

# STmin 0 and no block limit: ECUs send a VIN in 3 frames back to back.
_PARAMS: Final[dict[str, Any]] = {
    "stmin": 0,
    "blocksize": 0,
    "tx_padding": PAD,
    "rx_flowcontrol_timeout": 1000,
    "rx_consecutive_frame_timeout": 1000,
}


def _stack(bus: can.BusABC, notifier: can.Notifier, txid: int, rxid: int) -> Any:
    addr = isotp.Address(isotp.AddressingMode.Normal_11bits, txid=txid, rxid=rxid)
    st = isotp.NotifierBasedCanStack(bus, notifier, address=addr, params=dict(_PARAMS))
    st.start()
    return st


class IsoTpObd(ObdTransport):
    """Functional mode 01/03/07/09 requests on 0x7DF; ISO-TP answers from each listed ECU."""

    protocol = "ISO 15765-4 (CAN 11/500) via can-isotp"

    def __init__(
        self,
        bus: can.BusABC,
        ecus: tuple[tuple[int, int], ...] = ECU_PAIRS[:1],
        timeout: float = 0.2,
    ) -> None:
        super().__init__()
        self.bus = bus
        self.timeout = timeout  # P2 of ISO 15765-4 is 50 ms; leave room for a busy host
        self._notifier = can.Notifier(bus, [], timeout=0.05)
        self._stacks = {f"{rx:03X}": _stack(bus, self._notifier, tx, rx) for tx, rx in ecus}

    def _request_internal(self, payload: bytes) -> ElmResponse:
        if len(payload) > 7:
            raise ValueError("a functional OBD request fits one single frame (<= 7 bytes)")
        for st in self._stacks.values():
            while st.available():  # late answers to an earlier request
                st.recv()
                self.counters["late_answers"] += 1
        data = bytes((len(payload), *payload)).ljust(8, bytes((PAD,)))
        try:
            self.bus.send(
                can.Message(arbitration_id=FUNCTIONAL_ID, data=data, is_extended_id=False)
            )
        except can.CanError as err:
            raise SourceUnavailableError(f"CAN send failed: {err}") from err
        resp = ElmResponse(Status.NO_DATA)
        deadline = time.monotonic() + self.timeout
        waiting = dict(self._stacks)
        while waiting and time.monotonic() < deadline:
            for ecu, st in list(waiting.items()):
                msg = st.recv(block=True, timeout=0.002)
                if msg is not None:
                    resp.messages[ecu] = bytes(msg)
                    del waiting[ecu]
        if resp.messages:
            resp.status = Status.OK
        return resp

    def close(self) -> None:
        for st in self._stacks.values():
            st.stop()
        self._notifier.stop()


class EcuSimulator:
    """One engine ECU on a CAN bus answering OBD-II requests (modes 01, 03, 04, 07, 09) and UDS
    ReadDTCInformation by status mask (19 02).

    ``values`` maps a mode 01 PID to its raw data bytes; support bitmaps are derived from it.
    """

    def __init__(
        self,
        bus: can.BusABC,
        values: dict[int, bytes],
        vin: str = "",
        stored: list[int] | None = None,
        pending: list[int] | None = None,
        txid: int = 0x7E8,
        rxid: int = 0x7E0,
    ) -> None:
        self.bus = bus
        self.values = dict(values)
        self.vin = vin
        self.stored = list(stored or [])  # DTCs as 16-bit numbers (0x0143 = P0143)
        self.pending = list(pending or [])
        self.requests = 0
        self._notifier = can.Notifier(bus, [], timeout=0.05)
        self._stack = _stack(bus, self._notifier, txid, rxid)
        self._notifier.add_listener(self._on_frame)
        self._rxid = rxid

    def _on_frame(self, msg: can.Message) -> None:
        # Physical requests arrive through the ISO-TP stack; functional ones are single frames.
        if msg.arbitration_id != FUNCTIONAL_ID or msg.is_extended_id or not msg.data:
            return
        size = msg.data[0]
        if size >> 4 == 0 and 0 < size <= len(msg.data) - 1:
            answer = self.answer(bytes(msg.data[1 : 1 + size]))
            if answer:
                self._stack.send(answer)

    def _bitmap(self, base: int) -> bytes:
        bits = 0
        for pid in [*self.values, *(b for b in BITMAP_PIDS if any(p > b for p in self.values))]:
            if base < pid <= base + 32:
                bits |= 1 << (32 - (pid - base))
        return bits.to_bytes(4, "big")

    def answer(self, req: bytes) -> bytes | None:
        """The ECU's answer to one request, None when it stays silent."""
        self.requests += 1
        service = req[0]
        if service == 0x01:
            out = bytearray((0x41,))
            for pid in req[1:7]:
                if pid in BITMAP_PIDS:
                    if pid == 0 or any(p > pid for p in self.values):
                        out += bytes((pid,)) + self._bitmap(pid)
                elif pid in self.values:
                    out += bytes((pid,)) + self.values[pid]
            return bytes(out) if len(out) > 1 else None
        if service in (0x03, 0x07):
            codes = self.stored if service == 0x03 else self.pending
            return bytes((service + 0x40, len(codes))) + b"".join(
                c.to_bytes(2, "big") for c in codes
            )
        if service == 0x04:
            self.stored, self.pending = [], []
            return b"\x44"
        if service == 0x19 and req[1:2] == b"\x02" and len(req) >= 3:
            # UDS reportDTCByStatusMask: stored = confirmed + MIL, pending = pending
            records = [(c, 0x88) for c in self.stored] + [(c, 0x04) for c in self.pending]
            out = bytearray(b"\x59\x02\xff")
            for code, status in records:
                if status & req[2]:
                    out += code.to_bytes(2, "big") + b"\x00" + bytes((status,))
            return bytes(out)
        if service == 0x09 and req[1:2] == b"\x02" and self.vin:
            return b"\x49\x02\x01" + self.vin.encode("ascii")
        return bytes((0x7F, service, 0x11))  # service not supported

    def close(self) -> None:
        self._stack.stop()
        self._notifier.stop()
