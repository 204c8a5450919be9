"""Apache Kafka for the local stack: the jars from Maven Central, KRaft nodes, SCRAM users and ACLs.

The broker is the Maven artifact ``org.apache.kafka:kafka_2.13`` (pinned in ``pom.xml`` beside
this file), fetched once by ``carpulse stack fetch-kafka`` (``make setup`` runs it) into a jar
cache and run on Java 17. Each node is a combined KRaft controller and broker with three
listeners::

    CLIENT      SASL_SSL, SCRAM-SHA-512   every carpulse component, one principal each
    INTERNAL    SASL_PLAINTEXT, PLAIN     broker to broker (loopback), as carpulse-admin
    CONTROLLER  SASL_PLAINTEXT, PLAIN     the KRaft quorum (loopback), as carpulse-admin

The StandardAuthorizer allows nothing that ``ACLS`` does not grant; ``carpulse-admin`` is the
only super user. SCRAM credentials are written when the storage is formatted (once).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import shutil
import socket
import subprocess
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import StackError
from core.topics import (
    KAFKA_ALERTS,
    KAFKA_ANOMALIES,
    KAFKA_CMD_ACK,
    KAFKA_DAILY,
    KAFKA_DEADLETTER,
    KAFKA_EVENTS,
    KAFKA_INFLUX_RETRY,
    KAFKA_PREDICTIONS,
    KAFKA_PRIVACY,
    KAFKA_STATUS,
    KAFKA_TELEMETRY,
    KAFKA_TRIPS,
    KAFKA_VEHICLE_STATE,
)

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("pom.xml")
ADMIN_USER = "carpulse-admin"
# component -> principal; the stack writes each one's password under secrets/
PRINCIPALS = {
    "bridge": "carpulse-bridge",
    "stream": "carpulse-stream",
    "crm": "carpulse-crm",
    "dashboards": "carpulse-dashboards",
}
# Faust app ids (consumer groups, changelog and assignor topics) start with these prefixes.
STREAM_PREFIX = "carpulse-stream"
CRM_PREFIX = "carpulse-crm"

# Kafka's wire enums (org.apache.kafka.common.acl / resource).
_RESOURCE = {"topic": 2, "group": 3, "cluster": 4}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {
    "all": 2,
    "read": 3,
    "write": 4,
    "create": 5,
    "delete": 6,
    "describe": 8,
    "describe_configs": 10,
}
_ALLOW = 3

BRIDGE_OUT = (KAFKA_TELEMETRY, KAFKA_EVENTS, KAFKA_STATUS, KAFKA_CMD_ACK, KAFKA_DEADLETTER)
STREAM_IN = (KAFKA_TELEMETRY, KAFKA_EVENTS, KAFKA_STATUS, KAFKA_CMD_ACK, KAFKA_INFLUX_RETRY)
STREAM_OUT = (
    KAFKA_VEHICLE_STATE,
    KAFKA_ANOMALIES,
    KAFKA_PREDICTIONS,
    KAFKA_TRIPS,
    KAFKA_DAILY,
    KAFKA_ALERTS,
    KAFKA_DEADLETTER,
    KAFKA_INFLUX_RETRY,
)
CRM_IN = (KAFKA_PREDICTIONS, KAFKA_ALERTS, KAFKA_EVENTS, KAFKA_ANOMALIES)
DASHBOARDS_IN = (KAFKA_VEHICLE_STATE, KAFKA_ALERTS, KAFKA_PREDICTIONS, KAFKA_STATUS)


@dataclass(frozen=True)
class Acl:
    """Allow ``principal`` to do ``operation`` on a resource (literal name or prefix)."""

    principal: str
    resource: str  # topic, group, cluster
    name: str
    operation: str
    pattern: str = "literal"


def _topic_acls(user: str, names: tuple[str, ...], *ops: str) -> list[Acl]:
    return [Acl(f"User:{user}", "topic", n, op) for n in names for op in ops]


def _prefix_acls(user: str, prefix: str) -> list[Acl]:
    return [
        Acl(f"User:{user}", "topic", prefix, "all", "prefixed"),
        Acl(f"User:{user}", "group", prefix, "all", "prefixed"),
    ]


def component_acls() -> list[Acl]:
    """Exactly the topics and groups each component uses, and nothing else."""
    b, s, c, d = (PRINCIPALS[k] for k in ("bridge", "stream", "crm", "dashboards"))
    return [
        # the bridge writes what devices send and dead-letters what it refuses
        *_topic_acls(b, BRIDGE_OUT, "write", "create", "describe_configs"),
        # the stream worker: its inputs, its outputs, its own changelogs and group
        *_topic_acls(s, STREAM_IN, "read"),
        *_topic_acls(s, STREAM_OUT, "write", "create"),
        *_topic_acls(s, (KAFKA_VEHICLE_STATE,), "describe_configs"),
        *_prefix_acls(s, STREAM_PREFIX),
        # ... and the CRM's location policies (stream.privacy; written by the CRM only)
        *_topic_acls(s, (KAFKA_PRIVACY,), "read"),
        # the CRM worker: the stream's alerts, predictions and events; dead letters
        *_topic_acls(c, CRM_IN, "read"),
        *_topic_acls(c, (KAFKA_DEADLETTER,), "write"),
        *_topic_acls(c, (KAFKA_PRIVACY,), "write"),
        *_prefix_acls(c, CRM_PREFIX),
        # the dashboards only read (no group: each server reads from the start)
        *_topic_acls(d, DASHBOARDS_IN, "read"),
    ]


async def apply_acls(admin_options: dict[str, Any], acls: list[Acl]) -> None:
    """Create ``acls`` on the cluster (idempotent: an existing binding is left as it is).

    aiokafka's admin client has no ACL call; CreateAcls (API key 30, v1) is sent through it.
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    admin = AIOKafkaAdminClient(**admin_options)
    await admin.start()
    try:
        for acl in acls:
            req = CreateAclsRequest(
                resource_type=_RESOURCE[acl.resource],
                resource_name=acl.name,
                resource_pattern_type_filter=_PATTERN[acl.pattern],
                principal=acl.principal,
                host="*",
                operation=_OPERATION[acl.operation],
                permission_type=_ALLOW,
            )
            resp = await admin._send_request(req)
            for code, message in resp.creation_responses:
                if code:
                    raise StackError(f"Kafka refused ACL {acl}: error {code} {message}")
    finally:
        await admin.close()


