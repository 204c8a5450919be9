"""The local stack: Mosquitto (TLS, per-device certificates, ACLs), Apache Kafka and InfluxDB 1.x on loopback.

``carpulse stack up|down|status``. Everything lives under the data dir (default ``./.carpulse``)::

    pki/                     CA, broker and device certificates (see carpulse.pki)
    secrets/<user>.password  passwords of the service users (0600)
    mosquitto/               mosquitto.conf, dynamic-security.json, persistence, log
    influxdb/                influxdb.conf, meta, data, wal, log
    kafka/node-<i>/          Apache Kafka in KRaft mode: server.properties, data/, kafka.log
    kafka/cluster.id         formatted once; the log survives `stack down`/`up`
    crm.sqlite               the CRM database
    run/<service>.pid
    stack.toml               a carpulse config file that points every component at this stack

This is for development, demos and tests. Production runs any Kafka cluster (the same client
security settings reach MSK, Confluent or Aiven), InfluxDB 2.x/3.x and a managed MQTT broker.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carpulse import broker_acl
from carpulse import kafka_broker as kb
from carpulse.pki import LocalPKI
from core.config import StackSettings
from core.errors import StackError

SERVICE_USERS = ("carpulse-bridge", "carpulse-console", "carpulse-admin")
KAFKA_USERS = (kb.ADMIN_USER, *kb.PRINCIPALS.values())

# Processes this interpreter started, kept so they can be reaped (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def port_in_use(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    return kb.port_open(host, port, timeout)


#: the lowest port ``free_port`` hands out: above the usual fixed service ports
FREE_PORTS_FROM = 20_000
_given: set[int] = set()  # ports this process handed out already (never twice)


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux default)."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return lo, hi


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


#: ``LO-HI``: the ports ``free_port`` picks from, in this process and the processes it starts.
#: Two test processes side by side (``make test``'s pytest-xdist workers) get disjoint ranges, so
#: one never picks a port the other picked and has not bound yet (or stopped, to start again).
FREE_PORTS_ENV = "CARPULSE_FREE_PORTS"


def free_port_range() -> tuple[int, int]:
    """``[lo, hi)`` that ``free_port`` picks from: ``$CARPULSE_FREE_PORTS`` (``LO-HI``) or
    ``FREE_PORTS_FROM`` up to the kernel's ephemeral range."""
    lo, _hi = _ephemeral_ports()
    raw = os.environ.get(FREE_PORTS_ENV, "").strip()
    if not raw:
        return FREE_PORTS_FROM, lo
    try:
        a, b = (int(x) for x in raw.split("-"))
    except ValueError:
        raise StackError(
            f"{FREE_PORTS_ENV}={raw[:40]!r}: expected LO-HI, e.g. 20000-26000"
        ) from None
    if not 1_024 <= a < b <= 65_536:
        raise StackError(f"{FREE_PORTS_ENV}={raw[:40]!r}: expected 1024 <= LO < HI <= 65536")
    return a, b


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A TCP port that is free right now (tests start their own stack on such ports), with the
    ``count - 1`` after it free too.

    Picked below the kernel's ephemeral range: a port of that range (what ``bind(0)`` gives) can
    be taken by any outgoing connection between the pick and the server's own bind. Seen in a
    full test run: InfluxDB failed with "bind: address already in use" on such a port.
    ``$CARPULSE_FREE_PORTS`` narrows the range (``free_port_range``).
    """
    start, end = free_port_range()
    narrowed = bool(os.environ.get(FREE_PORTS_ENV, "").strip())  # as free_port_range reads it
    top = end - count  # the block ends below the range's end
    if top - start >= 1_000 or (narrowed and top > start):
        rng = secrets.SystemRandom()
        for _ in range(500):
            base = rng.randrange(start, top)
            block = range(base, base + count)
            if _given.isdisjoint(block) and all(_bindable(host, p) for p in block):
                _given.update(block)
                return base
    if narrowed:  # never outside the range it was given
        raise StackError(f"no {count} consecutive free ports in {FREE_PORTS_ENV}={start}-{end}")
    for _ in range(200):  # no room below the ephemeral range: the kernel's pick
        with socket.socket() as s:
            s.bind((host, 0))
            base = int(s.getsockname()[1])
        block = range(base, base + count)
        free = base + count < 65_536 and _given.isdisjoint(block)
        if free and all(_bindable(host, p) for p in block):
            _given.update(block)
            return base
    raise StackError(f"no {count} consecutive free ports on {host}")


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive TCP ports that are all free right now.

    Kafka node ``i`` of the local stack listens on three ports from ``kafka_port + 3*i``.
    """
    return free_port(host, count)


