"""OBD-II client over any transport: supported PIDs, batched mode 01 reads, DTCs, VIN, Samples."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.wire import Samples
from firmware_bridge.obd.base import ObdTransport, WriteAuthorization
from firmware_bridge.obd.dtc import Dtc, decode_dtcs
from firmware_bridge.obd.pids import (
    BITMAP_PIDS,
    PIDS,
    decode_bitmap,
    decode_pid,
    split_multi_pid,
)
from firmware_bridge.obd.responses import QUIET, ElmResponse, Status

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Reading:
    """Values of one polling round; empty ``values`` with ``ignition_on`` False is normal."""

    ts_us: int
    values: dict[int, float] = field(default_factory=dict)
    ignition_on: bool = True
    missing: list[int] = field(default_factory=list)  # asked for, not answered

    def samples(self) -> Samples:
        """The values as columnar samples named by VSS path."""
        pids = list(self.values)
        if not pids:
            return Samples.empty()
        return Samples.from_columns(
            [PIDS[p].vss for p in pids],
            np.arange(len(pids)),
            np.full(len(pids), self.ts_us, np.int64),
            [self.values[p] for p in pids],
        )

    def named(self) -> dict[str, float]:
        return {PIDS[p].vss: v for p, v in self.values.items()}


def _answers(resp: ElmResponse, service: int) -> list[tuple[str, bytes]]:
    """Positive answers ``(ecu, body after the service byte)``, engine ECU (lowest id) first."""
    out = []
    for ecu in sorted(resp.messages):
        msg = resp.messages[ecu]
        if msg and msg[0] == service + 0x40:
            out.append((ecu, msg[1:]))
    return out


class ObdClient:
    """Reads a car through an :class:`ObdTransport`; never raises for a car that is off."""

    def __init__(self, transport: ObdTransport, batch: bool = True) -> None:
        self.transport = transport
        self.batch = batch
        self.supported: set[int] = set()
        self.counters: Counter[str] = Counter()
        self._single_only: set[int] = set()  # PIDs an ECU leaves out of multi-PID answers

    # ----- discovery -----------------------------------------------------------------------

    def discover(self) -> list[int]:
        """Supported mode 01 PIDs from the 0x00/0x20/0x40... bitmaps (union over ECUs)."""
        found: set[int] = set()
        for base in BITMAP_PIDS:
            if base and base not in found:
                break
            resp = self.transport.request(bytes((0x01, base)))
            got = False
            for _ecu, body in _answers(resp, 0x01):
                if len(body) >= 5 and body[0] == base:
                    found.update(decode_bitmap(base, body[1:5]))
                    got = True
            if not got:
                break
        self.supported = found
        return sorted(found)

    # ----- mode 01 ---------------------------------------------------------------------------

    def read(self, pids: Sequence[int]) -> Reading:
        """Current values of ``pids`` (known PIDs only), up to 6 per request when allowed."""
        wanted = [p for p in dict.fromkeys(pids) if p in PIDS]
        reading = Reading(time.time_ns() // 1000)
        size = max(1, self.transport.max_pids_per_request) if self.batch else 1
        groups: list[list[int]] = []
        multi = [p for p in wanted if p not in self._single_only]
        groups += [multi[i : i + size] for i in range(0, len(multi), size)]
        groups += [[p] for p in wanted if p in self._single_only]
        quiet = 0
        for group in groups:
            got, resp = self._read_group(group)
            if resp.status in QUIET and not got:
                quiet += 1
            reading.values.update(got)
            left = [p for p in group if p not in got]
            if len(group) > 1 and left and resp.status is Status.OK:
                # Answer without some PIDs: ask them alone, and do so from now on if that works.
                for pid in left:
                    one, _ = self._read_group([pid])
                    if one:
                        self._single_only.add(pid)
                        reading.values.update(one)
            reading.missing += [p for p in group if p not in reading.values]
        reading.ignition_on = not groups or quiet < len(groups)
        self.counters["values"] += len(reading.values)
        return reading

    def _read_group(self, group: list[int]) -> tuple[dict[int, float], ElmResponse]:
        resp = self.transport.request(bytes((0x01, *group)))
        got: dict[int, float] = {}
        for _ecu, body in _answers(resp, 0x01):
            parts, leftover = split_multi_pid(body, group)
            if leftover:
                self.counters["bad_answers"] += 1
                self.transport.warn_once("pid_body", f"mode 01 answer with {leftover} stray bytes")
            for pid, data in parts.items():
                value = decode_pid(pid, data)
                if value is not None:
                    got.setdefault(pid, value)
        return got, resp

    def read_samples(self, pids: Sequence[int]) -> Samples:
        return self.read(pids).samples()

    # ----- DTCs, VIN, clearing ---------------------------------------------------------------

    def dtcs(self, pending: bool = False) -> list[Dtc]:
        """Confirmed (mode 03) or pending (mode 07) trouble codes of every answering ECU."""
        service = 0x07 if pending else 0x03
        resp = self.transport.request(bytes((service,)))
        out: list[Dtc] = []
        for ecu, body in _answers(resp, service):
            out += decode_dtcs(body, ecu, pending)
        return out

    def vin(self) -> str | None:
        """The VIN (mode 09 PID 02), or None when the car does not say."""
        resp = self.transport.request(b"\x09\x02")
        for _ecu, body in _answers(resp, 0x09):
            if body[:1] != b"\x02":
                continue
            text = bytes(b for b in body[1:] if 0x20 < b < 0x7F).decode("ascii")
            if len(text) >= 17:
                self.transport.vin = text[-17:]
                return text[-17:]
        return None

    def clear_dtcs(self, authorization: WriteAuthorization | None = None) -> bool:
        """Mode 04: clear DTCs and the MIL. Refused (WriteRefusedError) unless authorised."""
        resp = self.transport.request(b"\x04", authorization)
        return bool(_answers(resp, 0x04))

    def scan(self, pids: list[int] | None = None) -> dict[str, Any]:
        """Everything ``carpulse obd scan`` prints."""
        supported = self.discover()
        chosen = pids if pids is not None else [p for p in supported if p in PIDS]
        reading = self.read(chosen)
        dtcs = [*self.dtcs(), *self.dtcs(pending=True)] if reading.ignition_on else []
        return {
            "vin": self.vin() if reading.ignition_on else None,
            "protocol": self.transport.protocol,
            "ignition_on": reading.ignition_on,
            "supported_pids": [f"{p:02X}" for p in supported],
            "values": {
                PIDS[p].vss: {"value": round(v, 4), "unit": PIDS[p].unit, "pid": f"{p:02X}"}
                for p, v in reading.values.items()
            },
            "dtcs": [d.as_dict() for d in dtcs],
            "counters": dict(self.transport.counters),
        }
