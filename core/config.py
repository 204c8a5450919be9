"""Typed settings, one model per component: defaults < TOML file < ``CARPULSE_*`` environment.

The TOML file is ``--config FILE`` or ``$CARPULSE_CONFIG``; sections are named after the
components (``[mqtt]``, ``[kafka]``, ``[influx]``, ``[stack]``, ``[edge]``, ``[stream]``,
``[bridge]``, ``[crm]``, ``[smtp]``, ``[webhooks]``, ``[dashboard]``, ``[member]``). Every command reads the same
file: ``carpulse --config prod.toml crm worker`` and ``carpulse --config prod.toml dashboard``
agree.
Environment variables use ``__`` between section and key: ``CARPULSE_INFLUX__URL``.

Secrets (passwords, tokens) come only from the environment or from files named by a
``*_file`` setting; a secret written into the TOML file is refused with a clear error.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import ConfigError

DEFAULT_DATA_DIR = Path(".carpulse")


def _secret(description: str) -> Any:
    return Field(default=None, description=description, json_schema_extra={"secret": True})


class StackSettings(BaseModel):
    """The local stack started by ``carpulse stack up`` (development and tests only)."""

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where configs, PKI, logs and data live.")
    host: str = Field("127.0.0.1", description="Loopback address every service binds to.")
    mqtt_device_port: int = Field(
        8883, description="Mosquitto TLS listener for devices (client certs)."
    )
    mqtt_service_port: int = Field(
        8884, description="Mosquitto TLS listener for services (passwords)."
    )
    kafka_port: int = Field(
        9092,
        description="Apache Kafka client port (SASL_SSL) of the first broker; broker i (from 0) "
        "uses kafka_port + 3*i for clients, +1 between brokers, +2 for its controller.",
    )
    kafka_brokers: int = Field(
        1, ge=1, le=9, description="Brokers of the local Kafka (1; 3 for a replicated cluster)."
    )
    kafka_heap_mb: int = Field(512, ge=128, description="Java heap of each local Kafka broker.")
    java_bin: str = Field("java", description="Java 17+ executable for Kafka.")
    influx_port: int = Field(8086, description="InfluxDB 1.x HTTP API port.")
    influx_rpc_port: int = Field(8088, description="InfluxDB 1.x backup/restore RPC port.")
    mosquitto_bin: str = Field(
        "mosquitto", description="Mosquitto executable (Debian: apt-get install mosquitto)."
    )
    influxd_bin: str = Field(
        "influxd", description="InfluxDB 1.x executable (Debian: apt-get install influxdb)."
    )
    start_timeout_s: float = Field(
        90.0, description="How long each service may take to become healthy."
    )


class MqttSettings(BaseModel):
    """MQTT connection used by services (bridge, dashboards) and by edge agents."""

    host: str = Field(
        "127.0.0.1", description="Broker host name; must match the server certificate."
    )
    port: int = Field(8884, description="Broker TLS port (8883 devices with certs, 8884 services).")
    ca_file: Path | None = Field(
        None, description="CA certificate that signed the broker's certificate."
    )
    cert_file: Path | None = Field(
        None, description="Client certificate (devices; CN = device id)."
    )
    key_file: Path | None = Field(None, description="Client private key.")
    username: str | None = Field(None, description="Service user name (password listener).")
    password: SecretStr | None = _secret("Service password (environment only).")
    password_file: Path | None = Field(None, description="File holding the service password.")
    keepalive_s: int = Field(30, description="MQTT keepalive interval.")
    qos: Literal[0, 1] = Field(1, description="QoS for telemetry and events.")
    share_group: str = Field(
        "",
        description="Shared-subscription group of the bridges ('' = a plain persistent "
        "subscription: every bridge gets every message, the stream drops the copies). Mosquitto "
        "2.0 does not restore shared subscriptions after a restart, so with a group, what cars "
        "publish before the bridges resubscribe is lost; use a group only to split a load one "
        "bridge cannot carry.",
    )

    def resolved_password(self) -> str | None:
        """The password from the environment, or read from ``password_file``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as err:
                raise ConfigError(
                    f"mqtt.password_file {self.password_file}: {err.strerror}"
                ) from err
        return None


class KafkaPrincipal(BaseModel):
    """The Kafka account of one component (``[kafka.principals.<component>]``)."""

    username: str = Field(description="SASL user name of this component.")
    password_file: Path = Field(description="File holding this component's SASL password.")