def free_stack_settings(data_dir: Path, **overrides: Any) -> StackSettings:
    """Stack settings on ports free right now (tests, benches and evaluations run their own
    stack beside any other); ``overrides`` replace any setting, e.g. ``kafka_brokers=3``."""
    brokers = int(overrides.get("kafka_brokers", 1))
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "mqtt_device_port": free_port(),
        "mqtt_service_port": free_port(),
        "kafka_port": free_port_block(3 * brokers),
        "influx_port": free_port(),
        "influx_rpc_port": free_port(),
    }
    return StackSettings(**{**values, **overrides})


def pipeline_env(config_file: Path, label: str, **extra: str) -> dict[str, str]:
    """The environment of pipeline processes (bridge, stream and CRM workers) run against a
    throwaway stack: its config file, Faust app ids of their own (``carpulse-stream-<label>-<id>``,
    so no earlier run's offsets or tables are read) and a free web port; ``extra`` added last."""
    uid = uuid.uuid4().hex[:8]
    return {
        **os.environ,
        "CARPULSE_CONFIG": str(config_file),
        "CARPULSE_STREAM__APP_ID": f"carpulse-stream-{label}-{uid}",
        "CARPULSE_STREAM__CRM_APP_ID": f"carpulse-crm-{label}-{uid}",
        "CARPULSE_STREAM__WEB_PORT": str(free_port()),
        **extra,
    }


def wait_until(
    cond: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.25,
    *,
    ignore: tuple[type[Exception], ...] = (),
    error: type[Exception] = StackError,
) -> Any:
    """Call ``cond`` every ``interval`` s until it returns something true, and return that.

    After ``timeout`` s ``error`` says what was awaited and the last answer; an exception in
    ``ignore`` counts as a false answer (a service still starting).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except ignore:
            pass
        else:
            if last:
                return last
        time.sleep(interval)
    raise error(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _which(binary: str, apt_package: str) -> str:
    path = shutil.which(binary) or (binary if os.path.isfile(binary) else None)
    if path is None:
        raise StackError(
            f"{binary} not found: install it with `apt-get install -y {apt_package}` (or `make setup`)"
        )
    return path


@dataclass
class ServiceStatus:
    name: str
    healthy: bool
    pid: int | None
    address: str
    detail: str = ""


def stop_processes(procs: Iterable[subprocess.Popen[Any]], grace_s: float = 20.0) -> None:
    """SIGTERM every process still running, wait ``grace_s`` for each, SIGKILL what is left."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


