"""``carpulse pki broker-cert``: a broker certificate for production names, signed by the local CA."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from carpulse.pki import LocalPKI
from core.errors import ConfigError


def test_broker_cert_names_and_signer(tmp_path: Path) -> None:
    pki = LocalPKI(tmp_path / "pki")
    cert_path, key_path = pki.broker_cert(["mosquitto", "mqtt.dealer.example", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mosquitto", "mqtt.dealer.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert cert.issuer == ca.subject
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca)
    assert key_path.stat().st_mode & 0o777 == 0o600
    # the same names again: the same certificate; the local stack's server.pem untouched
    local = pki.server_cert.read_bytes()
    assert pki.broker_cert(["mosquitto", "mqtt.dealer.example", "10.0.0.5"])[0] == cert_path
    assert cert_path.read_bytes() == cert.public_bytes(serialization.Encoding.PEM)
    assert pki.server_cert.read_bytes() == local
    # other names: a new certificate
    pki.broker_cert(["mosquitto"])
    again = x509.load_pem_x509_certificate((tmp_path / "pki/brokers/mosquitto.pem").read_bytes())
    assert again.serial_number != cert.serial_number


@pytest.mark.parametrize("bad", ["bad name", "-x.example", "a/b", "x" * 64 + ".example"])
def test_broker_cert_refuses_what_is_not_a_host_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="neither a host name nor an IP address"):
        LocalPKI(tmp_path / "pki").broker_cert(["mosquitto", bad])


def test_broker_cert_command(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[stack]\ndata_dir = "{tmp_path / "data"}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "carpulse", "--config", str(conf), "pki", "broker-cert",
         "mosquitto", "mqtt.dealer.example"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"cert: {tmp_path / 'data/pki/brokers/mosquitto.pem'}" in proc.stdout