class KafkaSettings(BaseModel):
    """Kafka: Apache Kafka (the local stack runs it in KRaft mode) or any managed Kafka.

    Security: ``security_protocol`` PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; with SASL the
    ``sasl_mechanism`` (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN) and a user name with its
    password (environment ``CARPULSE_KAFKA__PASSWORD`` or ``password_file``). Each component
    may log in as its own principal: ``[kafka.principals.bridge]`` (also ``stream``, ``crm``,
    ``dashboards``) with ``username`` and ``password_file``; a component without one uses
    the top-level account.
    """

    bootstrap: str = Field("127.0.0.1:9092", description="Comma-separated bootstrap servers.")
    partitions: int = Field(4, description="Partitions for topics carpulse creates.")
    replication: int = Field(
        1, description="Replication factor for topics carpulse creates (3 in production)."
    )
    min_insync_replicas: int = Field(
        1, description="min.insync.replicas for topics carpulse creates (2 with replication 3)."
    )
    acks: Literal["all", "1", "0"] = Field(
        "all", description="Producer acks; keep 'all' in production."
    )
    linger_ms: int = Field(
        100,
        ge=0,
        le=10_000,
        description="The bridge's window: the telemetry of the MQTT messages that come within it "
        "goes to Kafka as one batch per partition in one produce request (less CPU in the bridge "
        "and the brokers: 25 -> 100 ms cut the bridge's by a third); adds at most this latency. "
        "Events, status and command acks, or 50 waiting messages, end the window at once.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers."
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (with SASL_* protocols)."
    )
    ca_file: Path | None = Field(
        None,
        description="CA that signed the brokers' certificates (SSL, SASL_SSL; default: system CAs).",
    )
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Client key for mutual TLS.")
    username: str | None = Field(None, description="SASL user name (default account).")
    password: SecretStr | None = _secret("SASL password of the default account (environment only).")
    password_file: Path | None = Field(None, description="File holding the default SASL password.")
    principals: dict[str, KafkaPrincipal] = Field(
        default_factory=dict,
        description="Per-component accounts: bridge, stream, crm, dashboards.",
    )

    def servers(self) -> list[str]:
        """The bootstrap servers as a list."""
        return [b.strip() for b in self.bootstrap.split(",") if b.strip()]

    def account(self, component: str | None = None) -> tuple[str | None, str | None]:
        """(user name, password) of ``component``'s principal, else of the default account."""
        if component is not None and component in self.principals:
            p = self.principals[component]
            return p.username, _read_secret(p.password_file, f"kafka.principals.{component}")
        if self.password is not None:
            return self.username, self.password.get_secret_value()
        if self.password_file is not None:
            return self.username, _read_secret(self.password_file, "kafka.password_file")
        return self.username, None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL (server verified against ``ca_file``)."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
            if self.cert_file is not None:
                ctx.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None
                )
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"kafka TLS files ({self.ca_file}, {self.cert_file}): {err}") from err
        return ctx

    def client_options(self, component: str | None = None) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.servers(),
            "security_protocol": self.security_protocol,
        }
        ctx = self.ssl_context()
        if ctx is not None:
            opts["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL"):
            user, password = self.account(component)
            if not user or password is None:
                who = f"kafka.principals.{component} or " if component else ""
                raise ConfigError(
                    f"kafka.security_protocol={self.security_protocol} needs a user name and "
                    f"password: set {who}kafka.username with kafka.password_file "
                    "(or CARPULSE_KAFKA__PASSWORD)"
                )
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=user,
                sasl_plain_password=password,
            )
        return opts

    def principal_name(self, component: str | None = None) -> str:
        """Who the brokers see, for log lines: ``User:name`` or ``ANONYMOUS``."""
        user = self.account(component)[0] if self.security_protocol.startswith("SASL") else None
        return f"User:{user}" if user else "ANONYMOUS"


def _read_secret(path: Path, setting: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"{setting} {path}: {err.strerror}") from err


RETENTION_FAMILIES = ("telemetry", "trips", "daily")
_DURATION_UNITS = {"h": 3600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}
_DURATION = re.compile(r"\s*(\d{1,6})\s*([hdwy])\s*")


