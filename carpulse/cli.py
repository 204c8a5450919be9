"""The ``carpulse`` command line: one entry point, a subcommand group per component.

Heavy modules are imported inside each command, so ``carpulse edge ...`` on a Raspberry Pi with
only ``carpulse[edge]`` installed never imports Faust, Kafka clients or SQLAlchemy.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from carpulse.dataops_cli import backup_cmd, influx_app, restore_cmd
from carpulse.install_check import doctor_cmd
from core.config import CarpulseSettings, cli_settings, masked_dump, start_cli
from core.errors import CarpulseError
from core.logs import FORMATS, service_logging, start_cli_logging
from crm.admin_cli import registry_app
from crm.cli import crm_app, report_app  # typer only: SQLAlchemy/Faust load inside the commands
from dashboards.cli import users_app
from dashboards.member_cli import member_app
from models.ids.cli import ids_app

app = typer.Typer(
    help="carpulse: streaming telematics from the car to the dealer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(
    help="The local stack: Mosquitto, Apache Kafka (KRaft), InfluxDB 1.x, CRM database."
)
pki_app = typer.Typer(help="The local PKI: CA, broker and device certificates.")
edge_app = typer.Typer(help="The edge agent.")
stream_app = typer.Typer(help="The cloud side: ingest bridge and Faust worker.")
config_app = typer.Typer(help="Configuration.")
app.add_typer(stack_app, name="stack")
app.add_typer(pki_app, name="pki")
app.add_typer(edge_app, name="edge")
app.add_typer(stream_app, name="stream")
app.add_typer(config_app, name="config")
gate_app = typer.Typer(help="Dealer gate cameras: licence plates and consented faces.")
app.add_typer(gate_app, name="gate")
app.add_typer(crm_app, name="crm")
app.add_typer(report_app, name="report")
app.add_typer(users_app, name="users")
app.add_typer(registry_app, name="registry")
# data operations (issue 17 item 4): retention, backup and restore
app.add_typer(influx_app, name="influx")
app.command("backup")(backup_cmd)
app.command("restore")(restore_cmd)
devices_app = typer.Typer(help="Cars and gate cameras: certificate, broker identity, registry.")
app.add_typer(devices_app, name="devices")
# the mobile member page (issue 19): sign-in links
app.add_typer(member_app, name="member")
# CAN intrusion profiles for the edge agent (issue 18 item 4)
app.add_typer(ids_app, name="ids")
# another distribution with our top-level names (issue 16 item 6)
app.command("doctor")(doctor_cmd)

_state: dict[str, Any] = {}

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (else $CARPULSE_CONFIG).", show_default=False
    ),
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("carpulse")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"carpulse {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help="'text' or 'json' (one object per line) for the services' logs; default \\[log] format.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    if log_format is not None and log_format not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--log-format")
    start_cli_logging(log_format, logging.DEBUG if verbose else logging.INFO)  # type: ignore[arg-type]
    if not verbose:  # aiokafka logs every SASL login at INFO
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    _state["config"] = config
    start_cli(config)


def settings() -> CarpulseSettings:
    """This invocation's settings: defaults < ``--config``/$CARPULSE_CONFIG < environment."""
    return cli_settings()


def _service_logging(component: str, s: CarpulseSettings | None = None) -> None:
    """Log as ``component`` in the format of ``--log-format``, else of ``[log] format``."""
    service_logging(component, (s or settings()).log.format)


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


# ----- stack ---------------------------------------------------------------------------------
@stack_app.command("up")
def stack_up(
    kafka_brokers: Annotated[
        int | None,
        typer.Option(
            "--kafka-brokers",
            min=1,
            max=9,
            help="Kafka brokers (3: replication 3, min.insync.replicas 2); default \\[stack].",
        ),
    ] = None,
) -> None:
    """Start the local stack (idempotent) and print where each service listens."""
    from carpulse.stack import Stack

    stack_settings = settings().stack
    if kafka_brokers is not None:
        stack_settings = stack_settings.model_copy(update={"kafka_brokers": kafka_brokers})
    stack = Stack(stack_settings)
    for st in stack.up(progress=_echo):
        typer.echo(f"{st.name:10} {'up' if st.healthy else 'DOWN':5} {st.address}")
    typer.echo(f"config for the other components: {stack.config_file}")


@stack_app.command("fetch-kafka")
def stack_fetch_kafka() -> None:
    """Fetch the pinned Apache Kafka broker and its dependencies from Maven Central (cached)."""
    from carpulse import kafka_broker

    kafka_broker.fetch(progress=_echo, java_bin=settings().stack.java_bin)


