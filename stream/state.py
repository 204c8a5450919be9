"""Live vehicle state: latest value per signal plus derived state, merged from decoded batches.

The state of one vehicle is a JSON-able dict (the value of the Faust ``vehicle_state`` table and
of the compacted ``vehicle-state`` topic)::

    {"vin", "device", "signals": {path: [ts_us, value]}, "ignition", "moving",
     "location": {"lat", "lon", "ts_us"} | None, "odometer_km", "active_dtcs": [...],
     "health": "ok" | "warn" | "fault", "last_seen_us", "last_anomaly_us", "published_us", "dirty"}

Merging keeps, per signal, the sample with the newest source timestamp (late data never rolls
the state back). Finding each signal's newest finite sample in a batch is one NumPy pass.
Publishing is throttled on source time: at most one update per vehicle per ``min_interval_us``;
a change made in between stays ``dirty`` and goes out with the next batch past the interval.
"""

from __future__ import annotations

import json
from typing import Any, Final

import numpy as np

from core.wire import Samples, TelemetryBatch

SPEED: Final = "Vehicle.Speed"  # km/h
ENGINE_RPM: Final = "Vehicle.Powertrain.CombustionEngine.Speed"
ENGINE_RUNNING: Final = "Vehicle.Powertrain.CombustionEngine.IsRunning"
ODOMETER: Final = "Vehicle.TraveledDistance"  # metres (VSS; firmware_bridge/vss_catalog.csv)
LATITUDE: Final = "Vehicle.CurrentLocation.Latitude"
LONGITUDE: Final = "Vehicle.CurrentLocation.Longitude"
BATTERY_V: Final = "Vehicle.LowVoltageBattery.CurrentVoltage"
DTC_COUNT: Final = "Vehicle.Diagnostics.DTCCount"

MOVING_KMH: Final = 1.0
LOW_BATTERY_V: Final = 11.8  # a resting 12 V lead-acid battery below this is about flat
ANOMALY_WARN_US: Final = 10 * 60 * 1_000_000  # "warn" for ten minutes after an anomaly

State = dict[str, Any]


def new_state(vin: str, device: str) -> State:
    return {
        "vin": vin,
        "device": device,
        "signals": {},
        "ignition": None,
        "moving": None,
        "location": None,
        "odometer_km": None,
        "active_dtcs": [],
        "health": "ok",
        "last_seen_us": None,
        "last_anomaly_us": None,
        "published_us": None,
        "dirty": False,
    }


def latest_per_signal(samples: Samples) -> dict[str, tuple[int, float]]:
    """Newest finite sample of each signal in ``samples`` (ties: the later row wins), in one
    compiled pass over the rows (``stream.state_kernel``; two ``maximum.at`` passes and their
    masks before, the larger part of the state update)."""
    from stream.state_kernel import latest_rows  # numba loads at the first batch

    if not len(samples):
        return {}
    last = latest_rows(samples.sig, samples.ts_us, samples.value, len(samples.names))
    present = np.flatnonzero(last >= 0)
    pick = last[present]
    names = samples.names
    return {
        names[s]: (t, v)
        for s, t, v in zip(
            present.tolist(),
            samples.ts_us[pick].tolist(),
            samples.value[pick].tolist(),
            strict=True,
        )
    }


def _derive(state: State) -> None:
    sig = state["signals"]

    def val(name: str) -> float | None:
        got = sig.get(name)
        return None if got is None else float(got[1])

    rpm, running, speed = val(ENGINE_RPM), val(ENGINE_RUNNING), val(SPEED)
    if running is not None:
        state["ignition"] = running > 0
    elif rpm is not None:
        state["ignition"] = rpm > 0
    if speed is not None:
        state["moving"] = speed > MOVING_KMH
    lat, lon = sig.get(LATITUDE), sig.get(LONGITUDE)
    if lat is not None and lon is not None:
        state["location"] = {"lat": lat[1], "lon": lon[1], "ts_us": max(lat[0], lon[0])}
    if (odo := val(ODOMETER)) is not None:
        state["odometer_km"] = odo / 1000.0
    state["health"] = health(state)


def health(state: State) -> str:
    """``fault``: active DTCs or a flat 12 V battery; ``warn``: a recent anomaly; else ``ok``."""
    dtc_count = state["signals"].get(DTC_COUNT)
    battery = state["signals"].get(BATTERY_V)
    if state["active_dtcs"] or (dtc_count and dtc_count[1] > 0):
        return "fault"
    if battery is not None and battery[1] < LOW_BATTERY_V:
        return "fault"
    last_anomaly, seen = state.get("last_anomaly_us"), state.get("last_seen_us")
    if last_anomaly is not None and seen is not None and seen - last_anomaly < ANOMALY_WARN_US:
        return "warn"
    return "ok"


def apply_batch(state: State, batch: TelemetryBatch) -> bool:
    """Merge a batch into ``state``; returns True if anything visible changed."""
    latest = latest_per_signal(batch.samples)
    sig = state["signals"]
    changed = False
    for name, (ts, value) in latest.items():
        old = sig.get(name)
        if old is None or ts > old[0] or (ts == old[0] and value != old[1]):
            if old is None or old[1] != value:
                changed = True
            sig[name] = [ts, value]
    if latest:
        newest = max(t for t, _ in latest.values())
        if state["last_seen_us"] is None or newest > state["last_seen_us"]:
            state["last_seen_us"] = newest
            changed = True
    if changed:
        _derive(state)
        state["dirty"] = True
    return changed


def note_anomaly(state: State, ts_us: int) -> None:
    if state["last_anomaly_us"] is None or ts_us > state["last_anomaly_us"]:
        state["last_anomaly_us"] = ts_us
        state["health"] = health(state)
        state["dirty"] = True


def set_dtcs(state: State, codes: list[str], ts_us: int) -> None:
    """Replace the active DTC list (a ``dtc`` event carries the full current list)."""
    codes = sorted({str(c) for c in codes})
    if codes != state["active_dtcs"]:
        state["active_dtcs"] = codes
        state["health"] = health(state)
        state["dirty"] = True
    if state["last_seen_us"] is None or ts_us > state["last_seen_us"]:
        state["last_seen_us"] = ts_us


def take_update(state: State, min_interval_us: int) -> bytes | None:
    """The ``vehicle-state`` record to publish now, or None (nothing new, or throttled)."""
    if not state["dirty"] or state["last_seen_us"] is None:
        return None
    published = state["published_us"]
    if published is not None and state["last_seen_us"] - published < min_interval_us:
        return None
    state["published_us"] = state["last_seen_us"]
    state["dirty"] = False
    return dumps(state)


def dumps(state: State) -> bytes:
    return json.dumps(state, separators=(",", ":"), allow_nan=False).encode()


def loads(raw: bytes) -> State:
    return json.loads(raw)  # type: ignore[no-any-return]