def retention_seconds(value: str) -> int | None:
    """Seconds of a retention such as ``90d``, ``26w``, ``2y``, ``720h``; ``None`` for ``inf``.

    At least one hour (InfluxDB 1.x's shortest retention policy); ``y`` is 365 days.
    """
    text = value.strip().lower()
    if text in ("inf", "infinite"):
        return None
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{value!r} is not a retention: a whole number with h, d, w or y (90d, 2y) or 'inf'"
        )
    seconds = int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 3600:
        raise ValueError(f"{value!r}: a retention is at least 1h")
    return seconds


class RetentionSettings(BaseModel):
    """How long each measurement family is kept (``[influx.retention]``).

    Families: ``telemetry`` (the ``[stream] measurement`` samples, locations included), ``trips``
    and ``daily`` (summaries). InfluxDB 1.x: one retention policy per family, named after it,
    ``telemetry`` the database's default; 2.x: the bucket ``[influx] bucket`` for telemetry and
    ``<bucket>_trips`` / ``<bucket>_daily``. ``inf`` keeps everything: the default, since the
    pipeline replays logs of any age and points older than their retention are refused.
    """

    model_config = {"extra": "forbid"}

    manage: bool = Field(
        True,
        description="Create the per-family retention policies (1.x) or buckets (2.x) and keep "
        "their durations as configured; off = write to [influx] retention_policy/bucket only.",
    )
    telemetry: str = Field("inf", description="Raw signal samples: 90d, 26w, 2y, 720h or inf.")
    trips: str = Field("inf", description="Trip summaries (measurement trips).")
    daily: str = Field("inf", description="Daily summaries (measurement daily).")

    @field_validator("telemetry", "trips", "daily")
    @classmethod
    def _duration(cls, value: str) -> str:
        retention_seconds(value)
        return value.strip().lower()

    def seconds(self, family: str) -> int | None:
        """The family's retention in seconds, ``None`` = forever."""
        return retention_seconds(getattr(self, family))


class InfluxSettings(BaseModel):
    """InfluxDB sink: ``v1`` (1.x HTTP API) or ``v2`` (2.x/3.x through influxdb-client)."""

    api: Literal["v1", "v2"] = Field("v1", description="Which write API to use.")
    url: str = Field("http://127.0.0.1:8086", description="Base URL of the server.")
    database: str = Field("carpulse", description="v1: database name.")
    retention_policy: str = Field(
        "",
        description="v1: write every family to this retention policy ('' = the per-family "
        "policies of [influx.retention], or the database's default when it is not managed).",
    )
    backup_address: str = Field(
        "127.0.0.1:8088",
        description="v1: influxd's backup/restore RPC address (its top-level bind-address); "
        "`carpulse backup`/`restore` run `influxd backup|restore -portable` against it.",
    )
    username: str | None = Field(None, description="v1: user name, when auth is on.")
    password: SecretStr | None = _secret("v1: password (environment only).")
    org: str = Field("carpulse", description="v2: organisation.")
    bucket: str = Field("carpulse", description="v2: bucket.")
    token: SecretStr | None = _secret("v2: API token (environment only).")
    token_file: Path | None = Field(None, description="v2: file holding the API token.")
    batch_lines: int = Field(5000, description="Lines per write request.")
    gzip: bool = Field(True, description="Compress write requests.")
    timeout_s: float = Field(10.0, description="Per-request timeout.")
    max_retries: int = Field(8, description="Retries on 429/5xx/timeouts before a batch is parked.")
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="Retention per measurement family ([influx.retention]).",
    )


class EdgeSettings(BaseModel):
    """The edge agent on a gateway."""

    device_id: str = Field("demo-car-1", description="Device id = MQTT client id = certificate CN.")
    broker_host: str = Field(
        "127.0.0.1", description="MQTT broker host; must match its certificate."
    )
    broker_port: int = Field(8883, description="MQTT broker TLS port for devices.")
    ca_file: Path | None = Field(
        None, description="CA of the broker (default: the local stack's PKI)."
    )
    cert_file: Path | None = Field(
        None, description="Device certificate (default: the local stack's PKI)."
    )
    key_file: Path | None = Field(
        None, description="Device private key (default: the local stack's PKI)."
    )
    state_dir: Path = Field(
        Path(".carpulse/edge"), description="Durable state (sequence numbers, queue)."
    )
    batch_max_samples: int = Field(5000, description="Samples per telemetry message at most.")
    batch_max_interval_s: float = Field(1.0, description="Source-time span of one message at most.")
    numba_cache_dir: Path | None = Field(
        None,
        description="numba's on-disk cache of compiled kernels: a restarted agent loads them "
        "instead of compiling them again, which is slow on a Pi (unset: compile at every start).",
    )
    aot: bool = Field(
        True,
        description="Run the kernels compiled ahead of time by `carpulse edge build-kernels` when "
        "they were built for this exact source (numba, hence LLVM, is then never loaded: about "
        "100 MB less resident); otherwise numba compiles them at start.",
    )
    aot_dir: Path | None = Field(
        None,
        description="Where `carpulse edge build-kernels` writes them (unset: <state_dir>/kernels).",
    )