@stack_app.command("down")
def stack_down() -> None:
    """Stop the local stack (idempotent)."""
    from carpulse.stack import Stack

    Stack(settings().stack).down(progress=_echo)


@stack_app.command("status")
def stack_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Health of each service; exit code 1 if any is down."""
    from carpulse.stack import Stack

    rows = Stack(settings().stack).status()
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows]))
    else:
        for st in rows:
            typer.echo(f"{st.name:10} {'up' if st.healthy else 'DOWN':5} {st.address}  {st.detail}")
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


# ----- pki -----------------------------------------------------------------------------------
@pki_app.command("init")
def pki_init() -> None:
    """Create the local CA and the broker's certificate (idempotent)."""
    from carpulse.pki import LocalPKI

    pki = LocalPKI(Path(settings().stack.data_dir) / "pki")
    pki.init()
    typer.echo(f"CA: {pki.ca_cert}\nserver: {pki.server_cert}")


@pki_app.command("device")
def pki_device(
    device_id: str,
    renew: Annotated[
        bool, typer.Option(help="Issue a new certificate (after a revocation).")
    ] = False,
) -> None:
    """Issue (or show) the client certificate of a device; its CN is the device id."""
    from carpulse.stack import Stack

    cert, key = Stack(settings().stack).provision_device(device_id, renew=renew)
    typer.echo(f"cert: {cert}\nkey: {key}")


@pki_app.command("broker-cert")
def pki_broker_cert(
    names: Annotated[
        list[str], typer.Argument(help="Host names and IP addresses the broker is reached at.")
    ],
) -> None:
    """Issue a broker certificate for production names (e.g. mosquitto mqtt.dealer.example),
    signed by the local CA that devices and services trust (ca.pem)."""
    from carpulse.pki import LocalPKI

    pki = LocalPKI(Path(settings().stack.data_dir) / "pki")
    cert, key = pki.broker_cert(names)
    typer.echo(f"cert: {cert}\nkey: {key}\nCA: {pki.ca_cert}")


@pki_app.command("revoke")
def pki_revoke(device_id: str) -> None:
    """Revoke a device's certificate: the broker refuses it from now on (CRL, session ended)."""
    from carpulse.stack import Stack

    serial = Stack(settings().stack).revoke_device(device_id)
    typer.echo(f"revoked {device_id} (serial {serial:x})")


@pki_app.command("command-key")
def pki_command_key(
    overwrite: Annotated[bool, typer.Option(help="Replace an existing key pair.")] = False,
) -> None:
    """Create the Ed25519 command-signing key pair (private: cloud only; public: every device)."""
    from core.signing import generate_keypair, key_id, load_public_key

    priv, pub = generate_keypair(Path(settings().stack.data_dir) / "pki", overwrite=overwrite)
    typer.echo(
        f"private (cloud only, 0600): {priv}\npublic (install on devices): {pub}\n"
        f"key id (commands carry it; revoke it with [edge.commands] revoked_key_ids): "
        f"{key_id(load_public_key(pub))}"
    )


# ----- devices -------------------------------------------------------------------------------
@devices_app.command("enroll")
def devices_enroll(
    device_id: Annotated[str, typer.Argument(help="Device id (= certificate CN, MQTT client id).")],
    vin: Annotated[str | None, typer.Option(help="The car's VIN (17 characters).")] = None,
    gate: Annotated[
        bool, typer.Option("--gate", help="A dealer gate camera (no VIN) instead of a car.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Copy the files the Pi needs into this folder.")
    ] = None,
    dealer: Annotated[str, typer.Option(help="Dealer of a vehicle the CRM lacks.")] = "default",
    db: Annotated[
        str | None, typer.Option("--db", help="CRM database URL (default \\[crm]).")
    ] = None,
    no_vin_check_digit: Annotated[
        bool, typer.Option("--no-vin-check-digit", help="Accept a VIN without a check digit.")
    ] = False,
) -> None:
    """Issue the device certificate, add its broker identity and register it in the CRM (device
    -> VIN, or a gate camera), in one step; running it again changes nothing."""
    from carpulse.devices import enroll

    done = enroll(
        settings(), device_id, vin=vin, gate=gate, dealer=dealer, out=out, db=db,
        vin_check_digit=not no_vin_check_digit,
    )  # fmt: skip
    what = "gate camera" if done.gate else f"VIN {done.vin}"
    typer.echo(
        f"enrolled {done.device_id}: {what} ({done.registry})\ncert: {done.cert}\nkey: {done.key}"
    )
    typer.echo("the stream learns it from the next `carpulse registry export`")
    if done.files:
        typer.echo("copy to the Pi (owner carpulse; the key stays 0600):")
        for src, dst in done.files.items():
            typer.echo(f"  {src} -> {dst}")
    else:
        typer.echo(f"copy to the Pi: {done.ca} {done.cert} {done.key} (or use --out DIR)")


