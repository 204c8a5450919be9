"""``carpulse edge doctor``: is this gateway ready? Interfaces, permissions, certificates, kernels, broker.

Public API::

    from edge.doctor import run_doctor
    checks = run_doctor(settings, device_id, can=["can0"], serial=["/dev/ttyUSB0"])
    for c in checks:
        print(c.line())          # "ok   certificate dates: valid until 2028-03-01 (824 days)"
    healthy = not any(c.status == "fail" for c in checks)

Every check is a plain function returning :class:`Check` objects and never raises, so one broken
thing (a missing file, an unreachable broker) does not hide the others.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.config import CarpulseSettings
from core.errors import CarpulseError

Status = Literal["ok", "warn", "fail", "skip"]
ARPHRD_CAN = 280  # /sys/class/net/<if>/type of CAN and vcan interfaces
IFF_UP = 0x1
EXPIRY_WARN_DAYS = 30


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status:4} {self.name}: {self.detail}"


def check_can_interface(name: str, sysfs: Path = Path("/sys/class/net")) -> Check:
    """The SocketCAN interface exists, is CAN, and is administratively up."""
    what = f"CAN interface {name}"
    base = sysfs / name
    if not base.exists():
        return Check(
            what, "fail", "missing (see README: ip link set can0 up type can bitrate 500000)"
        )
    try:
        kind = int((base / "type").read_text().strip())
        flags = int((base / "flags").read_text().strip(), 16)
        oper = (base / "operstate").read_text().strip()
    except (OSError, ValueError) as err:
        return Check(what, "fail", f"cannot read {base}: {err}")
    if kind != ARPHRD_CAN:
        return Check(what, "fail", f"not a CAN interface (link type {kind})")
    if not flags & IFF_UP:
        return Check(what, "fail", f"down: sudo ip link set {name} up type can bitrate 500000")
    return Check(what, "ok", f"up (operstate {oper})")


def check_serial_device(path: Path | str) -> Check:
    """The serial adapter exists, is a character device, and this user may read and write it."""
    p = Path(path)
    what = f"serial device {p}"
    try:
        st = p.stat()
    except FileNotFoundError:
        return Check(what, "fail", "missing (adapter unplugged?)")
    except OSError as err:
        return Check(what, "fail", str(err))
    if not stat.S_ISCHR(st.st_mode):
        return Check(what, "fail", "not a character device")
    if not os.access(p, os.R_OK | os.W_OK):
        return Check(what, "fail", "no read/write permission (add the user to group dialout)")
    return Check(what, "ok", "readable and writable")


def check_private_key_file(path: Path, what: str) -> Check:
    """Readable by us, not by others (world-readable fails, group-readable warns)."""
    try:
        mode = path.stat().st_mode
        with open(path, "rb"):
            pass
    except OSError as err:
        return Check(what, "fail", f"{path}: {err.strerror}")
    if mode & 0o004:
        return Check(what, "fail", f"{path} is world-readable (mode {mode & 0o777:o}): chmod 600")
    if mode & 0o040:
        return Check(what, "warn", f"{path} is group-readable (mode {mode & 0o777:o})")
    return Check(what, "ok", f"{path} (mode {mode & 0o777:o})")


def check_certificate(
    cert_path: Path,
    key_path: Path,
    ca_path: Path,
    device_id: str,
    now: dt.datetime | None = None,
) -> list[Check]:
    """Dates valid, CN = device id, signed by the CA, and the key matches the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as err:
        return [Check("certificate", "fail", f"{cert_path}: {err}")]
    out: list[Check] = []
    t = now or dt.datetime.now(dt.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    days = (end - t).days
    if t < start:
        out.append(Check("certificate dates", "fail", f"not valid before {start:%Y-%m-%d %H:%M}Z"))
    elif t > end:
        out.append(Check("certificate dates", "fail", f"expired on {end:%Y-%m-%d}"))
    elif days < EXPIRY_WARN_DAYS:
        out.append(Check("certificate dates", "warn", f"expires in {days} days ({end:%Y-%m-%d})"))
    else:
        out.append(Check("certificate dates", "ok", f"valid until {end:%Y-%m-%d} ({days} days)"))
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    out.append(
        Check("certificate CN", "ok", device_id)
        if cns == [device_id]
        else Check("certificate CN", "fail", f"CN {cns} is not the device id {device_id!r}")
    )
    try:
        # ca_path may be a bundle (the local PKI's device-trust.pem: service CA + device CA).
        cas = x509.load_pem_x509_certificates(ca_path.read_bytes())
        ca = next((c for c in cas if c.subject == cert.issuer), cas[0])
        cert.verify_directly_issued_by(ca)
        out.append(Check("certificate issuer", "ok", f"signed by {ca.subject.rfc4514_string()}"))
    except (OSError, ValueError, TypeError) as err:
        out.append(Check("certificate issuer", "fail", f"not signed by the CA in {ca_path}: {err}"))
    except Exception as err:  # InvalidSignature and friends
        out.append(
            Check("certificate issuer", "fail", f"not signed by {ca_path}: {type(err).__name__}")
        )
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        same = key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)
        out.append(
            Check("certificate key", "ok", "private key matches the certificate")
            if same
            else Check("certificate key", "fail", f"{key_path} does not belong to {cert_path}")
        )
    except (OSError, ValueError, TypeError) as err:
        out.append(Check("certificate key", "fail", f"{key_path}: {err}"))
    return out