class Stack:
    """Starts, checks and stops the local services under one data dir."""

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.s = settings or StackSettings()
        self.root = Path(self.s.data_dir).absolute()
        self.pki = LocalPKI(self.root / "pki")

    # ----- paths -----------------------------------------------------------------------------
    def secret_file(self, user: str) -> Path:
        return self.root / "secrets" / f"{user}.password"

    def kafka_secret_file(self, user: str) -> Path:
        return self.root / "secrets" / f"kafka-{user}.password"

    @property
    def kafka_nodes(self) -> list[kb.KafkaNode]:
        s = self.s
        return kb.nodes(self.root, s.host, s.kafka_port, s.kafka_brokers)

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"{n.host}:{n.client_port}" for n in self.kafka_nodes)

    def _pid_file(self, name: str) -> Path:
        return self.root / "run" / f"{name}.pid"

    @property
    def crm_url(self) -> str:
        return f"sqlite:///{self.root / 'crm.sqlite'}"

    @property
    def config_file(self) -> Path:
        return self.root / "stack.toml"

    # ----- preparation -----------------------------------------------------------------------
    def prepare(self) -> None:
        """Create PKI, passwords and config files (idempotent)."""
        for sub in ("run", "secrets", "mosquitto/data", "influxdb"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "secrets", 0o700)
        self.pki.init()
        for f in [
            *(self.secret_file(u) for u in SERVICE_USERS),
            *(self.kafka_secret_file(u) for u in KAFKA_USERS),
        ]:
            if not f.exists():
                fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(24))
        self._write_mosquitto()
        self._write_influx()
        self._write_kafka()
        self._write_stack_toml()

    def _write_kafka(self) -> None:
        admin_pw = self.kafka_secret_file(kb.ADMIN_USER).read_text().strip()
        kb.write_configs(self.root / "kafka", self.pki, self.kafka_nodes, admin_pw)

    def _write_mosquitto(self) -> None:
        d = self.root / "mosquitto"
        (d / "passwd").unlink(missing_ok=True)  # from before the plugin: no longer read
        (d / "acl").unlink(missing_ok=True)
        # Rewritten from the PKI on every prepare; while the broker runs, the plugin keeps its
        # own state (devices issued meanwhile are added through $CONTROL) and saves it here.
        broker_acl.write_config(
            self._dynsec_file,
            {u: self.secret_file(u).read_text().strip() for u in SERVICE_USERS},
            self.pki.issued_devices(),
        )
        server_tls = (
            f"certfile {self.pki.server_cert}\nkeyfile {self.pki.server_key}\ntls_version tlsv1.2\n"
        )
        conf = (
            "# Generated by carpulse stack; edits are overwritten.\n"
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {d / 'data'}/\n"
            "autosave_interval 10\n"
            f"log_dest file {d / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
            f"plugin {broker_acl.plugin_path()}\n"
            f"plugin_opt_config_file {self._dynsec_file}\n"
            "max_inflight_messages 100\n"
            "max_queued_messages 100000\n"
            "message_size_limit 8388608\n\n"
            "# Devices: a certificate of the device CA (not revoked) is required; its CN becomes\n"
            "# the user name and replaces whatever client id the device sent, so a device can\n"
            "# neither pose as another one nor take over a service's or another car's session.\n"
            f"listener {self.s.mqtt_device_port} {self.s.host}\n{server_tls}"
            f"cafile {self.pki.device_ca_cert}\n"
            f"crlfile {self.pki.device_crl}\n"
            "require_certificate true\nuse_identity_as_username true\n"
            "use_username_as_clientid true\n\n"
            "# Services: TLS with user name and password (no device can have one).\n"
            f"listener {self.s.mqtt_service_port} {self.s.host}\n{server_tls}"
            f"cafile {self.pki.ca_cert}\n"
            "require_certificate false\n"
        )
        (d / "mosquitto.conf").write_text(conf)

    # ----- device identities on the broker (see carpulse.broker_acl) -----------------------
    @property
    def _dynsec_file(self) -> Path:
        return self.root / "mosquitto" / "dynamic-security.json"

    def provision_device(self, device_id: str, *, renew: bool = False) -> tuple[Path, Path]:
        """Issue the device's certificate and give it its ACL role on the broker."""
        cert, key = self.pki.device(device_id, renew=renew)
        self.provision_devices([device_id])
        return cert, key

    def provision_devices(self, device_ids: Iterable[str]) -> None:
        """Issue certificates and give every device the broker does not know yet its role."""
        ids = list(device_ids)
        for device_id in ids:
            self.pki.device(device_id)
        if self._running_pid("mosquitto") is None:
            broker_acl.add_devices_to_file(self._dynsec_file, ids)  # read when it starts
            return
        known = broker_acl.known_clients(self._dynsec_file)
        new = [d for d in ids if d not in known]
        if new:
            self._acl_control(broker_acl.register_commands(new), ok_errors=("already exists",))

    def revoke_device(self, device_id: str) -> int:
        """Revoke the device's certificate: CRL, reload, and its live session ends now."""
        serial = self.pki.revoke(device_id)
        pid = self._running_pid("mosquitto")
        if pid is not None:
            # The CRL is read when the TLS context is built: SIGHUP rebuilds it (mosquitto 2.0
            # reloads listener TLS settings on SIGHUP), so the next handshake sees the new CRL.
            # The TLS session of a device already connected is not re-checked: deleting its
            # plugin client kicks it and leaves it no access, should it still be connected.
            os.kill(pid, signal.SIGHUP)
            self._acl_control(broker_acl.unregister_commands(device_id), ok_errors=("not found",))
        else:
            self._write_mosquitto()  # the device is no longer in issued_devices()
        return serial

    def _acl_control(self, commands: list[dict[str, Any]], ok_errors: tuple[str, ...]) -> None:
        password = self.secret_file(broker_acl.ADMIN).read_text().strip()
        broker_acl.control(
            self.s.host, self.s.mqtt_service_port, self.pki.ca_cert, password, commands, ok_errors
        )

    def _write_influx(self) -> None:
        d = self.root / "influxdb"
        conf = f"""# Generated by carpulse stack; edits are overwritten.
reporting-disabled = true
bind-address = "{self.s.host}:{self.s.influx_rpc_port}"
[meta]
  dir = "{d / "meta"}"
[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "{self.s.host}:{self.s.influx_port}"
  log-enabled = false
  max-body-size = 0
  max-row-limit = 0
[logging]
  level = "warn"
[continuous_queries]
  enabled = false
"""
        (d / "influxdb.conf").write_text(conf)

    def _write_stack_toml(self) -> None:
        s = self.s
        principals = "".join(
            f'\n[kafka.principals.{component}]\nusername = "{user}"\n'
            f'password_file = "{self.kafka_secret_file(user)}"\n'
            for component, user in kb.PRINCIPALS.items()
        )
        text = f"""# Generated by carpulse stack: points every component at the local stack.
# Use it with `carpulse --config {self.config_file} ...` or CARPULSE_CONFIG={self.config_file}.
[stack]
data_dir = "{self.root}"
host = "{s.host}"
mqtt_device_port = {s.mqtt_device_port}
mqtt_service_port = {s.mqtt_service_port}
kafka_port = {s.kafka_port}
kafka_brokers = {s.kafka_brokers}
influx_port = {s.influx_port}
influx_rpc_port = {s.influx_rpc_port}

[mqtt]
host = "{s.host}"
port = {s.mqtt_service_port}
ca_file = "{self.pki.ca_cert}"
username = "carpulse-bridge"
password_file = "{self.secret_file("carpulse-bridge")}"

[kafka]
bootstrap = "{self.kafka_bootstrap}"
replication = {min(3, s.kafka_brokers)}
min_insync_replicas = {2 if s.kafka_brokers >= 3 else 1}
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
ca_file = "{self.pki.ca_cert}"
# the default account (provisioning, tools, tests); each component has its own below
username = "{kb.ADMIN_USER}"
password_file = "{self.kafka_secret_file(kb.ADMIN_USER)}"
{principals}

[edge]
broker_host = "{s.host}"
broker_port = {s.mqtt_device_port}
state_dir = "{self.root / "edge"}"

[influx]
api = "v1"
url = "http://{s.host}:{s.influx_port}"
database = "carpulse"
backup_address = "{s.host}:{s.influx_rpc_port}"

[stream]
data_dir = "{self.root / "faust"}"
"""
        self.config_file.write_text(text)

    # ----- processes ---------------------------------------------------------------------------
    def _running_pid(self, name: str) -> int | None:
        f = self._pid_file(name)
        try:
            pid = int(f.read_text().strip())
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as fh:  # a zombie is not running
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return None
        except (OSError, ValueError):
            return None
        return pid

    def _spawn(self, name: str, argv: list[str], log: Path) -> int:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.root,
            )
        self._pid_file(name).write_text(str(proc.pid))
        _CHILDREN[proc.pid] = proc
        return proc.pid

    def _commands(self) -> dict[str, tuple[Callable[[], list[str]], Path, int]]:
        root = self.root
        s = self.s

        def mosquitto() -> list[str]:
            return [
                _which(s.mosquitto_bin, "mosquitto"),
                "-c",
                str(root / "mosquitto/mosquitto.conf"),
            ]

        def influxd() -> list[str]:
            return [
                _which(s.influxd_bin, "influxdb"),
                "run",
                "-config",
                str(root / "influxdb/influxdb.conf"),
            ]

        def kafka(node: kb.KafkaNode) -> Callable[[], list[str]]:
            def argv() -> list[str]:
                libs = self._format_kafka([node])
                return kb.java_command(
                    s.java_bin, libs, s.kafka_heap_mb, "kafka.Kafka", str(node.properties)
                )

            return argv

        out: dict[str, tuple[Callable[[], list[str]], Path, int]] = {
            "mosquitto": (mosquitto, root / "mosquitto" / "stdout.log", s.mqtt_service_port),
        }
        for node in self.kafka_nodes:
            out[node.name] = (kafka(node), node.log_file, node.client_port)
        out["influxdb"] = (influxd, root / "influxdb" / "influxd.log", s.influx_port)
        return out

    def _format_kafka(self, nodes: list[kb.KafkaNode]) -> Path:
        """Format the log dirs of ``nodes`` not formatted yet, all at once; the jar directory.

        Each format is a JVM of its own (seconds of start-up): a three-node cluster formats its
        nodes side by side instead of one after the other.
        """
        libs = kb.libs_dir()
        if not kb.have_jars(libs):
            raise StackError(
                f"Apache Kafka {kb.KAFKA_VERSION} is not fetched yet: run "
                "`carpulse stack fetch-kafka` (or `make setup`)"
            )
        kb.java_version(self.s.java_bin)
        users = {u: self.kafka_secret_file(u).read_text().strip() for u in KAFKA_USERS}
        cluster_id = (self.root / "kafka" / "cluster.id").read_text().strip()

        def fmt(node: kb.KafkaNode) -> bool:
            return kb.format_storage(node, cluster_id, users, java_bin=self.s.java_bin, libs=libs)

        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            list(pool.map(fmt, nodes))  # re-raises the first StackError
        return libs

    # ----- health ------------------------------------------------------------------------------
    def _check_mosquitto(self) -> str | None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        user, pw = "carpulse-bridge", self.secret_file("carpulse-bridge").read_text().strip()
        try:
            with (
                socket.create_connection((self.s.host, self.s.mqtt_service_port), timeout=2) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(_mqtt_connect_packet("carpulse-health", user, pw))
                head = tls.recv(4)
        except (OSError, ssl.SSLError) as err:
            return f"MQTT over TLS on {self.s.host}:{self.s.mqtt_service_port}: {err}"
        if len(head) < 4 or head[0] != 0x20 or head[3] != 0:
            return f"MQTT CONNACK refused the service login: {head!r}"
        return None

    def kafka_settings(self) -> Any:
        """The ``[kafka]`` settings of this stack (the admin account by default)."""
        from core.config import load_settings

        return load_settings(self.config_file).kafka

    def _check_kafka(self, node: kb.KafkaNode | None = None) -> str | None:
        """One node answers (or, without ``node``, the whole cluster has all its brokers)."""
        return kb.problem(self.kafka_settings(), len(self.kafka_nodes), node)

    def _check_influxdb(self) -> str | None:
        url = f"http://{self.s.host}:{self.s.influx_port}/ping"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                ok = resp.status == 204
                version = resp.headers.get("X-Influxdb-Version", "?")
        except (urllib.error.URLError, OSError) as err:
            return f"InfluxDB {url}: {err}"
        if not ok:
            return f"InfluxDB {url} answered {resp.status}"
        if not version.startswith("1."):
            return f"InfluxDB at {url} is version {version}, expected 1.x"
        return None

    def _check_crm(self) -> str | None:
        path = self.root / "crm.sqlite"
        try:
            with sqlite3.connect(path) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as err:
            return f"CRM database {path}: {err}"
        return None

    def check(self, name: str) -> str | None:
        """``None`` if ``name`` is healthy, else what is wrong."""
        if name.startswith("kafka-"):
            nodes = {n.name: n for n in self.kafka_nodes}
            return self._check_kafka(nodes[name]) if name in nodes else f"no {name}"
        if name == "kafka":
            return self._check_kafka()
        return {
            "mosquitto": self._check_mosquitto,
            "influxdb": self._check_influxdb,
            "crm": self._check_crm,
        }[name]()

    # ----- public operations -----------------------------------------------------------------
    def up(self, progress: Callable[[str], None] = lambda _m: None) -> list[ServiceStatus]:
        """Start every service that is not running and wait until all are healthy (idempotent)."""
        self.prepare()
        commands = self._commands()
        todo: list[str] = []
        for name, (_argv_fn, _log, port) in commands.items():
            if self.check(name) is None:
                progress(f"{name}: already up")
                continue
            if self._running_pid(name) is None and kb.port_open(self.s.host, port):
                raise StackError(
                    f"{name}: port {self.s.host}:{port} is in use by another program; "
                    f"stop it or choose another port (see `carpulse config show`, section [stack])"
                )
            todo.append(name)
        # Mosquitto and InfluxDB first: they start while the Kafka nodes format their storage
        todo.sort(key=lambda n: n.startswith("kafka-"))
        started: dict[str, float] = {}
        formatted = False
        for name in todo:
            argv_fn, log, _port = commands[name]
            if self._running_pid(name) is None:
                if name.startswith("kafka-") and not formatted:  # every node at once
                    self._format_kafka(
                        [
                            n
                            for n in self.kafka_nodes
                            if n.name in todo and self._running_pid(n.name) is None
                        ]
                    )
                    formatted = True
                argv = argv_fn()
                pid = self._spawn(name, argv, log)
                progress(f"{name}: started (pid {pid}), log {log}")
            started[name] = time.monotonic()
        for name, t0 in started.items():
            self._wait_healthy(name, commands[name][1], t0)
        t0 = time.monotonic()
        while (problem := self.check("kafka")) is not None:
            if time.monotonic() - t0 > self.s.start_timeout_s:
                raise StackError(f"Kafka cluster did not form: {problem}")
            time.sleep(0.5)
        if (err := self.check("crm")) is not None:
            raise StackError(err)
        self._migrate_crm(progress)
        self._provision_topics(progress)
        return self.status()

    def start_service(self, name: str) -> int:
        """Start one stopped service (a Kafka node after a fault test) and wait for it."""
        argv_fn, log, _port = self._commands()[name]
        pid = self._running_pid(name)
        if pid is None:
            pid = self._spawn(name, argv_fn(), log)
        self._wait_healthy(name, log, time.monotonic())
        return pid

    def kill_service(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one service's process group (fault injection) and reap it."""
        pid = self._running_pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        child = _CHILDREN.get(pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self._running_pid(name) is not None:
            if child is not None and child.poll() is not None:
                break
            time.sleep(0.1)
        if child is not None and child.poll() is not None:
            _CHILDREN.pop(pid, None)
        if self._running_pid(name) is None:
            self._pid_file(name).unlink(missing_ok=True)

    def _migrate_crm(self, progress: Callable[[str], None]) -> None:
        """`carpulse crm migrate` for the local CRM, so the quick start stays one command."""
        from crm.migrate import migrate
        from crm.store import CrmStore

        store = CrmStore.from_url(self.crm_url)
        try:
            before, after = migrate(store.engine)
        finally:
            store.engine.dispose()
        if before != after:
            progress(f"crm: migrated {self.root / 'crm.sqlite'} ({before or 'empty'} -> {after})")

    def _provision_topics(self, progress: Callable[[str], None]) -> None:
        kb.provision(self.config_file, progress)

    def _wait_healthy(self, name: str, log: Path, t0: float) -> None:
        problem: str | None = "not checked"
        while time.monotonic() - t0 < self.s.start_timeout_s:
            problem = self.check(name)
            if problem is None:
                return
            if self._running_pid(name) is None:
                break
            time.sleep(0.2)
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
        raise StackError(
            f"{name} did not become healthy: {problem}\n--- last lines of {log} ---\n{tail}"
        )

    def status(self) -> list[ServiceStatus]:
        s = self.s
        addresses = {
            "mosquitto": f"mqtts://{s.host}:{s.mqtt_device_port} (devices), :{s.mqtt_service_port} (services)",
            **{n.name: f"kafka://{n.host}:{n.client_port} (SASL_SSL)" for n in self.kafka_nodes},
            "influxdb": f"http://{s.host}:{s.influx_port}",
            "crm": self.crm_url,
        }
        out = []
        for name, address in addresses.items():
            problem = (
                self.check(name) if (self.root / "pki" / "ca.pem").exists() else "not prepared"
            )
            pid = None if name == "crm" else self._running_pid(name)
            out.append(ServiceStatus(name, problem is None, pid, address, problem or "ok"))
        return out

    def down(self, progress: Callable[[str], None] = lambda _m: None) -> None:
        """Stop every service this stack started (idempotent)."""
        kafka = [f"kafka-{i}" for i in range(9, 0, -1)]  # every node a wider stack may have left
        # all Kafka nodes at once: stopped one by one, the last ones lose their controller
        # quorum and wait out the controlled-shutdown timeout
        signalled: set[str] = set()
        for name in kafka:
            pid = self._running_pid(name)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                signalled.add(name)
        for name in ("influxdb", *kafka, "mosquitto"):
            pid = self._running_pid(name)
            if pid is None:
                self._pid_file(name).unlink(missing_ok=True)
                if name in signalled:
                    progress(f"{name}: stopped")
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            # a Kafka node shuts down in order (leaders moved, logs closed clean)
            deadline = time.monotonic() + (40 if name.startswith("kafka") else 10)
            while time.monotonic() < deadline and self._running_pid(name) is not None:
                time.sleep(0.1)
            if self._running_pid(name) is not None:
                os.killpg(pid, signal.SIGKILL)
            child = _CHILDREN.pop(pid, None)
            if child is not None:
                child.wait(10)
            self._pid_file(name).unlink(missing_ok=True)
            progress(f"{name}: stopped")


@contextlib.contextmanager
def throwaway_stack(data_dir: Path, **overrides: Any) -> Iterator[Stack]:
    """A whole stack on free ports (``free_stack_settings``) in ``data_dir``: up for the ``with``
    block, down after it, and down too when it fails to come up (no stray brokers)."""
    stack = Stack(free_stack_settings(data_dir, **overrides))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def _mqtt_connect_packet(client_id: str, user: str, password: str) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT (clean session, user name and password)."""

    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack(">H", len(b)) + b

    var = s("MQTT") + bytes((4, 0xC2)) + struct.pack(">H", 10)
    payload = s(client_id) + s(user) + s(password)
    body = var + payload
    length = len(body)
    enc = bytearray()
    while True:
        byte, length = length % 128, length // 128
        enc.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes((0x10,)) + bytes(enc) + body