# ----- config --------------------------------------------------------------------------------
@config_app.command("show")
def config_show() -> None:
    """Print the effective configuration (defaults < file < environment), secrets masked."""
    typer.echo(json.dumps(masked_dump(settings()), indent=2))


# ----- replay / edge -------------------------------------------------------------------------
@app.command("replay")
def replay(
    log: Annotated[Path, typer.Argument(help="CAN log: candump -L (.log), Vector ASC or BLF.")],
    dbc: Annotated[Path, typer.Option(help="DBC file that decodes this car's frames.")],
    device: Annotated[str, typer.Option(help="Device id (its certificate CN).")],
    rate: Annotated[
        str, typer.Option(help="'max' (as fast as it goes), 'real' (log speed) or N x log speed.")
    ] = "max",
    strict: Annotated[bool, typer.Option(help="Strict DBC parsing.")] = True,
    mapping: Annotated[
        str,
        typer.Option(
            help="VSS mapping: 'auto' (the shipped one for this DBC), a name (gt350), a YAML "
            "file, or 'none' (private Vehicle.Private.Dbc names)."
        ),
    ] = "auto",
    connect_timeout: Annotated[
        float, typer.Option(help="Give up when the broker has not answered within this (s).")
    ] = 15.0,
) -> None:
    """Send a CAN log through the edge agent (decoder, VSS mapping, durable queue, MQTT/TLS)."""
    from carpulse.local_files import with_device_certs
    from edge.jit_cache import use_cache_dir

    s = with_device_certs(settings(), device)
    use_cache_dir(s.edge.numba_cache_dir)  # before the decoder kernel is imported
    from edge.aot import load_agent_kernels

    load_agent_kernels(s)  # the kernels `edge run` uses: ahead of time when built
    from edge.replay import raise_on_error, replay_log

    report = replay_log(
        log, dbc, device, s, mapping=mapping, rate=rate, strict=strict, progress=True,
        connect_timeout_s=connect_timeout,
    )  # fmt: skip
    typer.echo(json.dumps(report))
    raise_on_error(report)


@edge_app.command("doctor")
def edge_doctor(
    device: Annotated[str, typer.Option(help="Device id.")] = "",
    can: Annotated[list[str] | None, typer.Option("--can", help="CAN interface to check.")] = None,
    serial: Annotated[
        list[str] | None, typer.Option("--serial", help="Serial device to check.")
    ] = None,
    command_key: Annotated[
        Path | None, typer.Option(help="Command-verification public key to check.")
    ] = None,
) -> None:
    """Check interfaces, permissions, certificates and broker reachability, one line each."""
    from carpulse.local_files import with_device_certs
    from edge.doctor import run_doctor

    s = settings()
    dev = device or s.edge.device_id
    s = with_device_certs(s, dev)
    checks = run_doctor(s, dev, can=can or (), serial=serial or (), command_key=command_key)
    for check in checks:
        typer.echo(check.line())
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


@edge_app.command("run")
def edge_run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="edge.toml ([edge] and its tables).")
    ] = None,
    seconds: Annotated[
        float, typer.Option(help="Stop after this long (0 = run until SIGTERM).")
    ] = 0,
    exit_when_done: Annotated[
        bool, typer.Option(help="Stop when finite sources (logs) are done and the queue is empty.")
    ] = False,
) -> None:
    """Run the edge agent: sources -> campaigns -> durable queue -> MQTT."""
    from core.config import load_settings
    from edge.jit_cache import use_cache_dir

    path = config or _state.get("config")
    s0 = load_settings(path)
    use_cache_dir(s0.edge.numba_cache_dir)  # before the kernels are imported
    from edge.aot import load_agent_kernels

    aot, kernels_line = load_agent_kernels(s0)  # ahead of time when built: numba never loads
    from carpulse.local_files import with_device_certs
    from edge.agent import EdgeAgent, load_agent_config
    from edge.wiring import attach_all

    s, conf = load_agent_config(path)
    s = with_device_certs(s)  # [edge] files, else the local stack's PKI
    _service_logging("edge", s)
    logging.getLogger("edge.aot").log(logging.INFO if aot else logging.WARNING, kernels_line)
    agent = EdgeAgent(s, conf)
    agent.stats["kernels"] = "aot" if aot else "jit"
    attach_all(agent, Path(path) if path else None)  # crash detection, signed commands, systemd
    stats = agent.run(seconds, exit_when_done=exit_when_done)
    typer.echo(json.dumps(stats))


