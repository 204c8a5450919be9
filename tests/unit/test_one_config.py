"""One config for every component: the CRM worker and the dashboards resolve their settings from
``config/examples/production-cloud.toml`` (pointed at a temporary folder), not from defaults."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from carpulse.cli import app
from carpulse.local_files import dashboard_local_files
from carpulse.pki import LocalPKI
from core.config import load_settings
from core.errors import ConfigError
from core.signing import generate_keypair
from crm.cli import worker_setup
from dashboards.serve import LocalFiles, config_from_settings


def _stack_files(conf: Path) -> LocalFiles:
    """What ``carpulse dashboard`` offers from the local stack (carpulse.local_files)."""
    return dashboard_local_files(load_settings(conf))


EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "production-cloud.toml"


@pytest.fixture
def prod(tmp_path: Path) -> Path:
    """production-cloud.toml with /run/secrets and /etc/carpulse moved under ``tmp_path``."""
    secrets, etc = tmp_path / "secrets", tmp_path / "etc"
    secrets.mkdir()
    pki = LocalPKI(tmp_path / "pki")
    pki.init()
    etc.mkdir()
    shutil.copy(pki.ca_cert, etc / "kafka-ca.pem")
    shutil.copy(pki.ca_cert, etc / "ca.pem")
    priv, _pub = generate_keypair(tmp_path / "keys")
    shutil.copy(priv, etc / "cmd-sign.key")
    (secrets / "crm-url").write_text(f"sqlite:///{tmp_path / 'prod-crm.sqlite'}\n")
    for name, value in {
        "smtp-password": "smtp-pw",
        "webhook-secret": "hook-secret",
        "mqtt-console-password": "console-pw",
        "mqtt-bridge-password": "bridge-pw",
        "kafka-crm-password": "kafka-crm-pw",
        "kafka-dashboards-password": "kafka-dash-pw",
    }.items():
        (secrets / name).write_text(value + "\n")
    text = EXAMPLE.read_text().replace("/run/secrets/", f"{secrets}/")
    text = text.replace("/etc/carpulse/", f"{etc}/")
    path = tmp_path / "prod.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CARPULSE_CONFIG", "CARPULSE_CRM_URL", "CARPULSE_CRM_WEBHOOK_SECRET"):
        monkeypatch.delenv(var, raising=False)


def test_crm_worker_gets_the_files_values(prod: Path, tmp_path: Path) -> None:
    setup = worker_setup(load_settings(prod))
    assert setup.db_url == f"sqlite:///{tmp_path / 'prod-crm.sqlite'}"
    assert setup.webhook_url == "https://dms.dealer.example/hooks/carpulse"
    assert setup.webhook_secret == "hook-secret"
    assert setup.smtp is not None
    assert (setup.smtp.host, setup.smtp.port, setup.smtp.starttls) == (
        "smtp.example.internal",
        587,
        True,
    )
    assert setup.smtp.username == "carpulse-crm"
    assert setup.smtp.resolved_password() == "smtp-pw"
    assert setup.smtp.sender == "service@dealer.example"
    assert setup.kafka.servers() == ["kafka-1:9092", "kafka-2:9092", "kafka-3:9092"]
    opts = setup.kafka.client_options("crm")
    assert opts["security_protocol"] == "SASL_SSL"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == (
        "carpulse-crm",
        "kafka-crm-pw",
    )
    assert setup.app_id == "carpulse-crm" and setup.interval_s == 60


def test_worker_flags_and_environment_override_the_file(
    prod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARPULSE_SMTP__PORT", "2525")
    monkeypatch.setenv("CARPULSE_WEBHOOKS__SECRET", "from-env")
    setup = worker_setup(load_settings(prod), smtp_host="relay.local", db="sqlite:///x.db")
    assert setup.smtp is not None
    assert (setup.smtp.host, setup.smtp.port) == ("relay.local", 2525)
    assert setup.webhook_secret == "from-env" and setup.db_url == "sqlite:///x.db"


def test_dashboard_gets_the_files_values(prod: Path, tmp_path: Path) -> None:
    cfg = config_from_settings(load_settings(prod))
    assert cfg.crm_url == f"sqlite:///{tmp_path / 'prod-crm.sqlite'}"
    assert cfg.mqtt is not None
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == (
        "mqtt.example.internal",
        8884,
        "carpulse-console",
    )
    assert cfg.mqtt_password == "console-pw"
    assert cfg.signing_key == tmp_path / "etc" / "cmd-sign.key"
    assert cfg.coupon_templates == ["maintenance", "tier-welcome"]
    assert cfg.public_url == "https://crm.dealer.example" and cfg.secure_cookies
    assert cfg.kafka_bootstrap == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert cfg.kafka_options is not None
    assert cfg.kafka_options["sasl_plain_username"] == "carpulse-dashboards"


def test_dashboard_command_listens_where_the_file_says(
    prod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_serve(cfg: Any, host: str, port: int) -> None:
        seen.update(cfg=cfg, host=host, port=port)

    monkeypatch.setattr("dashboards.serve.serve", fake_serve)
    monkeypatch.setenv("CARPULSE_DASHBOARD__PORT", "8443")
    res = CliRunner().invoke(app, ["--config", str(prod), "dashboard", "--coupon-template", "X"])
    assert res.exit_code == 0, res.output
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8443)  # env beats the file's 8000
    assert seen["cfg"].coupon_templates == ["X"]  # the flag replaces the file's list


def test_crm_commands_use_the_config_files_database(prod: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["--config", str(prod), "crm", "migrate"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "prod-crm.sqlite").exists()


def test_a_named_file_that_is_missing_is_an_error_not_a_fallback(
    prod: Path, tmp_path: Path
) -> None:
    (tmp_path / "etc" / "cmd-sign.key").unlink()
    with pytest.raises(ConfigError, match=r"dashboard.signing_key_file .*does not exist"):
        config_from_settings(load_settings(prod))


def test_a_database_password_in_the_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[crm]\nurl = "postgresql://app:hunter2@db/crm"\n')
    with pytest.raises(ConfigError, match=r"crm.url is a secret.*CARPULSE_CRM__URL"):
        load_settings(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text('[crm]\nurl = "postgresql://app@db/crm"\n')
    assert load_settings(ok).crm.url == "postgresql://app@db/crm"


def test_config_show_masks_the_new_secrets(prod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARPULSE_SMTP__PASSWORD", "smtp-env-secret")
    monkeypatch.setenv("CARPULSE_CRM__URL", "postgresql://app:pg-secret@db/crm")
    res = CliRunner().invoke(app, ["--config", str(prod), "config", "show"])
    assert res.exit_code == 0, res.output
    assert "smtp-env-secret" not in res.output and "pg-secret" not in res.output
    assert '"host": "smtp.example.internal"' in res.output


def test_version() -> None:
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("carpulse ")


def test_dashboard_falls_back_to_the_local_stack_only_when_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "local.toml"
    conf.write_text(f'[stack]\ndata_dir = "{tmp_path / "stack"}"\n')
    bare = config_from_settings(load_settings(conf), local=_stack_files(conf))
    assert bare.crm_url == f"sqlite:///{tmp_path / 'stack' / 'crm.sqlite'}"
    assert bare.mqtt is None and bare.signing_key is None  # nothing there: commands disabled
    (tmp_path / "stack" / "secrets").mkdir(parents=True)
    (tmp_path / "stack" / "secrets" / "carpulse-console.password").write_text("stack-pw\n")
    priv, _pub = generate_keypair(tmp_path / "stack" / "pki")
    cfg = config_from_settings(load_settings(conf), local=_stack_files(conf))
    assert cfg.mqtt_password == "stack-pw" and cfg.signing_key == priv
    monkeypatch.setenv("CARPULSE_DASHBOARD__MQTT_PASSWORD", "env-pw")  # settings win
    assert (
        config_from_settings(load_settings(conf), local=_stack_files(conf)).mqtt_password
        == "env-pw"
    )


def test_every_service_reads_log_and_metrics_from_the_file(prod: Path) -> None:
    settings = load_settings(prod)
    assert settings.log.format == "json"
    assert (settings.metrics.bridge_port, settings.metrics.crm_port) == (9471, 9472)
    # the example scrape config scrapes exactly these ports
    scrape = (EXAMPLE.parents[2] / "deploy" / "prometheus" / "prometheus.yml").read_text()
    for port in (settings.metrics.bridge_port, settings.metrics.crm_port, settings.stream.web_port):
        assert f"127.0.0.1:{port}" in scrape
