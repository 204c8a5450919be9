"""Silent cars: a vehicle that was moving fast and stops reporting raises a call-centre alert.

``SilenceWatch`` keeps, per vehicle of the partitions this worker owns, when its telemetry last
arrived (wall time at the worker, not the device's clock), its last known speed and ignition,
and the device's last ``status`` (``online``/``offline``, the latter usually the broker's last
will). ``due(now)`` is called by a timer and returns the alerts to publish:

* ``silent``: nothing for ``after_s`` seconds from a car whose last speed was above ``min_kmh``
  with the ignition not off. A car that slowed down or parked first (a garage, a queue into a
  tunnel) or reported ignition off is not an alarm; neither is a tunnel shorter than
  ``after_s``. An ``offline`` status (last will) while moving is the classic case: it does not
  shorten the wait (the broker sends the will after 1.5 keep-alives, shorter than many
  tunnels), it is carried in the alert.
* ``silent_end``: the first telemetry of a car with an open alarm closes it.

One alert per silence episode: its id is the vehicle and the arrival time of the last
telemetry before the silence, so a worker restarted mid-episode (which forgets this in-memory
watch) or a replay gives the same id and the CRM files one card. A vehicle whose partition was
revoked is forgotten (``forget_partitions``): its new owner watches it, the old one must not
raise an alarm for a car that now reports elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

SPEED: Final = "Vehicle.Speed"
MAX_WATCHED: Final = 1_000_000  # vehicles per worker; beyond that the oldest are forgotten


@dataclass(slots=True)
class Watched:
    device: str
    partition: int
    seen_us: int  # wall time the last telemetry arrived
    source_us: int | None  # the device's timestamp of its newest sample
    speed_kmh: float | None
    ignition: bool | None
    status: str | None = None  # the device's last status (online / offline)
    status_us: int | None = None  # wall time it arrived
    alarm_id: str | None = None  # open alarm of the current silence episode


def speed_of(state: dict[str, Any]) -> float | None:
    got = (state.get("signals") or {}).get(SPEED)
    try:
        return None if got is None else float(got[1])
    except (TypeError, ValueError, IndexError):
        return None


class SilenceWatch:
    """Per-vehicle last-seen, speed and ignition; alerts for cars silent at speed."""

    def __init__(self, after_s: float, min_kmh: float) -> None:
        self.after_us = int(after_s * 1e6)
        self.min_kmh = min_kmh
        self.cars: dict[str, Watched] = {}
        self.by_device: dict[str, str] = {}
        self.raised = 0
        self.closed = 0

    def seen(self, vin: str, partition: int, now_us: int, state: dict[str, Any]) -> bytes | None:
        """Telemetry of ``vin`` arrived; returns the ``silent_end`` alert if it closes one."""
        device = str(state.get("device") or "")
        ign = state.get("ignition")
        w = self.cars.get(vin)
        if w is None:
            if len(self.cars) >= MAX_WATCHED:
                self.cars.pop(next(iter(self.cars)))
            w = self.cars[vin] = Watched(device, partition, now_us, None, None, None)
        closing = w.alarm_id
        w.device, w.partition, w.seen_us = device, partition, now_us
        w.source_us = state.get("last_seen_us") if type(state.get("last_seen_us")) is int else None
        w.speed_kmh = speed_of(state)
        w.ignition = ign if isinstance(ign, bool) else None
        w.alarm_id = None
        if w.status == "offline":  # data again: the device is back whatever its status said
            w.status, w.status_us = "online", now_us
        if device:
            self.by_device[device] = vin
        if closing is None:
            return None
        self.closed += 1
        return _alert("silent_end", vin, w, now_us, closing)

    def status(self, device: str, state: str, now_us: int) -> None:
        """A device's status message (``online``, ``offline`` from its last will, ...)."""
        vin = self.by_device.get(device)
        w = self.cars.get(vin) if vin else None
        if w is not None:
            w.status, w.status_us = state, now_us

    def forget_partitions(self, partitions: set[int]) -> None:
        for vin in [v for v, w in self.cars.items() if w.partition in partitions]:
            self.by_device.pop(self.cars.pop(vin).device, None)

    def silent(self, w: Watched, now_us: int) -> bool:
        """Is this car silent at speed: quiet for ``after_s``, last seen above ``min_kmh``,
        ignition not reported off?"""
        return (
            now_us - w.seen_us >= self.after_us
            and w.speed_kmh is not None
            and w.speed_kmh > self.min_kmh
            and w.ignition is not False
        )

    def due(self, now_us: int, owned: set[int] | None = None) -> list[tuple[str, bytes]]:
        """The ``silent`` alerts to publish now (key VIN): one per episode. With ``owned``,
        vehicles of other partitions are forgotten (not this worker's any more)."""
        if owned is not None:
            self.forget_partitions({w.partition for w in self.cars.values()} - owned)
        out = []
        for vin, w in self.cars.items():
            if w.alarm_id is not None:
                continue
            if self.silent(w, now_us):
                w.alarm_id = f"{vin}:silent:{w.seen_us}"
                self.raised += 1
                out.append((vin, _alert("silent", vin, w, now_us, w.alarm_id)))
        return out

    def open_alarms(self) -> int:
        return sum(w.alarm_id is not None for w in self.cars.values())


def _alert(kind: str, vin: str, w: Watched, now_us: int, alarm_id: str) -> bytes:
    """An alert record on ``carpulse.alerts`` (the crash alert's shape, without a location: a
    silent car's position follows the vehicle's location policy, see ``stream.agents``)."""
    doc = {
        "kind": kind,
        "vin": vin,
        "device": w.device,
        "ts_us": w.seen_us if kind == "silent" else now_us,
        "received_us": now_us,
        "alarm_id": alarm_id,
        "data": {
            "speed_kmh": w.speed_kmh,
            "silent_s": round((now_us - w.seen_us) / 1e6, 1) if kind == "silent" else None,
            "last_source_us": w.source_us,
            "device_status": w.status,
            "status_us": w.status_us,
        },
        "location": None,
        "severity": "critical" if kind == "silent" else "info",
    }
    return json.dumps(doc).encode()
