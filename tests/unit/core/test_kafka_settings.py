"""[kafka] security settings become aiokafka and Faust options; mistakes are named."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from carpulse.pki import LocalPKI
from core.config import load_settings
from core.errors import ConfigError


def _toml(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(body)
    return p


def test_plaintext_default_has_no_security() -> None:
    k = load_settings(None).kafka
    opts = k.client_options("bridge")
    assert opts == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}
    assert k.principal_name("bridge") == "ANONYMOUS"


def test_principal_per_component_over_sasl_ssl(tmp_path: Path) -> None:
    pki = LocalPKI(tmp_path / "pki")
    pki.init()
    (tmp_path / "admin.pw").write_text("admin-secret\n")
    (tmp_path / "bridge.pw").write_text("bridge-secret\n")
    cfg = _toml(
        tmp_path,
        f"""
[kafka]
bootstrap = "b1:9096, b2:9096"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-256"
ca_file = "{pki.ca_cert}"
username = "admin"
password_file = "{tmp_path / "admin.pw"}"
[kafka.principals.bridge]
username = "carpulse-bridge"
password_file = "{tmp_path / "bridge.pw"}"
""",
    )
    k = load_settings(cfg).kafka
    bridge = k.client_options("bridge")
    assert bridge["bootstrap_servers"] == ["b1:9096", "b2:9096"]
    assert bridge["security_protocol"] == "SASL_SSL"
    assert bridge["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (bridge["sasl_plain_username"], bridge["sasl_plain_password"]) == (
        "carpulse-bridge",
        "bridge-secret",
    )
    assert isinstance(bridge["ssl_context"], ssl.SSLContext)
    assert bridge["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    # a component without its own principal falls back to the default account
    crm = k.client_options("crm")
    assert (crm["sasl_plain_username"], crm["sasl_plain_password"]) == ("admin", "admin-secret")
    assert k.principal_name("bridge") == "User:carpulse-bridge"


def test_faust_gets_the_same_credentials(tmp_path: Path) -> None:
    faust = pytest.importorskip("faust")
    from stream.kafka_options import faust_broker_settings

    (tmp_path / "s.pw").write_text("s3cret")
    cfg = _toml(
        tmp_path,
        f"""
[kafka]
bootstrap = "k:9093"
security_protocol = "SASL_PLAINTEXT"
[kafka.principals.stream]
username = "carpulse-stream"
password_file = "{tmp_path / "s.pw"}"
""",
    )
    out = faust_broker_settings(load_settings(cfg).kafka, "stream")
    assert out["broker"] == ["kafka://k:9093"]
    creds = out["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "carpulse-stream",
        "s3cret",
        "SCRAM-SHA-512",
    )


def test_sasl_without_a_password_is_named(tmp_path: Path) -> None:
    cfg = _toml(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\nusername = "x"\n')
    with pytest.raises(ConfigError, match=r"kafka.principals.bridge or kafka.username"):
        load_settings(cfg).kafka.client_options("bridge")


def test_missing_password_file_is_named(tmp_path: Path) -> None:
    cfg = _toml(
        tmp_path,
        '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nusername = "x"\n'
        f'password_file = "{tmp_path / "nope"}"\n',
    )
    with pytest.raises(ConfigError, match=r"kafka.password_file .*nope"):
        load_settings(cfg).kafka.client_options()


def test_bad_ca_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    cfg = _toml(tmp_path, f'[kafka]\nsecurity_protocol = "SSL"\nca_file = "{bad}"\n')
    with pytest.raises(ConfigError, match="kafka TLS files"):
        load_settings(cfg).kafka.client_options()


def test_password_in_toml_is_refused(tmp_path: Path) -> None:
    cfg = _toml(tmp_path, '[kafka]\npassword = "oops"\n')
    with pytest.raises(ConfigError):
        load_settings(cfg)