class AnomalySettings(BaseModel):
    """The stream's anomaly detector (``[stream.anomaly]``): what runs on which signals."""

    detector: Literal["robust_zscore", "artime", "nn_likelihood", "artime_nn", "artime_spatial"] = (
        Field(
            "robust_zscore",
            description="Detector per (vehicle, signal) slot: robust_zscore (32 B/slot, the cheap "
            "default), artime, nn_likelihood, artime_nn (~390 KB/slot) or artime_spatial (NAB's "
            "best, ~292 KB/slot; BENCHMARKS.md).",
        )
    )
    signals: list[str] = Field(
        default_factory=lambda: [
            "Vehicle.Speed",
            "Vehicle.Powertrain.CombustionEngine.Speed",
            "Vehicle.Powertrain.CombustionEngine.ECT",
            "Vehicle.Powertrain.CombustionEngine.EOT",
            "Vehicle.LowVoltageBattery.CurrentVoltage",
        ],
        description="Watched signals: full VSS names, or families ending with '.' "
        "(e.g. 'Vehicle.Powertrain.').",
    )
    threshold: float | None = Field(
        None,
        description="Score above which a sample is an anomaly (unset: anomaly_z for "
        "robust_zscore, 0.325 for artime_spatial, 0.5 for the other [0, 1] detectors).",
    )
    cooldown_s: float = Field(
        600.0, ge=0, description="Least source time between two anomaly events of one slot."
    )
    window: int = Field(
        60, ge=1, le=4096, description="Values and timestamps of evidence sent with an event."
    )
    calib: int = Field(
        750, ge=32, description="Samples per slot that calibrate artime/nn_likelihood (score 0)."
    )
    max_slots: int = Field(
        4096,
        ge=1,
        description="Watched (vehicle, signal) slots per partition; more are not watched (counted "
        "as anomaly_unwatched). Bounds memory: max_slots x the detector's state per slot.",
    )


