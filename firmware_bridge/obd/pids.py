"""SAE J1979 mode 01 PIDs: data length, decoder, unit and the VSS path each value is published as."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# Mode 01 answers are a handful of values per second per car, so one Python call per value is
# fine here; the hot paths (CAN decoding of full buses) are the numba kernels elsewhere.
Decoder = Callable[[bytes], float]

# VSS v6 has no OBD branch (it was dropped after VSS 4). PIDs that have a proper VSS v6 signal use
# it; the others keep the VSS 4.x ``Vehicle.OBD.*`` names so dashboards that know them still work.
# ``EXTENSION_PREFIX`` marks those paths as ours, not the pinned catalog's.
EXTENSION_PREFIX: Final = "Vehicle.OBD."


@dataclass(frozen=True, slots=True)
class Pid:
    """One mode 01 PID."""

    pid: int
    name: str
    length: int  # data bytes after the PID byte
    decode: Decoder
    unit: str
    vss: str


def _u16(d: bytes) -> int:
    return (d[0] << 8) | d[1]


def _pct(d: bytes) -> float:
    return d[0] * 100.0 / 255.0


def _temp(d: bytes) -> float:
    return float(d[0] - 40)


def _trim(d: bytes) -> float:
    return (d[0] - 128) * 100.0 / 128.0


def _byte(d: bytes) -> float:
    return float(d[0])


def _word(d: bytes) -> float:
    return float(_u16(d))


def _cat_temp(d: bytes) -> float:
    return _u16(d) / 10.0 - 40.0


def _odometer_m(d: bytes) -> float:
    # 0x01A6 counts 0.1 km (hm); VSS TraveledDistance is in metres.
    return ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) * 100.0


_ENGINE = "Vehicle.Powertrain.CombustionEngine."
_X = EXTENSION_PREFIX

PIDS: Final[dict[int, Pid]] = {
    p.pid: p
    for p in (
        Pid(
            0x01,
            "DTC_COUNT",
            4,
            lambda d: float(d[0] & 0x7F),
            "count",
            "Vehicle.Diagnostics.DTCCount",
        ),
        Pid(0x04, "ENGINE_LOAD", 1, _pct, "percent", _X + "EngineLoad"),
        Pid(0x05, "COOLANT_TEMP", 1, _temp, "Celsius", _ENGINE + "EngineCoolant.Temperature"),
        Pid(0x06, "SHORT_FUEL_TRIM_1", 1, _trim, "percent", _X + "ShortTermFuelTrim1"),
        Pid(0x07, "LONG_FUEL_TRIM_1", 1, _trim, "percent", _X + "LongTermFuelTrim1"),
        Pid(0x08, "SHORT_FUEL_TRIM_2", 1, _trim, "percent", _X + "ShortTermFuelTrim2"),
        Pid(0x09, "LONG_FUEL_TRIM_2", 1, _trim, "percent", _X + "LongTermFuelTrim2"),
        Pid(0x0A, "FUEL_PRESSURE", 1, lambda d: 3.0 * d[0], "kPa", _X + "FuelPressure"),
        Pid(0x0B, "INTAKE_PRESSURE", 1, _byte, "kPa", _ENGINE + "MAP"),
        Pid(0x0C, "RPM", 2, lambda d: _u16(d) / 4.0, "rpm", _ENGINE + "Speed"),
        Pid(0x0D, "SPEED", 1, _byte, "km/h", "Vehicle.Speed"),
        Pid(
            0x0E, "TIMING_ADVANCE", 1, lambda d: d[0] / 2.0 - 64.0, "degrees", _X + "TimingAdvance"
        ),
        Pid(0x0F, "INTAKE_TEMP", 1, _temp, "Celsius", _X + "IntakeTemp"),
        Pid(0x10, "MAF", 2, lambda d: _u16(d) / 100.0, "g/s", _ENGINE + "MAF"),
        Pid(0x11, "THROTTLE_POS", 1, _pct, "percent", _ENGINE + "TPS"),
        Pid(0x1C, "OBD_COMPLIANCE", 1, _byte, "enum", _X + "OBDStandards"),
        Pid(0x1F, "RUN_TIME", 2, _word, "s", _X + "RunTime"),
        Pid(0x21, "DISTANCE_W_MIL", 2, _word, "km", _X + "DistanceWithMIL"),
        Pid(
            0x22,
            "FUEL_RAIL_PRESSURE_VAC",
            2,
            lambda d: _u16(d) * 0.079,
            "kPa",
            _X + "FuelRailPressureVac",
        ),
        Pid(
            0x23,
            "FUEL_RAIL_PRESSURE_DIRECT",
            2,
            lambda d: _u16(d) * 10.0,
            "kPa",
            _X + "FuelRailPressureDirect",
        ),
        Pid(0x2C, "COMMANDED_EGR", 1, _pct, "percent", _X + "CommandedEGR"),
        Pid(0x2D, "EGR_ERROR", 1, _trim, "percent", _X + "EGRError"),
        Pid(0x2E, "EVAPORATIVE_PURGE", 1, _pct, "percent", _X + "CommandedEVAP"),
        Pid(0x2F, "FUEL_LEVEL", 1, _pct, "percent", "Vehicle.Powertrain.FuelSystem.RelativeLevel"),
        Pid(0x30, "WARMUPS_SINCE_DTC_CLEAR", 1, _byte, "count", _X + "WarmupsSinceDTCClear"),
        Pid(0x31, "DISTANCE_SINCE_DTC_CLEAR", 2, _word, "km", _X + "DistanceSinceDTCClear"),
        Pid(0x33, "BAROMETRIC_PRESSURE", 1, _byte, "kPa", _X + "BarometricPressure"),
        Pid(
            0x3C, "CATALYST_TEMP_B1S1", 2, _cat_temp, "Celsius", _X + "Catalyst.Bank1.Temperature1"
        ),
        Pid(
            0x3D, "CATALYST_TEMP_B2S1", 2, _cat_temp, "Celsius", _X + "Catalyst.Bank2.Temperature1"
        ),
        Pid(
            0x3E, "CATALYST_TEMP_B1S2", 2, _cat_temp, "Celsius", _X + "Catalyst.Bank1.Temperature2"
        ),
        Pid(
            0x3F, "CATALYST_TEMP_B2S2", 2, _cat_temp, "Celsius", _X + "Catalyst.Bank2.Temperature2"
        ),
        Pid(
            0x42,
            "CONTROL_MODULE_VOLTAGE",
            2,
            lambda d: _u16(d) / 1000.0,
            "V",
            _X + "ControlModuleVoltage",
        ),
        Pid(
            0x43,
            "ABSOLUTE_LOAD",
            2,
            lambda d: _u16(d) * 100.0 / 255.0,
            "percent",
            _X + "AbsoluteLoad",
        ),
        Pid(
            0x44,
            "COMMANDED_EQUIV_RATIO",
            2,
            lambda d: _u16(d) * 2.0 / 65536.0,
            "ratio",
            _X + "CommandedEquivalenceRatio",
        ),
        Pid(0x45, "RELATIVE_THROTTLE_POS", 1, _pct, "percent", _X + "RelativeThrottlePosition"),
        Pid(0x46, "AMBIANT_AIR_TEMP", 1, _temp, "Celsius", "Vehicle.Exterior.AirTemperature"),
        Pid(0x47, "THROTTLE_POS_B", 1, _pct, "percent", _X + "ThrottlePositionB"),
        Pid(0x49, "ACCELERATOR_POS_D", 1, _pct, "percent", _X + "AcceleratorPositionD"),
        Pid(0x4A, "ACCELERATOR_POS_E", 1, _pct, "percent", _X + "AcceleratorPositionE"),
        Pid(0x4C, "THROTTLE_ACTUATOR", 1, _pct, "percent", _X + "ThrottleActuator"),
        Pid(0x4D, "RUN_TIME_MIL", 2, _word, "min", _X + "RunTimeMIL"),
        Pid(0x4E, "TIME_SINCE_DTC_CLEARED", 2, _word, "min", _X + "TimeSinceDTCCleared"),
        Pid(0x51, "FUEL_TYPE", 1, _byte, "enum", _X + "FuelType"),
        Pid(0x52, "ETHANOL_PERCENT", 1, _pct, "percent", _X + "EthanolPercent"),
        Pid(0x5A, "RELATIVE_ACCEL_POS", 1, _pct, "percent", _X + "RelativeAcceleratorPosition"),
        Pid(
            0x5B,
            "HYBRID_BATTERY_REMAINING",
            1,
            _pct,
            "percent",
            "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        ),
        Pid(0x5C, "OIL_TEMP", 1, _temp, "Celsius", _ENGINE + "EngineOil.Temperature"),
        Pid(0x5E, "FUEL_RATE", 2, lambda d: _u16(d) / 20.0, "l/h", _X + "FuelRate"),
        Pid(
            0x61,
            "DRIVER_DEMAND_TORQUE",
            1,
            lambda d: d[0] - 125.0,
            "percent",
            _X + "DriverDemandEngineTorque",
        ),
        Pid(0x62, "ACTUAL_TORQUE", 1, lambda d: d[0] - 125.0, "percent", _X + "ActualEngineTorque"),
        Pid(0x63, "REFERENCE_TORQUE", 2, _word, "Nm", _X + "EngineReferenceTorque"),
        Pid(0xA6, "ODOMETER", 4, _odometer_m, "m", "Vehicle.TraveledDistance"),
    )
}

# PIDs 0x00, 0x20, ... 0xE0 answer a 4-byte bitmap of the next 32 PIDs.
BITMAP_PIDS: Final = tuple(range(0x00, 0x100, 0x20))

# What ``obd scan`` and the poller read by default when the car supports them.
DEFAULT_PIDS: Final = (0x0D, 0x0C, 0x05, 0x04, 0x10, 0x2F, 0x42, 0x11, 0x0F, 0x46, 0x1F, 0xA6)


def decode_bitmap(base: int, data: bytes) -> list[int]:
    """PIDs ``base+1 .. base+32`` whose bit is set in a 4-byte support bitmap (MSB first)."""
    if len(data) < 4:
        return []
    bits = int.from_bytes(data[:4], "big")
    return [base + i + 1 for i in range(32) if bits & (1 << (31 - i))]


def decode_pid(pid: int, data: bytes) -> float | None:
    """Value of ``pid`` from its data bytes, or ``None`` when unknown or too short."""
    spec = PIDS.get(pid)
    if spec is None or len(data) < spec.length:
        return None
    return spec.decode(bytes(data[: spec.length]))


def split_multi_pid(payload: bytes, requested: list[int]) -> tuple[dict[int, bytes], int]:
    """Split a mode 01 answer body (after ``0x41``) into ``{pid: data}``.

    ECUs answer multi-PID requests PID by PID in any order, and may leave out PIDs they do not
    support. Returns the parts and the number of bytes that could not be attributed (0 when clean).
    """
    out: dict[int, bytes] = {}
    i = 0
    wanted = set(requested)
    while i < len(payload):
        pid = payload[i]
        if pid == 0x41 and pid not in wanted and i + 1 < len(payload) and payload[i + 1] in wanted:
            i += 1  # a second service byte: two answers glued together (seen on emulators)
            continue
        length = 4 if pid in BITMAP_PIDS else (PIDS[pid].length if pid in PIDS else -1)
        if pid not in wanted or length < 0 or i + 1 + length > len(payload):
            return out, len(payload) - i
        out[pid] = bytes(payload[i + 1 : i + 1 + length])
        i += 1 + length
    return out, 0


def vss_catalog(path: Path) -> set[str]:
    """Signal names of a VSS CSV export (``vspec export csv``)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["Signal"] for row in csv.DictReader(fh)}