def check_command_key(path: Path) -> Check:
    from core.signing import load_public_key

    try:
        load_public_key(path)
    except CarpulseError as err:
        return Check("command key", "fail", str(err))
    return Check("command key", "ok", f"{path} (Ed25519 public key)")


def check_kernels(settings: CarpulseSettings) -> Check:
    """The kernels compiled ahead of time are there and current (else the agent runs numba's JIT)."""
    from edge.aot import AOT_KERNELS, current_build, kernels_dir

    if not settings.edge.aot:
        return Check("kernels", "skip", "[edge] aot = false: numba compiles them at start")
    where = kernels_dir(settings)
    try:
        doc = current_build(where, AOT_KERNELS)
    except ImportError as err:  # a kernel module missing from the install
        return Check("kernels", "fail", str(err))
    if doc is None:
        return Check(
            "kernels",
            "warn",
            f"no current ahead-of-time build in {where}: the agent loads numba (~250 MB instead "
            "of ~110 MB); run `carpulse edge build-kernels`",
        )
    return Check("kernels", "ok", f"built ahead of time in {where} ({doc['digest'][:12]})")


def run_doctor(
    settings: CarpulseSettings,
    device_id: str,
    *,
    can: Iterable[str] = (),
    serial: Iterable[str] = (),
    command_key: Path | None = None,
    broker: bool = True,
) -> list[Check]:
    """Every check, in the order a person would fix things."""
    from edge.publisher import device_mqtt_settings, probe

    checks = [check_can_interface(name) for name in can]
    checks += [check_serial_device(path) for path in serial]
    try:
        conf = device_mqtt_settings(settings, device_id)
    except CarpulseError as err:
        return [*checks, Check("device files", "fail", str(err))]
    checks.append(check_private_key_file(conf.key_file, "device key permissions"))
    for path, what in ((conf.cert_file, "device certificate"), (conf.ca_file, "CA certificate")):
        if not os.access(path, os.R_OK):
            checks.append(Check(what, "fail", f"{path} is missing or not readable"))
    checks += check_certificate(conf.cert_file, conf.key_file, conf.ca_file, device_id)
    if command_key is not None:
        checks.append(check_command_key(command_key))
    checks.append(check_kernels(settings))
    where = f"{conf.host}:{conf.port}"
    if not broker:
        checks.append(Check("broker", "skip", where))
    else:
        problem = probe(conf, device_id)
        checks.append(
            Check("broker", "ok", f"{where} accepted {device_id}")
            if problem is None
            else Check("broker", "fail", problem)
        )
    return checks
