"""A small local PKI: a service CA, a device CA, the broker's certificate and one per device.

Layout under ``<data_dir>/pki``::

    ca.pem ca.key                 the service CA: signs the broker's certificate; every client
                                  (device or service) trusts it to authenticate the broker
    server.pem server.key         the broker (SAN: localhost, 127.0.0.1)
    device-ca.pem device-ca.key   the device CA: signs device certificates only; the broker's
                                  device listener trusts this CA and no other
    device-crl.pem                revoked device certificates (``carpulse pki revoke``), signed
                                  by the device CA; the device listener enforces it
    devices/<id>.pem <id>.key     one per device; CN = device id = MQTT user name = client id
    device-trust.pem              both CAs, for a device: the service CA authenticates the broker
                                  (the device CA signs no server certificate), the device CA lets
                                  ``carpulse edge doctor`` check who signed the device's own

Device and service identities cannot be confused: service accounts log in with a password on the
service listener, devices with a certificate of the device CA on the device listener, and the PKI
refuses to issue a device certificate for a reserved name (``carpulse-*``, the prefix of every
service account and service client id), so no certificate can ever carry a service's name.
For production, use your own CAs and HSM-held keys; this is for local runs and tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import ConfigError, WireError
from core.topics import check_device_id

VALID_DAYS = 825
CRL_DAYS = 3650  # a local CRL is re-signed on every revocation; OpenSSL refuses an expired one
# Service accounts and service client ids (bridge, console, admin, health check) all start with
# this; a device id never may, so a device certificate can never pass for a service.
RESERVED_PREFIX = "carpulse"
RESERVED_IDS = frozenset({"admin", "root", "localhost", "broker", "mosquitto"})


_HOST_RE = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_issuable_device_id(device_id: str) -> str:
    """``device_id`` if a device certificate may carry it, else ``ConfigError`` saying why."""
    try:
        check_device_id(device_id)
    except WireError as err:
        raise ConfigError(f"cannot issue a device certificate: {err.detail}") from err
    lowered = device_id.lower()
    if lowered.startswith(RESERVED_PREFIX) or lowered in RESERVED_IDS:
        raise ConfigError(
            f"cannot issue a device certificate for {device_id!r}: names starting with "
            f"{RESERVED_PREFIX!r} and {sorted(RESERVED_IDS)} are reserved for services"
        )
    return device_id


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "carpulse local"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _make_ca(cn: str, cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)


class LocalPKI:
    """Creates and finds certificates under one folder; every method is idempotent."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def device_ca_cert(self) -> Path:
        return self.root / "device-ca.pem"

    @property
    def device_ca_key(self) -> Path:
        return self.root / "device-ca.key"

    @property
    def device_crl(self) -> Path:
        return self.root / "device-crl.pem"

    @property
    def device_trust(self) -> Path:
        return self.root / "device-trust.pem"

    def device_cert(self, device_id: str) -> Path:
        return self.root / "devices" / f"{check_device_id(device_id)}.pem"

    def device_key(self, device_id: str) -> Path:
        return self.root / "devices" / f"{check_device_id(device_id)}.key"

    def init(self) -> None:
        """Create the CAs, the CRL and the server certificate if they are missing."""
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            _make_ca("carpulse local CA", self.ca_cert, self.ca_key)
            for stale in (self.server_cert, self.server_key):
                stale.unlink(missing_ok=True)
        if not (self.server_cert.exists() and self.server_key.exists()):
            self._issue("localhost", self.server_cert, self.server_key, server=True)
        if not (self.device_ca_cert.exists() and self.device_ca_key.exists()):
            _make_ca("carpulse device CA", self.device_ca_cert, self.device_ca_key)
            self.device_crl.unlink(missing_ok=True)
        if not self.device_crl.exists():
            self._write_crl(set())
        bundle = self.ca_cert.read_bytes() + self.device_ca_cert.read_bytes()
        if not self.device_trust.exists() or self.device_trust.read_bytes() != bundle:
            self.device_trust.write_bytes(bundle)

    def device(self, device_id: str, *, renew: bool = False) -> tuple[Path, Path]:
        """Return ``(cert, key)`` for a device, issuing them on first use.

        A certificate from before the device CA existed is re-issued. A revoked one is not
        handed out again: ``renew=True`` (``carpulse pki device ID --renew``) issues a new one.
        """
        check_issuable_device_id(device_id)
        self.init()
        cert, key = self.device_cert(device_id), self.device_key(device_id)
        current = self._read_cert(cert) if key.exists() else None
        if current is not None and current.issuer != self._device_ca_subject():
            current = None  # issued by the old single CA: the device listener no longer trusts it
        if current is not None and current.serial_number in self.revoked_serials():
            if not renew:
                raise ConfigError(
                    f"the certificate of {device_id} is revoked; "
                    f"issue a new one with `carpulse pki device {device_id} --renew`"
                )
            current = None
        if current is None or renew:
            self._issue(device_id, cert, key, server=False)
        return cert, key

    def issued_devices(self) -> list[str]:
        """Device ids with a current, unrevoked certificate of the device CA."""
        revoked, subject, out = self.revoked_serials(), self._device_ca_subject(), []
        for pem in sorted((self.root / "devices").glob("*.pem")):
            cert = self._read_cert(pem)
            if cert is not None and cert.issuer == subject and cert.serial_number not in revoked:
                out.append(pem.stem)
        return out

    def revoke(self, device_id: str) -> int:
        """Add the device's certificate to the CRL; returns its serial number."""
        check_device_id(device_id)
        cert = self._read_cert(self.device_cert(device_id))
        if cert is None or cert.issuer != self._device_ca_subject():
            raise ConfigError(f"no certificate of the device CA for {device_id} to revoke")
        serials = self.revoked_serials()
        serials.add(cert.serial_number)
        self._write_crl(serials)
        return int(cert.serial_number)

    def revoked_serials(self) -> set[int]:
        try:
            crl = x509.load_pem_x509_crl(self.device_crl.read_bytes())
        except FileNotFoundError:
            return set()
        except ValueError as err:
            raise ConfigError(f"cannot read the device CRL {self.device_crl}: {err}") from err
        return {r.serial_number for r in crl}

    def _device_ca_subject(self) -> x509.Name:
        cert = self._read_cert(self.device_ca_cert)
        if cert is None:
            raise ConfigError(f"no device CA in {self.root}: run `carpulse pki init`")
        return cert.subject

    @staticmethod
    def _read_cert(path: Path) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return None

    def _write_crl(self, serials: set[int]) -> None:
        ca_cert, ca_key = self._load_ca(self.device_ca_cert, self.device_ca_key)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        for serial in sorted(serials):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - dt.timedelta(seconds=1))
                .build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        tmp = self.device_crl.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, self.device_crl)  # the broker never reads half a CRL

    def _load_ca(
        self, cert_path: Path, key_path: Path
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the CA {cert_path}: {err}") from err
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def broker_cert(self, names: Sequence[str]) -> tuple[Path, Path]:
        """A broker certificate for production host names and IP addresses (``mosquitto``,
        ``mqtt.dealer.example``), signed by the local CA: ``brokers/<first name>.pem``/``.key``.
        Kept when it exists for the same names; the local stack's ``server.pem`` is untouched."""
        if not names:
            raise ConfigError("a broker certificate needs at least one host name")
        for name in names:
            if not (_is_ip(name) or _HOST_RE.fullmatch(name)):
                raise ConfigError(f"{name!r} is neither a host name nor an IP address")
        self.init()
        cert_path = self.root / "brokers" / f"{names[0]}.pem"
        key_path = cert_path.with_suffix(".key")
        if cert_path.exists() and key_path.exists():
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
                str(v) for v in san.get_values_for_type(x509.IPAddress)
            ]
            if sorted(have) == sorted(names):
                return cert_path, key_path
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        self._issue(names[0], cert_path, key_path, server=True, names=names)
        return cert_path, key_path

    def _issue(
        self, cn: str, cert_path: Path, key_path: Path, *, server: bool, names: Sequence[str] = ()
    ) -> None:
        if server:
            ca_cert, ca_key = self._load_ca(self.ca_cert, self.ca_key)
        else:
            ca_cert, ca_key = self._load_ca(self.device_ca_cert, self.device_ca_key)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            alt: list[x509.GeneralName] = [
                x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n)
                for n in names or ("localhost", "127.0.0.1", "::1")
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