class StreamSettings(BaseModel):
    """The Faust app."""

    app_id: str = Field(
        "carpulse-stream",
        description="Faust app id of the stream worker (consumer group and prefix of its "
        "changelog topics; the local stack's Kafka ACLs allow the prefix carpulse-stream).",
    )
    crm_app_id: str = Field(
        "carpulse-crm",
        description="Faust app id of the CRM worker (its consumer group; the local stack's "
        "Kafka ACLs allow the prefix carpulse-crm).",
    )
    take_max: int = Field(
        200, description="Kafka records per micro-batch (each holds many samples)."
    )
    take_within_s: float = Field(0.05, description="Longest wait to fill a micro-batch.")
    take_busy_within_s: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Longest wait to fill a micro-batch while records keep coming (its first "
        "record came less than this after the previous batch was handled): fewer, larger "
        "batches cost less CPU per sample; 0 or below take_within_s = take_within_s always.",
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=1,
        description="Longest time the worker's Kafka fetch waits for data (Faust hard-codes "
        "1500 ms; a broker that holds an empty fetch that long delays every record by it).",
    )
    fetch_batch_wait_ms: int = Field(
        50,
        ge=0,
        le=1000,
        description="While records keep coming, the worker's Kafka fetch waits this long for "
        "more instead of returning each record (fewer fetches: less CPU; under load an event "
        "may wait this much more); 0 = off. An idle worker answers at once as before.",
    )
    web_port: int = Field(6066, description="Faust web server port (bound to localhost).")
    measurement: str = Field("telemetry", description="InfluxDB measurement for signal samples.")
    sink: str = Field(
        "",
        pattern=r"^([a-z0-9][a-z0-9._-]{0,63})?$",
        description="Sink plug-in by name (stream.sinks: influx-v1, influx-v2, or one an installed "
        "package adds through the carpulse.sinks entry points); '' = influx-<[influx] api>.",
    )
    registry: str = Field(
        "",
        description="Device -> VIN registry: JSON/CSV file or http(s) URL ('' = open mode, "
        "every device is its own vehicle).",
    )
    gate_devices: list[str] = Field(
        default_factory=list,
        description="Device ids of dealer gate cameras: the only devices whose gate.plate and "
        "gate.face events are accepted (besides role=gate entries of the registry).",
    )
    max_batch_samples: int = Field(
        200_000, description="Telemetry records with more samples are dead-lettered (oversized)."
    )
    state_min_interval_ms: int = Field(
        200, description="At most one vehicle-state update per vehicle per this much source time."
    )
    anomaly_z: float = Field(6.0, description="|robust z| above which a sample is an anomaly.")
    anomaly: AnomalySettings = AnomalySettings()
    checkpoint_interval_s: float = Field(
        1.0, description="Least wall time between detector-state checkpoints of a partition."
    )
    data_dir: Path | None = Field(
        None,
        description="Where the Faust workers keep their table data ({data_dir}/{app_id}-data); "
        "unset: $XDG_STATE_HOME/carpulse/faust (~/.local/state/carpulse/faust), never the "
        "current directory.",
    )
    store: str = Field(
        "memory://",
        description="Faust table store: 'memory://' (state rebuilt from the changelogs at "
        "start) or 'rocksdb://' in production (needs faust-streaming[rocksdict]).",
    )
    session_timeout_s: float = Field(
        30.0,
        description="Kafka consumer session timeout: how long a dead worker keeps its "
        "partitions before the others take them over.",
    )
    service_km: float = Field(
        15_000.0, description="Service interval in km for the stream's service-due predictions."
    )
    service_days: float = Field(
        365.0, description="Service interval in days (whichever of km and days comes first)."
    )
    service_engine_hours: float = Field(
        0.0, description="Service interval in engine hours (0 = not serviced by engine hours)."
    )
    # silent cars (stream.silence): a car that goes quiet at speed raises a call-centre alert
    silent_after_s: float = Field(
        120.0,
        gt=0,
        le=86_400,
        description="Silent car: seconds without telemetry (wall time at the worker) after "
        "which a car last seen moving above silent_min_kmh with ignition on raises an alert.",
    )
    silent_min_kmh: float = Field(
        30.0,
        ge=0,
        description="Silent car: the last known speed must be above this (a car that slowed "
        "down or parked before going quiet, in a garage or a tunnel queue, is not an alarm).",
    )
    # 12 V and EV battery health (stream.battery): a battery record per problem episode
    battery_cooldown_s: float = Field(
        86_400.0,
        ge=0,
        le=365 * 86_400,
        description="Battery: least source time between two records of an unchanged problem "
        "(a change, e.g. weak -> fine, is published at once).",
    )
    battery_spread_v: float = Field(
        0.1,
        gt=0,
        le=5,
        description="Battery: a traction pack whose smoothed cell spread (max - min cell "
        "voltage) exceeds this many volts is imbalanced.",
    )
    battery_soh_pct: float = Field(
        80.0,
        ge=0,
        le=100,
        description="Battery: a traction pack reporting a state of health below this (%) is due "
        "for a check.",
    )
    battery_fade_years: float = Field(
        2.0,
        ge=0,
        le=30,
        description="Battery: a traction pack whose state-of-health trend reaches 70 % within "
        "this many years is due for a check (0: never for its trend).",
    )

    def faust_datadir(self, app_id: str, *, create: bool = False) -> Path:
        """The ``datadir`` of the Faust app ``app_id``: ``{data_dir}/{app_id}-data``; with
        ``create``, its parent is made (Faust creates only the last level, at the first start)."""
        base = self.data_dir
        if base is None:
            xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
            base = Path(xdg) / "carpulse" / "faust"
        if create:
            try:
                Path(base).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"stream.data_dir {base}: {err.strerror}") from err
        return Path(base) / f"{app_id}-data"


def _has_password(url: str) -> bool:
    """True when ``url`` carries ``user:password@`` (a secret that must not sit in a TOML file)."""
    m = re.match(r"(?i)^[a-z][a-z0-9+.-]*://([^/@\s]*)@", url)
    return bool(m and ":" in m.group(1))


