"""The shell fills in certificate paths from the local stack; the edge code never looks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from carpulse.local_files import dashboard_local_files, local_device_mqtt, with_device_certs
from carpulse.pki import LocalPKI
from core.config import CarpulseSettings, StackSettings
from core.errors import ConfigError
from edge.publisher import device_mqtt_settings


def _settings(tmp_path: Path) -> CarpulseSettings:
    return CarpulseSettings(stack=StackSettings(data_dir=tmp_path))


def test_edge_code_needs_the_files_and_never_makes_a_pki(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    pki = LocalPKI(tmp_path / "pki")
    pki.init()  # a stack's PKI is there, but the edge code must not use it
    with pytest.raises(ConfigError, match=r"no certificates for car-1: set \[edge\] ca_file"):
        device_mqtt_settings(s, "car-1")
    assert not pki.device_cert("car-1").exists()  # nothing issued behind the caller's back


def test_the_shell_fills_the_files_from_the_local_pki(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    pki = LocalPKI(tmp_path / "pki")
    pki.init()
    filled = with_device_certs(s, "car-1")
    assert s.edge.cert_file is None  # the caller's settings are left alone
    e = filled.edge
    assert e.ca_file == pki.device_trust and e.cert_file is not None and e.key_file is not None
    assert e.cert_file.exists() and e.key_file.exists() and "car-1" in e.cert_file.name
    conf = local_device_mqtt(s, "car-2")
    assert conf.device_id == "car-2" and "car-2" in conf.cert_file.name
    assert (conf.host, conf.port) == (s.edge.broker_host, s.edge.broker_port)


def test_files_the_settings_name_win_and_no_pki_means_unchanged(tmp_path: Path) -> None:
    s = _settings(tmp_path / "none")
    assert with_device_certs(s, "car-1") is s  # no CA: the edge code says what to set
    named = s.model_copy(deep=True)
    named.edge.ca_file = tmp_path / "ca.pem"
    named.edge.cert_file = tmp_path / "c.pem"
    named.edge.key_file = tmp_path / "c.key"
    LocalPKI(tmp_path / "none" / "pki").init()
    assert with_device_certs(named, "car-1") is named
    assert device_mqtt_settings(named, "car-1").cert_file == tmp_path / "c.pem"


def test_dashboard_gets_the_stacks_files(tmp_path: Path) -> None:
    local = dashboard_local_files(_settings(tmp_path))
    assert local.folder == tmp_path.absolute()
    assert local.mqtt_password_file == tmp_path.absolute() / "secrets" / "carpulse-console.password"
    assert local.signing_key_file == tmp_path.absolute() / "pki" / "cmd-sign.key"
