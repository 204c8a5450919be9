"""A simulated car: a drive cycle encoded as real CAN frames with a DBC (demo and tests traffic).

The default DBC is opendbc's Toyota Prius 2010 powertrain file, which ships in the PyPI package
``opendbc``; any DBC with the signals named in ``SIGNALS`` (or none of them) works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cantools
import numpy as np

from core.frames import Frames

# (message, signal) -> VSS path for the default DBC.
PRIUS_VSS = {
    ("SPEED", "SPEED"): "Vehicle.Speed",
    ("POWERTRAIN", "ENGINE_RPM"): "Vehicle.Powertrain.CombustionEngine.Speed",
    ("GAS_PEDAL", "GAS_PEDAL"): "Vehicle.Chassis.Accelerator.PedalPosition",
    ("STEER_ANGLE_SENSOR", "STEER_ANGLE"): "Vehicle.Chassis.SteeringWheel.Angle",
    ("KINEMATICS", "ACCEL_Y"): "Vehicle.Acceleration.Lateral",
}

# Messages the simulator sends, with their rate in Hz.
RATES = {
    "SPEED": 50,
    "POWERTRAIN": 50,
    "GAS_PEDAL": 20,
    "STEER_ANGLE_SENSOR": 50,
    "KINEMATICS": 50,
    "WHEEL_SPEEDS": 50,
}

# A drive cycle: (duration s, target speed km/h). Urban, then extra-urban, then highway.
CYCLE = [
    (20, 0),
    (25, 50),
    (30, 50),
    (15, 0),
    (10, 0),
    (30, 80),
    (40, 80),
    (30, 115),
    (60, 115),
    (30, 0),
]


def default_dbc() -> Path:
    import opendbc

    return Path(opendbc.__file__).parent / "dbc" / "toyota_prius_2010_pt.dbc"


def _cycle_speed(t: float) -> float:
    total = sum(d for d, _ in CYCLE)
    t = t % total
    prev = 0.0
    for duration, target in CYCLE:
        if t < duration:
            # Smooth ramp over the first 40% of each segment.
            ramp = min(1.0, t / (0.4 * duration))
            return prev + (target - prev) * (0.5 - 0.5 * math.cos(math.pi * ramp))
        t -= duration
        prev = float(target)
    return prev


@dataclass
class SimulatedCar:
    """One car following the drive cycle with its own phase and noise."""

    db: cantools.database.can.Database
    seed: int = 0
    phase_s: float = 0.0
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._messages = {m.name: m for m in self.db.messages if m.name in RATES}

    def state(self, t: float) -> dict[str, float]:
        """Physical values at simulation time ``t`` (seconds)."""
        v = max(0.0, _cycle_speed(t + self.phase_s) + self._rng.normal(0, 0.3))
        dv = _cycle_speed(t + self.phase_s + 0.5) - _cycle_speed(t + self.phase_s - 0.5)
        rpm = 800 + v * 28 + max(0.0, dv) * 60
        steer = 25 * math.sin((t + self.phase_s) / 7.0) * (1.0 if v < 60 else 0.2)
        return {
            "SPEED": v,
            "ENGINE_RPM": rpm,
            "GAS_PEDAL": min(1.0, max(0.0, dv / 8.0 + (0.1 if v > 0 else 0))),
            "STEER_ANGLE": steer,
            "ACCEL_Y": v / 3.6 * math.cos((t + self.phase_s) / 7.0) * 0.05,
            "WHEEL_SPEED": v,
        }

    def frames(self, t0_us: int, start_s: float, duration_s: float) -> Frames:
        """Frames for ``[start_s, start_s + duration_s)`` of simulated time, stamped from ``t0_us``."""
        rows: list[tuple[int, int, bytes]] = []
        for name, msg in self._messages.items():
            period = 1.0 / RATES[name]
            k0 = math.ceil(start_s / period)
            k1 = math.ceil((start_s + duration_s) / period)
            for k in range(k0, k1):
                t = k * period
                st = self.state(t)
                values = {}
                for sig in msg.signals:
                    if sig.name in st:
                        values[sig.name] = st[sig.name]
                    elif sig.name.startswith("WHEEL_SPEED"):
                        values[sig.name] = st["WHEEL_SPEED"]
                    else:
                        values[sig.name] = 0
                data = msg.encode(values, strict=False)
                rows.append((t0_us + int((t - start_s) * 1e6), msg.frame_id, data))
        rows.sort(key=lambda r: r[0])
        n = len(rows)
        data_arr = np.zeros((n, 8), dtype=np.uint8)
        for i, (_, _, payload) in enumerate(rows):
            data_arr[i, : len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        return Frames(
            np.fromiter((r[0] for r in rows), np.int64, n),
            np.fromiter((r[1] for r in rows), np.uint32, n),
            np.zeros(n, dtype=bool),
            np.fromiter((len(r[2]) for r in rows), np.uint8, n),
            data_arr,
        )