class CrmSettings(BaseModel):
    """The CRM database: shared by the CRM worker, the dashboards and every ``carpulse crm`` command.

    The URL may carry a password (``postgresql://app:pw@db/crm``): then it comes from the
    environment (``CARPULSE_CRM__URL``) or from ``url_file``, never from the TOML file.
    """

    url: str = Field(
        "",
        description="SQLAlchemy URL (sqlite:///path or postgresql://user@host/db); '' = "
        "url_file, else the local stack's SQLite ({stack.data_dir}/crm.sqlite).",
    )
    url_file: Path | None = Field(
        None, description="File holding the database URL (use it when the URL has a password)."
    )
    jobs_interval_s: float = Field(
        60.0, gt=0, description="CRM worker: seconds between periodic jobs (delivery, purge)."
    )
    loyalty_file: Path | None = Field(
        None,
        description="Points, tiers, RFM segments and reminders (YAML like the shipped "
        "crm/loyalty.yaml, which applies when unset).",
    )

    def resolved_url(self, stack: StackSettings) -> str:
        """``url``, else the contents of ``url_file``, else the local stack's SQLite file."""
        if self.url:
            return self.url
        if self.url_file is not None:
            url = _read_secret(self.url_file, "crm.url_file")
            if not url:
                raise ConfigError(f"crm.url_file {self.url_file} is empty")
            return url
        return f"sqlite:///{Path(stack.data_dir).absolute() / 'crm.sqlite'}"


class SmtpSettings(BaseModel):
    """Outgoing e-mail of the CRM worker (customer messages); no host = no e-mail channel."""

    host: str = Field("", description="SMTP server ('' = e-mail is not sent).")
    port: int = Field(25, ge=1, le=65535, description="SMTP port (587 with STARTTLS).")
    starttls: bool = Field(False, description="Upgrade the connection with STARTTLS first.")
    username: str | None = Field(None, description="Login name (no login when unset).")
    password: SecretStr | None = _secret("Login password (environment only).")
    password_file: Path | None = Field(None, description="File holding the login password.")
    sender: str = Field("noreply@carpulse.local", description="The From address of e-mails.")
    timeout_s: float = Field(10.0, gt=0, description="Per-connection timeout.")

    def resolved_password(self) -> str | None:
        """The password from the environment, or read from ``password_file``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return _read_secret(self.password_file, "smtp.password_file")
        return None


class WebhookSettings(BaseModel):
    """The dealer-integration webhook the CRM worker posts signed effects to."""

    url: str = Field("", description="Webhook URL ('' = no webhook channel).")
    secret: SecretStr | None = _secret("HMAC signing secret (environment only).")
    secret_file: Path | None = Field(None, description="File holding the HMAC signing secret.")

    def resolved_secret(self) -> str | None:
        """The secret from the environment (also the older ``CARPULSE_CRM_WEBHOOK_SECRET``) or
        from ``secret_file``."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_file is not None:
            return _read_secret(self.secret_file, "webhooks.secret_file")
        return os.environ.get("CARPULSE_CRM_WEBHOOK_SECRET") or None


class DashboardSettings(BaseModel):
    """``carpulse dashboard``: the web app for call-centre agents and service advisors."""

    host: str = Field("127.0.0.1", description="Address to listen on (behind a TLS proxy).")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    public_url: str = Field(
        "", description="The URL users reach the app at (https://...; links in messages)."
    )
    secure_cookies: bool = Field(
        True, description="Cookies only over HTTPS (turn off for plain-HTTP development only)."
    )
    signing_key_file: Path | None = Field(
        None,
        description="Ed25519 command-signing private key (`carpulse pki command-key`); unset: "
        "the local stack's pki/cmd-sign.key if it exists, else commands are disabled.",
    )
    mqtt_username: str = Field(
        "carpulse-console", description="MQTT account the app sends vehicle commands as."
    )
    mqtt_password: SecretStr | None = _secret("That account's password (environment only).")
    mqtt_password_file: Path | None = Field(
        None,
        description="File holding that account's password; unset: the local stack's "
        "secrets/carpulse-console.password if it exists, else commands are disabled.",
    )
    coupon_templates: list[str] = Field(
        default_factory=list,
        description="Coupon templates advisors may issue from the inbox (none unless listed).",
    )
    # the advisor inbox's maintenance card (dashboards.inbox): only what is due soon
    maintenance_horizon_days: float = Field(
        30.0, gt=0, description="A maintenance card only when service or oil is due within this."
    )
    maintenance_horizon_km: float = Field(
        1000.0, gt=0, description="... or when the service is due within this distance."
    )
    oil_due_pct: float = Field(
        20.0, ge=0, le=100, description="... or when the oil life left is at most this."
    )


