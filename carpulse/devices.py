"""``carpulse devices enroll``: a car's (or a gate camera's) certificate, broker identity and
registration in the CRM (device -> VIN, or the gate camera) in one idempotent step, and the files
to copy to its Raspberry Pi.

Everything is checked before anything is written: a malformed or reserved device id, a bad VIN
or a device/VIN already paired otherwise is refused with a one-line reason and nothing issued.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core.config import CarpulseSettings
from core.errors import ConfigError

# The names config/examples/edge-pi.toml expects under /etc/carpulse on the Pi.
PI_FILES = {"ca": "ca.pem", "cert": "device.pem", "key": "device.key", "cmd": "cmd-sign.pub"}


@dataclass
class Enrolled:
    """What ``enroll`` did; ``files`` maps each file written to ``--out`` to its place on the Pi."""

    device_id: str
    vin: str | None
    gate: bool
    cert: Path
    key: Path
    ca: Path
    registry: str  # "added", "unchanged", "created vehicle"
    files: dict[Path, str] = field(default_factory=dict)


def _check_vin(vin: str, check_digit: bool) -> str:
    from core.errors import FieldError
    from crm.fields import check_vin

    try:
        return check_vin(vin, check_digit)
    except FieldError as err:
        raise ConfigError(f"--vin {vin!r}: {err}") from err


def _register_in_crm(
    settings: CarpulseSettings,
    device_id: str,
    vin: str | None,
    dealer: str,
    *,
    write: bool,
    db: str | None,
) -> str:
    """Check (``write=False``) or record (``write=True``) ``device_id -> vin`` in the CRM, or the
    gate camera ``device_id`` when ``vin`` is None."""
    from sqlalchemy import select

    from crm.cli_store import open_store as _store
    from crm.cli_store import settings_db_url as _settings_db_url
    from crm.schema import Vehicle
    from crm.tables import GateDevice

    store = _store(db or _settings_db_url(settings))
    try:
        with store.tx() as s:
            other = s.execute(select(Vehicle).where(Vehicle.device_id == device_id)).scalar()
            gate = s.get(GateDevice, device_id)
            if vin is None:
                if other is not None:
                    raise ConfigError(
                        f"device {device_id} is registered to VIN {other.vin}, not a gate camera"
                    )
                if gate is not None:
                    return "unchanged"
                if write:
                    s.add(GateDevice(device_id=device_id, dealer_id=dealer))
                return "added"
            if gate is not None:
                raise ConfigError(f"device {device_id} is enrolled as a gate camera, not a car")
            vehicle = s.get(Vehicle, vin)
            if other is not None and other.vin != vin:
                raise ConfigError(
                    f"device {device_id} is already registered to VIN {other.vin}; "
                    "a device belongs to one vehicle (revoke it, or enroll a new device id)"
                )
            if vehicle is not None and vehicle.device_id not in (None, device_id):
                raise ConfigError(
                    f"VIN {vin} already has device {vehicle.device_id}; revoke it first "
                    f"(carpulse pki revoke {vehicle.device_id})"
                )
            if vehicle is not None and vehicle.device_id == device_id:
                return "unchanged"
            if not write:
                return "pending"
            if vehicle is None:
                s.add(Vehicle(vin=vin, device_id=device_id, dealer_id=dealer))
                return "created vehicle"
            vehicle.device_id = device_id
            return "added"
    finally:
        store.engine.dispose()


def _copy(src: Path, out: Path, name: str, mode: int) -> Path:
    dst = out / name
    tmp = out / f".{name}.tmp"
    shutil.copyfile(src, tmp)
    os.chmod(tmp, mode)
    os.replace(tmp, dst)
    return dst


def enroll(
    settings: CarpulseSettings,
    device_id: str,
    *,
    vin: str | None,
    gate: bool = False,
    dealer: str = "default",
    out: Path | None = None,
    db: str | None = None,
    vin_check_digit: bool = True,
) -> Enrolled:
    """Issue the certificate, add the broker identity, register the device in the CRM."""
    from carpulse.pki import check_issuable_device_id
    from carpulse.stack import Stack

    check_issuable_device_id(device_id)
    if gate and vin:
        raise ConfigError("--gate: a gate camera has no VIN; leave out --vin")
    if not gate and not vin:
        raise ConfigError("--vin is required for a car (or --gate for a dealer gate camera)")
    checked_vin = _check_vin(vin, vin_check_digit) if vin else None
    # refuse a conflict (or an unmigrated CRM) before issuing anything
    _register_in_crm(settings, device_id, checked_vin, dealer, write=False, db=db)
    stack = Stack(settings.stack)
    cert, key = stack.provision_device(device_id)  # certificate + dynamic-security role
    registry = _register_in_crm(settings, device_id, checked_vin, dealer, write=True, db=db)
    done = Enrolled(device_id, checked_vin, gate, cert, key, stack.pki.ca_cert, registry)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        pairs = [(stack.pki.ca_cert, "ca", 0o644), (cert, "cert", 0o644), (key, "key", 0o600)]
        cmd_pub = Path(settings.stack.data_dir) / "pki" / "cmd-sign.pub"
        if cmd_pub.exists():
            pairs.append((cmd_pub, "cmd", 0o644))
        for src, what, mode in pairs:
            name = PI_FILES[what]
            done.files[_copy(src, out, name, mode)] = f"/etc/carpulse/{name}"
    return done
