"""The catalogue of diagnostic trouble codes (SAE J2012): what a code means and how urgent it is.

One place for both halves: the edge agent and the dashboards describe a code (``describe``), the
CRM files it by urgency (``dtc_severity``). Plain data, no I/O.
"""

from __future__ import annotations

import re
from typing import Final

# Generic (SAE J2012 / ISO 15031-6) descriptions of the codes a service advisor meets most.
# Written for this project from the public standard's code list; manufacturer codes get a range text.
DESCRIPTIONS: Final[dict[str, str]] = {
    "P0010": "Intake camshaft position actuator circuit (bank 1)",
    "P0011": "Intake camshaft position timing over-advanced or system performance (bank 1)",
    "P0012": "Intake camshaft position timing over-retarded (bank 1)",
    "P0013": "Exhaust camshaft position actuator circuit (bank 1)",
    "P0014": "Exhaust camshaft position timing over-advanced or system performance (bank 1)",
    "P0016": "Crankshaft position / camshaft position correlation (bank 1 sensor A)",
    "P0017": "Crankshaft position / camshaft position correlation (bank 1 sensor B)",
    "P0030": "HO2S heater control circuit (bank 1 sensor 1)",
    "P0036": "HO2S heater control circuit (bank 1 sensor 2)",
    "P0068": "MAP / MAF - throttle position correlation",
    "P0087": "Fuel rail / system pressure too low",
    "P0088": "Fuel rail / system pressure too high",
    "P0100": "Mass or volume air flow circuit malfunction",
    "P0101": "Mass or volume air flow circuit range/performance",
    "P0102": "Mass or volume air flow circuit low input",
    "P0103": "Mass or volume air flow circuit high input",
    "P0105": "Manifold absolute pressure / barometric pressure circuit malfunction",
    "P0106": "Manifold absolute pressure / barometric pressure circuit range/performance",
    "P0107": "Manifold absolute pressure / barometric pressure circuit low input",
    "P0108": "Manifold absolute pressure / barometric pressure circuit high input",
    "P0110": "Intake air temperature circuit malfunction",
    "P0112": "Intake air temperature circuit low input",
    "P0113": "Intake air temperature circuit high input",
    "P0115": "Engine coolant temperature circuit malfunction",
    "P0116": "Engine coolant temperature circuit range/performance",
    "P0117": "Engine coolant temperature circuit low input",
    "P0118": "Engine coolant temperature circuit high input",
    "P0120": "Throttle / pedal position sensor A circuit malfunction",
    "P0121": "Throttle / pedal position sensor A circuit range/performance",
    "P0122": "Throttle / pedal position sensor A circuit low input",
    "P0123": "Throttle / pedal position sensor A circuit high input",
    "P0125": "Insufficient coolant temperature for closed loop fuel control",
    "P0128": "Coolant thermostat (coolant temperature below thermostat regulating temperature)",
    "P0130": "O2 sensor circuit malfunction (bank 1 sensor 1)",
    "P0131": "O2 sensor circuit low voltage (bank 1 sensor 1)",
    "P0132": "O2 sensor circuit high voltage (bank 1 sensor 1)",
    "P0133": "O2 sensor circuit slow response (bank 1 sensor 1)",
    "P0134": "O2 sensor circuit no activity detected (bank 1 sensor 1)",
    "P0135": "O2 sensor heater circuit malfunction (bank 1 sensor 1)",
    "P0136": "O2 sensor circuit malfunction (bank 1 sensor 2)",
    "P0137": "O2 sensor circuit low voltage (bank 1 sensor 2)",
    "P0138": "O2 sensor circuit high voltage (bank 1 sensor 2)",
    "P0139": "O2 sensor circuit slow response (bank 1 sensor 2)",
    "P0140": "O2 sensor circuit no activity detected (bank 1 sensor 2)",
    "P0141": "O2 sensor heater circuit malfunction (bank 1 sensor 2)",
    "P0143": "O2 sensor circuit low voltage (bank 1 sensor 3)",
    "P0150": "O2 sensor circuit malfunction (bank 2 sensor 1)",
    "P0151": "O2 sensor circuit low voltage (bank 2 sensor 1)",
    "P0155": "O2 sensor heater circuit malfunction (bank 2 sensor 1)",
    "P0156": "O2 sensor circuit malfunction (bank 2 sensor 2)",
    "P0161": "O2 sensor heater circuit malfunction (bank 2 sensor 2)",
    "P0171": "System too lean (bank 1)",
    "P0172": "System too rich (bank 1)",
    "P0174": "System too lean (bank 2)",
    "P0175": "System too rich (bank 2)",
    "P0191": "Fuel rail pressure sensor circuit range/performance",
    "P0196": "Engine oil temperature sensor range/performance",
    "P0200": "Injector circuit malfunction",
    "P0201": "Injector circuit malfunction - cylinder 1",
    "P0202": "Injector circuit malfunction - cylinder 2",
    "P0203": "Injector circuit malfunction - cylinder 3",
    "P0204": "Injector circuit malfunction - cylinder 4",
    "P0217": "Engine overtemperature condition",
    "P0219": "Engine overspeed condition",
    "P0220": "Throttle / pedal position sensor B circuit malfunction",
    "P0221": "Throttle / pedal position sensor B circuit range/performance",
    "P0230": "Fuel pump primary circuit malfunction",
    "P0234": "Turbocharger / supercharger overboost condition",
    "P0299": "Turbocharger / supercharger underboost",
    "P0300": "Random / multiple cylinder misfire detected",
    "P0301": "Cylinder 1 misfire detected",
    "P0302": "Cylinder 2 misfire detected",
    "P0303": "Cylinder 3 misfire detected",
    "P0304": "Cylinder 4 misfire detected",
    "P0305": "Cylinder 5 misfire detected",
    "P0306": "Cylinder 6 misfire detected",
    "P0307": "Cylinder 7 misfire detected",
    "P0308": "Cylinder 8 misfire detected",
    "P0325": "Knock sensor 1 circuit malfunction (bank 1 or single sensor)",
    "P0327": "Knock sensor 1 circuit low input (bank 1 or single sensor)",
    "P0335": "Crankshaft position sensor A circuit malfunction",
    "P0336": "Crankshaft position sensor A circuit range/performance",
    "P0340": "Camshaft position sensor A circuit malfunction (bank 1 or single sensor)",
    "P0341": "Camshaft position sensor A circuit range/performance (bank 1 or single sensor)",
    "P0351": "Ignition coil A primary/secondary circuit malfunction",
    "P0352": "Ignition coil B primary/secondary circuit malfunction",
    "P0353": "Ignition coil C primary/secondary circuit malfunction",
    "P0354": "Ignition coil D primary/secondary circuit malfunction",
    "P0380": "Glow plug / heater circuit A malfunction",
    "P0400": "Exhaust gas recirculation flow malfunction",
    "P0401": "Exhaust gas recirculation flow insufficient detected",
    "P0402": "Exhaust gas recirculation flow excessive detected",
    "P0403": "Exhaust gas recirculation circuit malfunction",
    "P0404": "Exhaust gas recirculation circuit range/performance",
    "P0410": "Secondary air injection system malfunction",
    "P0411": "Secondary air injection system incorrect flow detected",
    "P0420": "Catalyst system efficiency below threshold (bank 1)",
    "P0421": "Warm up catalyst efficiency below threshold (bank 1)",
    "P0430": "Catalyst system efficiency below threshold (bank 2)",
    "P0440": "Evaporative emission control system malfunction",
    "P0441": "Evaporative emission control system incorrect purge flow",
    "P0442": "Evaporative emission control system leak detected (small leak)",
    "P0443": "Evaporative emission control system purge control valve circuit malfunction",
    "P0446": "Evaporative emission control system vent control circuit malfunction",
    "P0449": "Evaporative emission control system vent valve/solenoid circuit malfunction",
    "P0451": "Evaporative emission control system pressure sensor range/performance",
    "P0455": "Evaporative emission control system leak detected (gross leak)",
    "P0456": "Evaporative emission control system leak detected (very small leak)",
    "P0460": "Fuel level sensor circuit malfunction",
    "P0461": "Fuel level sensor circuit range/performance",
    "P0462": "Fuel level sensor circuit low input",
    "P0463": "Fuel level sensor circuit high input",
    "P0480": "Cooling fan 1 control circuit malfunction",
    "P0481": "Cooling fan 2 control circuit malfunction",
    "P0500": "Vehicle speed sensor malfunction",
    "P0501": "Vehicle speed sensor range/performance",
    "P0505": "Idle control system malfunction",
    "P0506": "Idle control system RPM lower than expected",
    "P0507": "Idle control system RPM higher than expected",
    "P0520": "Engine oil pressure sensor/switch circuit malfunction",
    "P0521": "Engine oil pressure sensor/switch range/performance",
    "P0530": "A/C refrigerant pressure sensor circuit malfunction",
    "P0562": "System voltage low",
    "P0563": "System voltage high",
    "P0571": "Cruise control / brake switch A circuit malfunction",
    "P0600": "Serial communication link malfunction",
    "P0601": "Internal control module memory check sum error",
    "P0602": "Control module programming error",
    "P0603": "Internal control module keep alive memory (KAM) error",
    "P0604": "Internal control module random access memory (RAM) error",
    "P0605": "Internal control module read only memory (ROM) error",
    "P0606": "Control module processor fault",
    "P0700": "Transmission control system malfunction",
    "P0705": "Transmission range sensor circuit malfunction (PRNDL input)",
    "P0710": "Transmission fluid temperature sensor circuit malfunction",
    "P0715": "Input/turbine speed sensor circuit malfunction",
    "P0720": "Output speed sensor circuit malfunction",
    "P0730": "Incorrect gear ratio",
    "P0740": "Torque converter clutch circuit malfunction",
    "P0741": "Torque converter clutch circuit performance or stuck off",
    "P0750": "Shift solenoid A malfunction",
    "P0755": "Shift solenoid B malfunction",
    "P2096": "Post catalyst fuel trim system too lean (bank 1)",
    "P2097": "Post catalyst fuel trim system too rich (bank 1)",
    "P2135": "Throttle / pedal position sensor / switch A / B voltage correlation",
    "P2187": "System too lean at idle (bank 1)",
    "P2188": "System too rich at idle (bank 1)",
    "P242F": "Diesel particulate filter restriction - ash accumulation",
    "P2463": "Diesel particulate filter restriction - soot accumulation",
    "C0035": "Left front wheel speed sensor circuit",
    "C0040": "Right front wheel speed sensor circuit",
    "C0045": "Left rear wheel speed sensor circuit",
    "C0050": "Right rear wheel speed sensor circuit",
    "C0110": "Pump motor circuit",
    "C0121": "Valve relay circuit",
    "C0131": "ABS/TCS system pressure circuit",
    "C0265": "EBCM motor relay circuit",
    "B0001": "Driver frontal stage 1 deployment control",
    "B0002": "Driver frontal stage 2 deployment control",
    "B0010": "Passenger frontal stage 1 deployment control",
    "B0020": "Left side airbag deployment control",
    "B0028": "Right side airbag deployment control",
    "B0081": "Passenger seat occupant classification",
    "U0001": "High speed CAN communication bus",
    "U0073": "Control module communication bus A off",
    "U0100": "Lost communication with ECM/PCM A",
    "U0101": "Lost communication with TCM",
    "U0121": "Lost communication with anti-lock brake system (ABS) control module",
    "U0140": "Lost communication with body control module",
    "U0151": "Lost communication with restraints control module",
    "U0155": "Lost communication with instrument panel cluster (IPC) control module",
    "U0401": "Invalid data received from ECM/PCM A",
}