class MemberSettings(BaseModel):
    """The mobile member page (``dashboards.member``): sign-in links and how they reach members."""

    key_file: Path | None = Field(
        None,
        description="File holding the HMAC key of sign-in and share links (text, 16+ characters, "
        "e.g. `openssl rand -hex 32 > member.key`); unset: a key kept in the CRM database.",
    )
    link_ttl_h: float = Field(24.0, gt=0, le=24 * 30, description="How long a sign-in link works.")
    session_days: float = Field(
        30.0, gt=0, le=365, description="How long a member stays signed in."
    )
    transport: str = Field(
        "",
        description="How sign-in links are sent: sms, email (the [smtp] settings), wechat, "
        "recording (a JSON-lines file, for demos) or an installed plug-in; '' = not sent.",
    )
    sms_url: str = Field("", description="The SMS gateway's endpoint (POST, signed JSON).")
    sms_secret_file: Path | None = Field(None, description="The SMS gateway's HMAC secret file.")
    wechat_template_id: str = Field("", description="The service account's template message id.")
    wechat_token_file: Path | None = Field(
        None, description="File holding the service account's current access token."
    )
    wechat_api: str = Field("https://api.weixin.qq.com", description="WeChat API base URL.")
    recording_file: Path | None = Field(None, description="Where `recording` appends messages.")

    def resolved_key(self) -> bytes | None:
        if self.key_file is None:
            return None
        key = _read_secret(self.key_file, "member.key_file").encode()
        if len(key) < 16:
            raise ConfigError(f"member.key_file {self.key_file}: the key is shorter than 16 bytes")
        return key


class BridgeSettings(BaseModel):
    """The MQTT -> Kafka ingest bridge: what one device may send."""

    rate_per_device: float = Field(
        100.0,
        gt=0,
        description="Messages per second one device may publish, sustained (telemetry, events, "
        "status and acks together); the excess is acknowledged, dropped and counted "
        "(reason 'rate_limited'). A car sends about one a second.",
    )
    burst_per_device: int = Field(
        3000,
        ge=1,
        description="Messages one device may publish at once above its rate: room for the "
        "backlog an edge agent drains after a broker outage (10 minutes at 5 a second).",
    )
    max_payload_bytes: int = Field(
        512 * 1024,
        ge=1024,
        description="Larger MQTT messages are dead-lettered (reason 'too_large', payload cut); "
        "keep it under the Kafka brokers' message.max.bytes (1 MiB by default).",
    )
    decode_workers: int = Field(
        0,
        ge=0,
        description="Threads that check messages off the bridge's event loop; 0 checks them on "
        "the MQTT network thread (a telemetry envelope check takes ~30 us, less than a hop to "
        "another thread costs, and keeps each device's messages in order).",
    )


class LogSettings(BaseModel):
    """``[log]``: how every component writes its log (stderr)."""

    format: Literal["text", "json"] = Field(
        "text", description="'text' or 'json' (one object per line; the --log-format flag wins)."
    )


class MetricsSettings(BaseModel):
    """``[metrics]``: Prometheus ``/metrics`` with ``/healthz`` and ``/readyz``.

    The stream worker serves them on its Faust web server (``[stream] web_port``) and the
    dashboard on its own port; the other services need a port of their own here (0 = off).
    """

    host: str = Field("127.0.0.1", description="Address the metrics/health servers bind to.")
    bridge_port: int = Field(
        0, ge=0, le=65535, description="Ingest bridge (0 = off; --metrics-port per instance)."
    )
    crm_port: int = Field(
        0, ge=0, le=65535, description="CRM worker, on its Faust web server (0 = off)."
    )
    edge_port: int = Field(0, ge=0, le=65535, description="Edge agent (0 = off).")
    faust_sensor: bool = Field(
        False,
        description="Add Faust's own Prometheus sensor to the workers' /metrics "
        "(carpulse_<stream|crm>_faust_*: events per stream, table operations, send latency, "
        "rebalances; its per-topic record counters stay 0, as the agents commit their own "
        "offsets); it counts every Kafka record, a few microseconds each.",
    )
    allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Client networks that may read the dashboard's /metrics (it is public "
        "behind its proxy; add the Prometheus server's address).",
    )