# ----- the jars ------------------------------------------------------------------------------
def libs_dir() -> Path:
    """Where the broker's jars are cached (``$CARPULSE_KAFKA_LIBS`` overrides)."""
    env = os.environ.get("CARPULSE_KAFKA_LIBS")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "carpulse" / f"kafka-{KAFKA_VERSION}" / "libs"


def have_jars(libs: Path | None = None) -> bool:
    libs = libs or libs_dir()
    return (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file() and (libs / ".complete").exists()


def fetch(progress: Callable[[str], None] = lambda _m: None, java_bin: str = "java") -> Path:
    """Fetch the pinned broker and its runtime dependencies with Maven (idempotent)."""
    libs = libs_dir()
    if have_jars(libs):
        progress(f"kafka {KAFKA_VERSION}: jars cached in {libs}")
        return libs
    java_version(java_bin)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven (mvn) not found: it fetches Apache Kafka from Maven Central; "
            "install it with `apt-get install -y maven` (or `make setup`)"
        )
    progress(f"kafka {KAFKA_VERSION}: fetching the broker from Maven Central into {libs}")
    tmp = libs.with_name(libs.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "-C",  # strict checksums: a jar whose checksum does not match fails the fetch
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
            f"-Dkafka.version={KAFKA_VERSION}",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-12:])
        raise StackError(
            "Maven could not fetch Apache Kafka (is Maven Central or a mirror in "
            f"~/.m2/settings.xml reachable?):\n{tail}"
        )
    (tmp / ".complete").write_text(KAFKA_VERSION + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    progress(f"kafka {KAFKA_VERSION}: {len(list(libs.glob('*.jar')))} jars in {libs}")
    return libs


def java_version(java_bin: str = "java") -> int:
    """The major version of ``java_bin``; a clear error when it is missing or older than 17."""
    path = shutil.which(java_bin) or (java_bin if os.path.isfile(java_bin) else None)
    if path is None:
        raise StackError(
            f"Java ({java_bin}) not found: Apache Kafka needs Java 17 or newer; "
            "install it with `apt-get install -y openjdk-17-jre-headless` (or `make setup`)"
        )
    out = subprocess.run([path, "-version"], capture_output=True, text=True).stderr
    try:
        text = out.split('"')[1]
        major = int(text.split(".")[0] if not text.startswith("1.") else text.split(".")[1])
    except (IndexError, ValueError) as err:
        raise StackError(f"cannot read the Java version from `{path} -version`: {out!r}") from err
    if major < 17:
        raise StackError(f"Apache Kafka {KAFKA_VERSION} needs Java 17 or newer; {path} is {major}")
    return major


# ----- nodes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class KafkaNode:
    """One combined controller+broker of the local cluster."""

    node_id: int
    host: str
    client_port: int
    internal_port: int
    controller_port: int
    root: Path  # <data dir>/kafka/node-<id>

    @property
    def name(self) -> str:
        return f"kafka-{self.node_id}"

    @property
    def log_dir(self) -> Path:
        return self.root / "data"

    @property
    def properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.root / "kafka.log"


def nodes(data_dir: Path, host: str, base_port: int, count: int) -> list[KafkaNode]:
    """Node ``i`` (from 1) listens on ``base_port + 3*(i-1)`` (+1 internal, +2 controller)."""
    return [
        KafkaNode(
            i + 1,
            host,
            base_port + 3 * i,
            base_port + 3 * i + 1,
            base_port + 3 * i + 2,
            data_dir / "kafka" / f"node-{i + 1}",
        )
        for i in range(count)
    ]


def _jaas_plain(admin_password: str) -> str:
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{ADMIN_USER}" password="{admin_password}" '
        f'user_{ADMIN_USER}="{admin_password}";'
    )


