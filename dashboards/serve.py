"""``carpulse dashboard``: build the app's config from the carpulse settings and serve it with uvicorn."""

from __future__ import annotations

from pathlib import Path

from core.config import CarpulseSettings
from dashboards.app import DashboardConfig


def config_from_settings(
    s: CarpulseSettings,
    *,
    crm_url: str | None = None,
    secure_cookies: bool = True,
    coupon_templates: list[str] | None = None,
) -> DashboardConfig:
    """Kafka from ``[kafka]``; MQTT as ``carpulse-console`` on the service listener of ``[mqtt]``;
    the CRM and the command-signing key from the local stack's folder unless given."""
    from carpulse.stack import Stack

    stack = Stack(s.stack)
    mqtt = s.mqtt.model_copy(
        update={
            "username": "carpulse-console",
            "password_file": stack.secret_file("carpulse-console"),
        }
    )
    password = None
    if mqtt.password_file is not None and Path(mqtt.password_file).exists():
        password = mqtt.resolved_password()
    key = stack.root / "pki" / "cmd-sign.key"
    return DashboardConfig(
        crm_url=crm_url or stack.crm_url,
        kafka_bootstrap=s.kafka.bootstrap,
        kafka_options=s.kafka.client_options("dashboards"),
        mqtt=mqtt if password else None,
        mqtt_password=password,
        signing_key=key if key.exists() else None,
        secure_cookies=secure_cookies,
        coupon_templates=list(coupon_templates or []),
    )


def prepare_demo(cfg: DashboardConfig, s: CarpulseSettings, vehicles: int = 5) -> None:
    """Migrate the CRM, create the demo users, the demo fleet's CRM records and a signing key."""
    from carpulse.stack import Stack
    from crm.migrate import upgrade
    from crm.store import CrmStore
    from dashboards.users import create_demo_users, seed_demo_crm

    store = CrmStore.from_url(cfg.crm_url)
    upgrade(store.engine)
    create_demo_users(store)
    seed_demo_crm(
        store,
        [(f"CPDEM{i:012d}", f"demo-car-{i}", f"DEMO{i:03d}") for i in range(1, vehicles + 1)],
    )
    if "SERVICE10" not in cfg.coupon_templates:  # the demo's one template
        cfg.coupon_templates.append("SERVICE10")
    if cfg.signing_key is None:  # the demo's key pair, as `carpulse pki command-key` makes it
        from dashboards.commands import generate_signing_key

        cfg.signing_key = generate_signing_key(Stack(s.stack).root / "pki")


def serve(cfg: DashboardConfig, host: str, port: int) -> None:
    import uvicorn

    from dashboards.app import create_app

    uvicorn.run(create_app(cfg), host=host, port=port, log_level="info", access_log=False)