@edge_app.command("build-kernels")
def edge_build_kernels(
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default [edge] aot_dir, else <state_dir>/kernels)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when the build is current.")] = False,
) -> None:
    """Compile the agent's kernels ahead of time (once after install; needs gcc and python3-dev)."""
    from edge.aot import build_kernels, kernels_dir

    typer.echo(json.dumps(build_kernels(out or kernels_dir(settings()), force=force)))


# ----- gate ----------------------------------------------------------------------------------
@gate_app.command("run")
def gate_run(
    source: Annotated[
        str, typer.Option(help="Camera index, RTSP URL, video file or image folder.")
    ],
    device: Annotated[
        str, typer.Option(help="The gate's device id (default [edge] device_id).")
    ] = "",
    camera: Annotated[str, typer.Option(help="Camera name carried in events.")] = "gate-1",
    min_votes: Annotated[int, typer.Option(help="Frames that must agree on a plate.")] = 2,
    dedupe_s: Annotated[float, typer.Option(help="Same plate again within this: no event.")] = 300,
    threads: Annotated[int, typer.Option(help="onnxruntime threads (0 = all cores).")] = 1,
    seconds: Annotated[
        float, typer.Option(help="Stop after this long (0 = until done/SIGTERM).")
    ] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print events as JSON lines instead of sending them.")
    ] = False,
    consented: Annotated[
        Path | None, typer.Option(help="File of member ids with face consent, one per line.")
    ] = None,
    face_detector: Annotated[Path | None, typer.Option(help="Face detector ONNX.")] = None,
    face_detector_kind: Annotated[str, typer.Option(help="'boxes' or 'scrfd'.")] = "boxes",
    face_embedder: Annotated[Path | None, typer.Option(help="ArcFace-style embedder ONNX.")] = None,
    face_gallery: Annotated[Path | None, typer.Option(help="Enrolled embeddings (.npz).")] = None,
) -> None:
    """Read plates (and consented faces) from a camera; gate events go through the durable queue."""
    import signal
    import threading

    from edge.gate import GateConfig, GateLoop, QueuedEvents, build_faces

    conf = GateConfig(
        source=source, camera=camera, min_votes=min_votes, dedupe_s=dedupe_s, threads=threads,
        face_detector=face_detector, face_detector_kind=face_detector_kind,
        face_embedder=face_embedder, face_gallery=face_gallery,
    )  # fmt: skip
    ids = set(consented.read_text().split()) if consented else set()
    faces = build_faces(conf, ids.__contains__)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if dry_run:

        def show(kind: str, ts_us: int, priority: int, data: dict[str, Any]) -> None:
            typer.echo(json.dumps({"kind": kind, "ts_us": ts_us, **data}, ensure_ascii=False))

        stats = GateLoop(conf, show, faces=faces).run(stop, seconds)
    else:
        from carpulse.local_files import with_device_certs

        s = settings()
        s = with_device_certs(s, device or s.edge.device_id)
        sink = QueuedEvents(s, device or s.edge.device_id)
        sink.start()
        try:
            stats = GateLoop(conf, sink, faces=faces, tick=sink.pump).run(stop, seconds)
        finally:
            sink.close()
        stats["acked"] = sink.acked
    typer.echo(json.dumps(stats))


# ----- stream --------------------------------------------------------------------------------
@stream_app.command("bridge")
def stream_bridge(
    name: Annotated[str, typer.Option(help="Bridge instance name.")] = "bridge-1",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="/metrics, /healthz, /readyz port (default \\[metrics] bridge_port).",
        ),
    ] = None,
) -> None:
    """Run an MQTT -> Kafka ingest bridge (several may run side by side)."""
    import asyncio

    from stream.bridge import IngestBridge

    _service_logging("bridge")
    bridge = IngestBridge(settings(), name=name)
    if metrics_port is not None:
        bridge.metrics_port = metrics_port
    asyncio.run(bridge.run_forever())


@stream_app.command("worker")
def stream_worker(loglevel: str = "warn") -> None:
    """Run the Faust worker (/metrics, /healthz, /readyz on \\[stream] web_port)."""
    from stream.app import run_worker

    _service_logging("stream")
    run_worker(settings(), loglevel=loglevel)