def server_properties(
    node: KafkaNode,
    cluster: list[KafkaNode],
    *,
    admin_password: str,
    keystore_pem: Path,
) -> str:
    """``server.properties`` of one node (secrets inside: the file is written 0600)."""
    n = len(cluster)
    replication = min(3, n)
    min_isr = 2 if n >= 3 else 1
    voters = ",".join(f"{c.node_id}@{c.host}:{c.controller_port}" for c in cluster)
    jaas = _jaas_plain(admin_password)
    return f"""# Generated by carpulse stack; edits are overwritten.
process.roles=broker,controller
node.id={node.node_id}
controller.quorum.voters={voters}
listeners=CLIENT://{node.host}:{node.client_port},INTERNAL://{node.host}:{node.internal_port},CONTROLLER://{node.host}:{node.controller_port}
advertised.listeners=CLIENT://{node.host}:{node.client_port},INTERNAL://{node.host}:{node.internal_port}
listener.security.protocol.map=CLIENT:SASL_SSL,INTERNAL:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
sasl.mechanism.inter.broker.protocol=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.internal.sasl.enabled.mechanisms=PLAIN
listener.name.internal.plain.sasl.jaas.config={jaas}
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={jaas}
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={keystore_pem}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{ADMIN_USER}
allow.everyone.if.no.acl.found=false
log.dirs={node.log_dir}
num.partitions=4
default.replication.factor={replication}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=10
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
auto.create.topics.enable=false
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
# the log cleaner compacts vehicle-state and Faust's changelogs; small buffers for a laptop
log.cleaner.dedupe.buffer.size=8388608
log.cleaner.backoff.ms=1000
log.retention.check.interval.ms=10000
# flush to the OS on every write is the OS's job; durability comes from acks=all + replicas
controlled.shutdown.enable=true
"""


LOG4J = """# Generated by carpulse stack.
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
"""


