"""A small local PKI: a CA, the broker's server certificate and one client certificate per device.

Layout under ``<data_dir>/pki``::

    ca.pem ca.key                 the local certificate authority (key 0600)
    server.pem server.key         the broker (SAN: localhost, 127.0.0.1)
    devices/<id>.pem <id>.key     one per device; CN = device id = MQTT client id

For production, use your own CA and an HSM-held key; this is for local runs and tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import ConfigError
from core.topics import check_device_id

VALID_DAYS = 825


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

    def device_cert(self, device_id: str) -> Path:
        return self.root / "devices" / f"{check_device_id(device_id)}.pem"

    def device_key(self, device_id: str) -> Path:
        return self.root / "devices" / f"{check_device_id(device_id)}.key"

    def init(self) -> None:
        """Create the CA and the server certificate if they are missing."""
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            now = dt.datetime.now(dt.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(_name("carpulse local CA"))
                .issuer_name(_name("carpulse local CA"))
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
            _write_key(self.ca_key, key)
            _write_cert(self.ca_cert, cert)
            for stale in (self.server_cert, self.server_key):
                stale.unlink(missing_ok=True)
        if not (self.server_cert.exists() and self.server_key.exists()):
            self._issue("localhost", self.server_cert, self.server_key, server=True)

    def device(self, device_id: str) -> tuple[Path, Path]:
        """Return ``(cert, key)`` for a device, issuing them on first use."""
        cert, key = self.device_cert(device_id), self.device_key(device_id)
        if not (cert.exists() and key.exists()):
            self.init()
            self._issue(device_id, cert, key, server=False)
        return cert, key

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
            key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the local CA in {self.root}: {err}") from err
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def _issue(self, cn: str, cert_path: Path, key_path: Path, *, server: bool) -> None:
        ca_cert, ca_key = self._load_ca()
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
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