# Group texts for codes not in the table, by letter + first digit + second digit (SAE J2012 layout).
_P_SUBSYSTEM: Final = {
    "0": "fuel and air metering, auxiliary emission controls",
    "1": "fuel and air metering",
    "2": "fuel and air metering (injector circuit)",
    "3": "ignition system or misfire",
    "4": "auxiliary emission controls",
    "5": "vehicle speed, idle control and auxiliary inputs",
    "6": "computer and output circuit",
    "7": "transmission",
    "8": "transmission",
    "9": "transmission",
    "A": "hybrid propulsion",
    "B": "hybrid propulsion",
    "C": "hybrid propulsion",
}
_SYSTEM: Final = {"P": "powertrain", "C": "chassis", "B": "body", "U": "network"}


# SAE J2012 codes whose fault can damage the engine or the driver's safety if driven on:
# misfires, overheating, oil pressure, brakes/ABS, airbags, high-voltage isolation.
HIGH_DTC: Final = re.compile(
    r"^(P030\d|P031[0-2]|P0217|P0218|P052[0-4]|P0A0[ABCDEF]|P1A|C00[2-3]\d|C0[1-2][0-9]{2}|B00\d\d)"
)
MEDIUM_DTC: Final = re.compile(r"^(P0[1-4]\d\d|U0\d\d\d)")


def describe(code: str) -> str:
    """Description of a code: the generic text when known, else what its number range means."""
    text = DESCRIPTIONS.get(code.upper())
    if text:
        return text
    if len(code) != 5 or code[0] not in _SYSTEM:
        return "unknown code"
    letter, digit = code[0], code[1]
    system = _SYSTEM[letter]
    # Second character 1 (and 3 for P/B/C, except P3xxx partly) marks manufacturer-specific codes.
    if digit in ("1", "3") and not (letter == "P" and digit == "3" and code[2] in "4567"):
        return f"manufacturer-specific {system} code"
    if letter == "P":
        return f"generic powertrain code: {_P_SUBSYSTEM.get(code[2], 'unassigned')}"
    return f"generic {system} code"


def dtc_severity(code: str, declared: str | None = None) -> str:
    """``high``, ``medium`` or ``low``: the device's own label when it gives one, else by code."""
    if declared in ("high", "medium", "low"):
        return declared
    if HIGH_DTC.match(code):
        return "high"
    return "medium" if MEDIUM_DTC.match(code) else "low"