# ----- bench / eval / tools (plugins parse their own arguments) -----------------------------
_FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _run_plugin(
    registry_name: str, kind: str, name: str, ctx: typer.Context, as_json: bool
) -> None:
    from carpulse import plugins

    registry = getattr(plugins, registry_name)
    if name in ("--help", "-h", "help"):  # the command's own help: the names it knows
        command = ctx.info_name or kind
        typer.echo(f"Usage: carpulse {command} NAME [--json] [OPTIONS]\n\n{kind}s:")
        typer.echo("\n".join(f"  {n}" for n in sorted(registry)))
        typer.echo(f"\n'carpulse {command} NAME --help' lists the options of one {kind}.")
        return
    fn = plugins.load(registry, kind, name)
    try:
        result = fn(list(ctx.args))
    except SystemExit as exc:  # argparse --help or a usage error already printed its message
        raise typer.Exit(exc.code if isinstance(exc.code, int) else 2) from None
    typer.echo(json.dumps(result) if as_json else json.dumps(result, indent=2))


@app.command("bench", context_settings=_FORWARD)
def bench(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="wire, decode, obd, kernels, ... (NAME --help for options)")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line.")] = False,
) -> None:
    """Run a benchmark: ours and the baseline in the same run, and their ratio."""
    _run_plugin("BENCHMARKS", "benchmark", name, ctx, as_json)


@app.command("eval", context_settings=_FORWARD)
def evaluate(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="nab, cmapss, can-ids, ... (NAME --help for options)")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line.")] = False,
) -> None:
    """Run an evaluation on public data."""
    _run_plugin("EVALUATIONS", "evaluation", name, ctx, as_json)


@app.command("plates", context_settings=_FORWARD)
def plates(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="plate tool, e.g. 'synth' (NAME --help for options)")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line.")] = False,
) -> None:
    """Licence-plate tools: synthetic test photos of every plate kind, the recognisers' training."""
    _run_plugin("TOOLS_PLATES", "plate command", name, ctx, as_json)


@app.command("obd", context_settings=_FORWARD)
def obd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="OBD-II tool, e.g. 'scan' (NAME --help for options)")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line.")] = False,
) -> None:
    """OBD-II over an ELM327 adapter (read-only)."""
    _run_plugin("TOOLS_OBD", "OBD-II command", name, ctx, as_json)


@app.command("demo")
def demo(
    vehicles: Annotated[int, typer.Option(help="Simulated vehicles.")] = 5,
    seconds: Annotated[float, typer.Option(help="Run for this long (0 = until Ctrl-C).")] = 0,
) -> None:
    """Start the stack, the bridge and the worker, and drive a simulated fleet."""
    from carpulse.demo import run_demo

    run_demo(settings(), vehicles=vehicles, seconds=seconds)


@app.command("dashboard")
def dashboard(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default \\[dashboard] host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default \\[dashboard] port).")
    ] = None,
    crm_url: Annotated[
        str | None, typer.Option(help="CRM database URL (default \\[crm], else the stack's).")
    ] = None,
    demo_users: Annotated[
        bool, typer.Option(help="Create the demo users and demo CRM records.")
    ] = False,
    insecure_cookies: Annotated[
        bool, typer.Option(help="Cookies without Secure (plain-HTTP dev only).")
    ] = False,
    coupon_template: Annotated[
        list[str] | None,
        typer.Option(
            help="A coupon template advisors may issue from the inbox (repeatable; "
            "replaces \\[dashboard] coupon_templates)."
        ),
    ] = None,
) -> None:
    """Serve the call-centre console and the service-advisor inbox."""
    s = settings()
    _service_logging("dashboard", s)  # before the imports: alembic logs when it loads
    from carpulse.local_files import dashboard_local_files
    from dashboards.serve import config_from_settings, prepare_demo, serve

    local = dashboard_local_files(s)  # the stack's files, where the settings name none
    cfg = config_from_settings(
        s,
        local=local,
        crm_url=crm_url,
        secure_cookies=False if insecure_cookies else None,
        coupon_templates=coupon_template,
    )
    if demo_users:
        assert local.folder is not None
        prepare_demo(cfg, local.folder)
    serve(cfg, host or s.dashboard.host, port or s.dashboard.port)


def main() -> None:
    """Entry point: user mistakes print one clear line, not a traceback."""
    try:
        app()
    except CarpulseError as err:
        typer.echo(f"carpulse: error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