class CarpulseSettings(BaseSettings):
    """Every component's settings; each section is its own model."""

    model_config = SettingsConfigDict(
        env_prefix="CARPULSE_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    stack: StackSettings = StackSettings()
    mqtt: MqttSettings = MqttSettings()
    kafka: KafkaSettings = KafkaSettings()
    influx: InfluxSettings = InfluxSettings()
    edge: EdgeSettings = EdgeSettings()
    stream: StreamSettings = StreamSettings()
    bridge: BridgeSettings = BridgeSettings()
    crm: CrmSettings = CrmSettings()
    smtp: SmtpSettings = SmtpSettings()
    webhooks: WebhookSettings = WebhookSettings()
    dashboard: DashboardSettings = DashboardSettings()
    member: MemberSettings = MemberSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier wins: init (the TOML file, passed by load_settings) is overridden by env.
        return (env_settings, init_settings)


def _secret_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("secret"):
            keys.add(prefix + name)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _secret_keys(ann, f"{prefix}{name}.")
    return keys


SECRET_KEYS = frozenset(_secret_keys(CarpulseSettings))


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def load_settings(config_file: Path | str | None = None) -> CarpulseSettings:
    """Load settings: defaults < TOML (``config_file`` or ``$CARPULSE_CONFIG``) < environment."""
    path = config_file or os.environ.get("CARPULSE_CONFIG")
    doc: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"config file {p} does not exist") from err
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {p}: {err}") from err
        except OSError as err:
            raise ConfigError(f"config file {p}: {err.strerror}") from err
        secrets = sorted(SECRET_KEYS & set(_flatten(doc)))
        crm = doc.get("crm")
        if isinstance(crm, dict) and isinstance(crm.get("url"), str) and _has_password(crm["url"]):
            secrets.append("crm.url")  # a URL with a password is a secret too: url_file or env
        if secrets:
            raise ConfigError(
                f"config file {p}: {', '.join(secrets)} is a secret; set it in the environment "
                f"(e.g. CARPULSE_{secrets[0].upper().replace('.', '__')}) or use the *_file setting"
            )
    try:
        return CarpulseSettings(**doc)
    except ValidationError as err:
        where = f"config file {path}" if path else "environment"
        lines = [
            f"  {'.'.join(str(x) for x in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
            for e in err.errors()
        ]
        raise ConfigError(f"invalid settings in {where}:\n" + "\n".join(lines)) from err


# The running ``carpulse`` invocation: its ``--config`` and the settings loaded from it.
_CLI: dict[str, Any] = {}


def start_cli(config_file: Path | str | None) -> None:
    """Called by the ``carpulse`` root command before any subcommand: forget what an earlier
    invocation in this process loaded and remember this one's ``--config``."""
    _CLI.clear()
    _CLI["config"] = config_file


def cli_settings() -> CarpulseSettings:
    """The settings of the running ``carpulse`` command, loaded once per invocation from the
    root command's ``--config`` (else ``$CARPULSE_CONFIG``): every subcommand (``crm worker``,
    ``dashboard``, ``config show``...) sees the same file."""
    cached = _CLI.get("settings")
    if not isinstance(cached, CarpulseSettings):
        cached = _CLI["settings"] = load_settings(_CLI.get("config"))
    return cached


# ``scheme://user:password@`` (or ``scheme://token@``) anywhere in a value
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s]*@")


def mask_url_credentials(value: str) -> str:
    """``postgresql://u:pw@host/db`` -> ``postgresql://********@host/db`` (any scheme, any place)."""
    return _URL_CREDENTIALS.sub(r"\1********@", value)


def _mask_urls(value: Any) -> Any:
    if isinstance(value, str):
        return mask_url_credentials(value)
    if isinstance(value, dict):
        return {k: _mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_urls(v) for v in value]
    return value


def masked_dump(settings: CarpulseSettings) -> dict[str, Any]:
    """The effective settings as plain data, secrets replaced by ``'********'`` and credentials
    inside URLs (``scheme://user:password@host``) masked in every value."""
    data = settings.model_dump(mode="json")
    for key in SECRET_KEYS:
        section, name = key.split(".", 1)
        if data.get(section, {}).get(name) is not None:
            data[section][name] = "********"
    return _mask_urls(data)  # type: ignore[no-any-return]
