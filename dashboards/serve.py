"""``carpulse dashboard``: build the app's config from the carpulse settings and serve it with uvicorn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import CarpulseSettings
from core.errors import ConfigError
from dashboards.app import DashboardConfig
from dashboards.maintenance import Horizon


@dataclass(frozen=True)
class LocalFiles:
    """Files of a local stack that the shell offers (``carpulse dashboard``); each is used only
    when the settings leave it unset and it exists."""

    mqtt_password_file: Path | None = None
    signing_key_file: Path | None = None
    folder: Path | None = None  # where the demo keeps its key pair and member messages


def config_from_settings(
    s: CarpulseSettings,
    *,
    local: LocalFiles | None = None,
    crm_url: str | None = None,
    secure_cookies: bool | None = None,
    coupon_templates: list[str] | None = None,
) -> DashboardConfig:
    """The app's config from ``[dashboard]``, ``[crm]``, ``[kafka]`` and ``[mqtt]``; arguments
    given here (the command's flags) override them.

    The CRM URL falls back to the stack's database, the MQTT password file and the
    command-signing key to ``local``'s files, only when the settings leave them unset; a file the
    settings name but that does not exist is a configuration error, never a silent fallback.
    """
    from crm.transports import from_settings as member_transport_from_settings

    d = s.dashboard
    local = local or LocalFiles()
    password_file = d.mqtt_password_file
    if password_file is None:
        offered = local.mqtt_password_file
        password_file = offered if offered and offered.exists() else None
    elif not Path(password_file).exists():
        raise ConfigError(f"dashboard.mqtt_password_file {password_file} does not exist")
    mqtt = s.mqtt.model_copy(
        update={"username": d.mqtt_username, "password": d.mqtt_password,
                "password_file": password_file}
    )  # fmt: skip
    password = mqtt.resolved_password()
    key = d.signing_key_file
    if key is None:
        offered_key = local.signing_key_file
        key = offered_key if offered_key and offered_key.exists() else None
    elif not Path(key).exists():
        raise ConfigError(f"dashboard.signing_key_file {key} does not exist")
    return DashboardConfig(
        crm_url=crm_url or s.crm.resolved_url(s.stack),
        kafka_bootstrap=s.kafka.bootstrap,
        kafka_options=s.kafka.client_options("dashboards"),
        mqtt=mqtt if password else None,
        mqtt_password=password,
        signing_key=key,
        secure_cookies=d.secure_cookies if secure_cookies is None else secure_cookies,
        coupon_templates=list(d.coupon_templates if coupon_templates is None else coupon_templates),
        public_url=d.public_url,
        maintenance=Horizon(d.maintenance_horizon_days, d.maintenance_horizon_km, d.oil_due_pct),
        metrics_allow=list(s.metrics.allow),
        member_key=s.member.resolved_key(),
        member_link_ttl_s=s.member.link_ttl_h * 3600,
        member_session_s=s.member.session_days * 86400,
        member_transport=member_transport_from_settings(s),
    )


def prepare_demo(cfg: DashboardConfig, folder: Path, vehicles: int = 5) -> None:
    """Migrate the CRM, create the demo users, the demo fleet's CRM records and a signing key
    (``folder``: the local stack's, where the demo keeps its files)."""
    from crm.migrate import migrate
    from crm.store import CrmStore
    from dashboards.users import create_demo_users, seed_demo_crm

    store = CrmStore.from_url(cfg.crm_url)
    migrate(store.engine)  # the demo is one command
    create_demo_users(store)
    seed_demo_crm(
        store,
        [(f"CPDEM{i:012d}", f"demo-car-{i}", f"DEMO{i:03d}") for i in range(1, vehicles + 1)],
    )
    if "SERVICE10" not in cfg.coupon_templates:  # the demo's one template
        cfg.coupon_templates.append("SERVICE10")
    if cfg.member_transport is None:  # friends' sign-in links, for the demo's reader
        from crm.transports import RecordingTransport

        cfg.member_transport = RecordingTransport(folder / "member-messages.jsonl")
    if cfg.signing_key is None:  # the demo's key pair, as `carpulse pki command-key` makes it
        from dashboards.commands import generate_signing_key

        cfg.signing_key = generate_signing_key(folder / "pki")


def serve(cfg: DashboardConfig, host: str, port: int) -> None:
    import uvicorn

    from dashboards.app import create_app

    # log_config=None: uvicorn logs through the root logger, in carpulse's format (core.logs)
    uvicorn.run(
        create_app(cfg), host=host, port=port, log_level="info", access_log=False, log_config=None
    )
