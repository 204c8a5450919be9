"""Device id -> VIN registry, loaded once at worker start from a JSON/CSV file or an HTTP(S) URL.

The stream must not import the CRM (SQLAlchemy) to learn which vehicle a gateway sits in, so the
CRM (or an operator) exports the mapping: ``{"device-id": "VIN", ...}`` as JSON, or a CSV with
the columns ``device_id,vin``. ``StreamSettings.registry`` names the file or URL. Without one the
worker runs in open mode (development, demos): every valid device id is its own vehicle id.
With one, telemetry from a device not in it is dead-lettered with reason ``unknown_device``.

The same file names the dealer gate cameras, the only devices whose ``gate.plate``/``gate.face``
events count (a car that publishes one is refused with ``not_a_gate``, by the stream and by the
CRM worker): a JSON list item ``{"device_id": "gate-1", "role": "gate"}`` (no VIN) or a CSV row
with ``role`` = ``gate`` in an optional ``role`` column. ``[stream] gate_devices`` adds gates by
configuration. Gates are never implied, not even in open mode.

The list form may carry each vehicle's last workshop service (``carpulse registry export``
writes it from the CRM's service records): ``{"device_id": .., "vin": .., "last_service":
{"date": "2025-05-10", "odometer_km": 30110.5}}``. The service-due model then starts the
vehicle's interval there instead of at the first odometer reading it sees.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from core.errors import ConfigError
from core.topics import DEVICE_ID_RE

# ISO 3779 VINs are 17 characters without I, O and Q; fleets also use internal ids, so only the
# character set is enforced (ids become InfluxDB tags and Kafka keys).
VEHICLE_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


@dataclass
class DeviceRegistry:
    """Which vehicle each device is installed in; ``open_mode`` accepts every device as itself."""

    vins: dict[str, str] = field(default_factory=dict)
    open_mode: bool = False
    source: str = ""
    # vin -> (UTC day number, odometer km) of its last service, from the list form
    last_service: dict[str, tuple[float, float]] = field(default_factory=dict)
    gates: frozenset[str] = frozenset()

    def is_gate(self, device_id: str) -> bool:
        """``device_id`` is a registered gate camera (may publish ``gate.*`` events)."""
        return device_id in self.gates

    def vin(self, device_id: str) -> str | None:
        """The vehicle of ``device_id``, or None when the device is unknown."""
        found = self.vins.get(device_id)
        if found is None and self.open_mode:
            return device_id
        return found

    def __len__(self) -> int:
        return len(self.vins)


def parse_registry(text: str, where: str) -> dict[str, str]:
    """Parse JSON (``{device: vin}`` or ``[{"device_id":..,"vin":..}]``) or CSV with a header."""
    return parse_entries(text, where)[0]


def parse_entries(text: str, where: str) -> tuple[dict[str, str], frozenset[str]]:
    """``(device -> VIN, gate devices)`` of a registry file (see the module docstring)."""
    rows: list[tuple[str, str, str]] = []  # device, vin, location for errors
    gates: set[str] = set()
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"registry {where}: not valid JSON: {err}") from err
        if isinstance(doc, dict):
            rows = [(k, v, f"key {k!r}") for k, v in doc.items()]
        elif isinstance(doc, list):
            for i, item in enumerate(doc):
                if not isinstance(item, dict):
                    raise ConfigError(f"registry {where}: item {i} is not an object")
                if item.get("role") == "gate":
                    gates.add(_gate_id(item.get("device_id"), where, f"item {i}"))
                    continue
                rows.append((item.get("device_id"), item.get("vin"), f"item {i}"))  # type: ignore[arg-type]
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"device_id", "vin"} <= set(reader.fieldnames):
            raise ConfigError(f"registry {where}: CSV needs a header with device_id and vin")
        for r in reader:
            if not any(r.values()):
                continue
            if (r.get("role") or "").strip() == "gate":
                gates.add(_gate_id(r["device_id"], where, f"line {reader.line_num}"))
            else:
                rows.append((r["device_id"], r["vin"], f"line {reader.line_num}"))
    out: dict[str, str] = {}
    for device, vin, loc in rows:
        if not isinstance(device, str) or not DEVICE_ID_RE.match(device):
            raise ConfigError(f"registry {where}, {loc}: bad device_id {device!r}")
        if not isinstance(vin, str) or not VEHICLE_ID_RE.match(vin):
            raise ConfigError(f"registry {where}, {loc}: bad vin {vin!r} for {device!r}")
        if out.get(device, vin) != vin:
            raise ConfigError(f"registry {where}, {loc}: {device!r} is mapped twice")
        out[device] = vin
    if both := gates & set(out):
        raise ConfigError(f"registry {where}: {sorted(both)[0]!r} is both a gate and a vehicle")
    return out, frozenset(gates)


def parse_last_service(text: str, where: str) -> dict[str, tuple[float, float]]:
    """``vin -> (UTC day number, km)`` from the list form's ``last_service`` objects."""
    if not text.lstrip().startswith("["):
        return {}
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"registry {where}: not valid JSON: {err}") from err
    out: dict[str, tuple[float, float]] = {}
    for i, item in enumerate(doc):
        last = item.get("last_service") if isinstance(item, dict) else None
        if last is None:
            continue
        try:
            vin = str(item["vin"])
            day = dt.date.fromisoformat(last["date"])
            km = float(last["odometer_km"])
            if not 0 <= km < 10_000_000:
                raise ValueError(f"odometer_km {km} out of range")
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"registry {where}, item {i}: bad last_service: {err}") from err
        out[vin] = (float((day - dt.date(1970, 1, 1)).days), km)
    return out


def _gate_id(device: object, where: str, loc: str) -> str:
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        raise ConfigError(f"registry {where}, {loc}: bad gate device_id {device!r}")
    return device


def load_registry(
    source: str | None, timeout_s: float = 10.0, gates: Iterable[str] = ()
) -> DeviceRegistry:
    """Load the registry from a path or an http(s) URL; ``None``/``""`` gives open mode.

    ``gates`` (``[stream] gate_devices``) are gate cameras in addition to the file's."""
    extra = frozenset(_gate_id(g, "[stream] gate_devices", f"entry {g!r}") for g in gates)
    if not source:
        return DeviceRegistry(open_mode=True, source="open", gates=extra)
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=timeout_s) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"registry {source}: cannot fetch: {err}") from err
    else:
        try:
            text = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"registry {source}: cannot read: {err}") from err
    vins, file_gates = parse_entries(text, source)
    return DeviceRegistry(
        vins,
        open_mode=False,
        source=source,
        gates=file_gates | extra,
        last_service=parse_last_service(text, source),
    )