def java_command(java_bin: str, libs: Path, heap_mb: int, main: str, *args: str) -> list[str]:
    log4j = libs.parent / "log4j2.properties"
    if not log4j.exists():
        log4j.write_text(LOG4J)
    return [
        java_bin,
        f"-Xmx{heap_mb}m",
        f"-Xms{min(heap_mb, 256)}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def format_storage(
    node: KafkaNode,
    cluster_id: str,
    users: dict[str, str],
    *,
    java_bin: str,
    libs: Path,
) -> bool:
    """Format the node's log dir once (SCRAM users included); False when already formatted."""
    if (node.log_dir / "meta.properties").exists():
        return False
    scram: list[str] = []
    for user, password in users.items():
        scram += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
    cmd = java_command(
        java_bin,
        libs,
        256,
        "kafka.tools.StorageTool",
        "format",
        f"--cluster-id={cluster_id}",  # one token: an id made elsewhere may start with "-"
        "-c",
        str(node.properties),
        *scram,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(
            f"formatting Kafka storage {node.log_dir} failed:\n{(proc.stdout + proc.stderr)[-2000:]}"
        )
    return True


# ----- what the local stack does with them ------------------------------------------------------
def new_cluster_id() -> str:
    """A random cluster id as Kafka makes them (URL-safe base64 of 16 bytes) that does not start
    with "-": the storage tool's argument parser takes "-t -x..." for a missing value (one stack
    start in 64 failed with "argument --cluster-id/-t: expected one argument")."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def write_configs(d: Path, pki: Any, cluster: list[KafkaNode], admin_password: str) -> None:
    """server.properties per node, the PEM keystore and the cluster id (kept once made)."""
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    id_file = d / "cluster.id"
    if not id_file.exists():
        id_file.write_text(new_cluster_id())
    keystore = d / "keystore.pem"
    keystore.write_text(
        pki.server_key.read_text() + pki.server_cert.read_text() + pki.ca_cert.read_text()
    )
    os.chmod(keystore, 0o600)
    for node in cluster:
        node.root.mkdir(parents=True, exist_ok=True)
        text = server_properties(
            node, cluster, admin_password=admin_password, keystore_pem=keystore
        )
        fd = os.open(node.properties, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)


def problem(kafka: Any, want: int, node: KafkaNode | None = None) -> str | None:
    """``None`` when ``node`` is registered (or, without one, all ``want`` brokers are), else why.

    A SASL_SSL login and DescribeCluster with the admin account of ``kafka`` (its settings).
    """
    if node is not None:
        if not port_open(node.host, node.client_port):
            return f"Kafka {node.name} on {node.host}:{node.client_port}: not listening"
        kafka = kafka.model_copy(update={"bootstrap": f"{node.host}:{node.client_port}"})

    async def brokers() -> set[int]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=5000)
        try:
            await asyncio.wait_for(admin.start(), 5)
            info = await asyncio.wait_for(admin.describe_cluster(), 5)
            return {int(b["node_id"]) for b in info.get("brokers", [])}
        finally:
            await admin.close()

    try:
        ids = asyncio.run(brokers())
    except Exception as err:  # any client failure is "not healthy yet", said plainly
        return f"Kafka {kafka.bootstrap}: {type(err).__name__}: {err}"
    finally:
        # aiokafka leaves a connection unclosed when bootstrap fails (a node still starting):
        # collect it here, not as a ResourceWarning in whatever runs next
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    if node is not None:
        return None if node.node_id in ids else f"Kafka {node.name} not registered yet"
    if len(ids) < want:
        return f"Kafka {kafka.bootstrap}: {len(ids)} of {want} brokers registered"
    return None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def provision(config_file: Path, progress: Callable[[str], None]) -> None:
    """Create every carpulse topic and each component's ACLs, as an admin would.

    Done by ``stack up`` before any client runs, so topics get their partitions, replication,
    ``min.insync.replicas`` and (``vehicle-state``) compaction from the start; the brokers never
    auto-create topics. Skipped without the ``stream`` extra.
    """
    try:
        from stream.app import prepare_output_topics
        from stream.bridge import ensure_topics
        from stream.privacy import ensure_privacy_topic
    except ImportError:
        progress("kafka topics: not provisioned (install carpulse[stream])")
        return
    from core.config import load_settings

    settings = load_settings(config_file)
    k = settings.kafka

    async def run() -> None:
        await ensure_topics(k, k.partitions, k.replication, list(BRIDGE_OUT), None)
        await prepare_output_topics(settings, None)
        await ensure_privacy_topic(k.client_options(), k.replication, k.min_insync_replicas)
        await apply_acls(k.client_options(), component_acls())

    asyncio.run(run())
    progress("kafka topics and ACLs: provisioned")
