"""The local PKI: separate device CA, reserved names, revocation list, renewal, old-CA re-issue."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from carpulse.pki import LocalPKI, _make_ca
from core.errors import ConfigError


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_device_certificates_come_from_the_device_ca_only(tmp_path: Path) -> None:
    pki = LocalPKI(tmp_path)
    cert, _key = pki.device("car-pki-1")
    device_ca, service_ca = _cert(pki.device_ca_cert), _cert(pki.ca_cert)
    assert _cert(cert).issuer == device_ca.subject != service_ca.subject
    assert _cert(pki.server_cert).issuer == service_ca.subject
    bundle = x509.load_pem_x509_certificates(pki.device_trust.read_bytes())
    assert [c.subject for c in bundle] == [service_ca.subject, device_ca.subject]
    assert pki.issued_devices() == ["car-pki-1"]
    assert pki.device("car-pki-1")[0].read_bytes() == cert.read_bytes()  # idempotent


@pytest.mark.parametrize("name", ["carpulse-bridge", "CARPULSE", "carpulse_x", "admin", "a/b", ""])
def test_reserved_and_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="cannot issue"):
        LocalPKI(tmp_path).device(name)


def test_revocation_is_in_the_crl_and_needs_an_explicit_renewal(tmp_path: Path) -> None:
    pki = LocalPKI(tmp_path)
    cert, _ = pki.device("car-pki-2")
    pki.device("car-pki-3")
    serial = pki.revoke("car-pki-2")
    assert serial == _cert(cert).serial_number and pki.revoked_serials() == {serial}
    crl = x509.load_pem_x509_crl(pki.device_crl.read_bytes())
    assert crl.issuer == _cert(pki.device_ca_cert).subject
    ca_key = _cert(pki.device_ca_cert).public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(ca_key)
    assert pki.issued_devices() == ["car-pki-3"]
    with pytest.raises(ConfigError, match="revoked"):
        pki.device("car-pki-2")
    renewed, _ = pki.device("car-pki-2", renew=True)
    assert _cert(renewed).serial_number != serial
    assert pki.issued_devices() == ["car-pki-2", "car-pki-3"]
    pki.revoke("car-pki-3")
    assert pki.revoked_serials() == {serial, _cert(pki.device_cert("car-pki-3")).serial_number}
    with pytest.raises(ConfigError, match="no certificate"):
        pki.revoke("car-pki-unknown")


def test_a_certificate_from_the_old_single_ca_is_reissued(tmp_path: Path) -> None:
    pki = LocalPKI(tmp_path)
    pki.init()
    old = tmp_path / "old"
    old.mkdir()
    _make_ca("carpulse local CA", old / "ca.pem", old / "ca.key")
    stale = LocalPKI(old)
    stale.device_ca_cert.write_bytes((old / "ca.pem").read_bytes())  # sign as the old CA did
    stale.device_ca_key.write_bytes((old / "ca.key").read_bytes())
    stale._issue(
        "car-pki-4", pki.device_cert("car-pki-4"), pki.device_key("car-pki-4"), server=False
    )
    assert _cert(pki.device_cert("car-pki-4")).issuer != _cert(pki.device_ca_cert).subject
    assert pki.issued_devices() == []
    cert, _ = pki.device("car-pki-4")
    assert _cert(cert).issuer == _cert(pki.device_ca_cert).subject
