"""``carpulse demo``: the local stack, the pipeline, the CRM and a simulated fleet, with a live table.

Vehicles ``demo-car-1..N`` follow a drive cycle encoded as CAN frames with opendbc's Prius DBC;
when ``../shared/data/canlogs`` is present, one more vehicle, ``demo-gt350``, is the real edge
agent with a log source replaying a Mustang GT350 log in a loop at its recorded speed (timestamps
moved to now; the compiled decoder, the gt350 VSS mapping and the durable queue, as ``carpulse
replay`` and a car use them). The CRM database is seeded with a VIN, an owner and a plate
for every device (``crm.demo.seed_demo``: the first, third... owner is a member with marketing
consent), and the stream worker gets the device -> VIN registry file written from it.

Each simulated car first sends an odometer history (two readings a day over the last 330 to
366 days, as if the stream had seen it that long), then a live odometer with its speed. The
stream's maintenance model turns them into ``service_due`` predictions and the CRM worker
issues maintenance coupons to the members whose service is due within 30 days: the table
shows them. One more car, ``demo-silent``, drives at 123 km/h for ``SILENT_DRIVE_S`` seconds and
then its connection dies (its last will says ``offline``): after ``SILENT_AFTER_S`` the stream
raises a silent-car alert and the console's desk shows the call-centre card. ``demo-ev``, an
electric car, reports its 12 V battery (a weak one: every start dips to about 9.2 V) and its
traction pack (cells 0.25 V apart, state of health 76.5 %): the stream's battery model flags both
and the advisor's inbox shows its maintenance card with the battery part (``EV CARD`` below).
With the shared CAN logs, ``demo-ids`` is the real edge agent replaying a gt350 log with a CAN DoS
injected (``carpulse.demo_ids``): its intrusion detector's event becomes a card in the desk's security queue.
It is the one car that acts on the console's lock, unlock and navigate (a virtual door actuator, a
head-unit simulator): its ack says what it did; the other demo cars' commands stay pending.
Ctrl-C stops the fleet, the pipeline, the CRM worker and the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from carpulse.local_files import local_device_mqtt
from carpulse.stack import Stack, port_in_use
from core.config import CarpulseSettings, load_settings
from core.datasets import canlog_dir
from core.errors import StackError
from core.topics import device_topic
from core.wire import (
    Event,
    Samples,
    TelemetryBatch,
    encode_event,
    encode_telemetry,
    split_by_time,
)
from edge.dtc_watch import DTC_PRIORITY, DtcWatcher
from edge.publisher import MqttPublisher
from edge.seqstate import SequenceCounter
from firmware_bridge.dbc import CantoolsDecoder, load_dbc
from firmware_bridge.obd.dtc_poll import DtcSnapshot
from firmware_bridge.sim import PRIUS_VSS, SimulatedCar, default_dbc
from stream.battery import CELL_MAX, CELL_MIN, LV_VOLTAGE, SOH
from stream.state import ODOMETER, SPEED

console = Console(stderr=True)
REAL_LOG = ("gt350", "normalsportcomfortengineon.log", "ford_lincoln_base_pt.dbc")
REAL_DEVICE = "demo-gt350"
DAY_S = 86_400
# how long the stream has "seen" each simulated car (cycled): with the default 365-day schedule
# the calendar makes them due in 35, 26, 17, 8 and 0 days
HISTORY_DAYS = (330, 339, 348, 357, 366)
SILENT_DEVICE = "demo-silent"
SILENT_DRIVE_S = 60.0  # the silent car drives this long, then its connection dies
SILENT_AFTER_S = 30  # the demo's [stream] silent_after_s (120 s by default)
EV_DEVICE = "demo-ev"
VIN_SAFE = str.maketrans("IOQ", "109")
EV_CRANK_EVERY_S = 15  # the EV's 12 V battery sees a "start" (contactors, pumps) this often


@dataclass
class VehicleStats:
    device_id: str
    kind: str
    batches: int = 0
    samples: int = 0
    speed: float = float("nan")
    error: str = ""
    vin: str = ""


def batches_for(samples: Samples, s: CarpulseSettings) -> list[Samples]:
    """A simulated car's samples cut into wire batches (the agent's time span and size caps)."""
    return [
        part.compact()
        for part in split_by_time(
            samples, s.edge.batch_max_samples, int(s.edge.batch_max_interval_s * 1e6)
        )
    ]


class Vehicle:
    """One connected vehicle publishing telemetry batches."""

    def __init__(self, s: CarpulseSettings, device_id: str, kind: str) -> None:
        self.s = s
        self.stats = VehicleStats(device_id, kind)
        self.seq = SequenceCounter(s.edge.state_dir, device_id)
        self.pub = MqttPublisher(local_device_mqtt(s, device_id), self.seq.boot_id)
        self.topic = device_topic(device_id, "telemetry")

    def send_one(self, samples: Samples) -> None:
        """``samples`` as one wire batch (the odometer history)."""
        batch = TelemetryBatch(self.stats.device_id, self.seq.boot_id, self.seq.next(), samples)
        self.pub.publish(self.topic, encode_telemetry(batch))
        self.stats.batches += 1
        self.stats.samples += len(samples)

    def send_event(self, kind: str, priority: int, data: dict[str, Any]) -> None:
        """One event on the device's events topic, numbered like its telemetry (as the agent)."""
        ev = Event(self.stats.device_id, self.seq.boot_id, self.seq.next(), kind,
                   int(time.time() * 1e6), priority, data)  # fmt: skip
        self.pub.publish(device_topic(self.stats.device_id, "events"), encode_event(ev))

    def send(self, samples: Samples) -> None:
        for part in batches_for(samples, self.s):
            batch = TelemetryBatch(self.stats.device_id, self.seq.boot_id, self.seq.next(), part)
            self.pub.publish(self.topic, encode_telemetry(batch))
            self.stats.batches += 1
            self.stats.samples += len(part)
        if "Vehicle.Speed" in samples.names:
            idx = samples.names.index("Vehicle.Speed")
            speeds = samples.value[samples.sig == idx]
            if len(speeds):
                self.stats.speed = float(speeds[-1])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "carpulse", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _influx_count(stack: Stack) -> int | None:
    q = 'SELECT COUNT("Vehicle.Speed") FROM telemetry'
    url = f"http://{stack.s.host}:{stack.s.influx_port}/query?" + urllib.parse.urlencode(
        {"db": "carpulse", "q": q}
    )
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            doc = json.load(resp)
        series = doc["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0
    except (OSError, ValueError, KeyError, IndexError):
        return None


def odometer_history(days: int, start_km: float, now_s: float, seed: int) -> tuple[Samples, float]:
    """Two odometer readings a day (07:00 and 19:00 UTC) over the ``days`` days before today,
    ~32 km a day; returns the samples (metres, as VSS) and the last reading in km."""
    rng = np.random.default_rng(seed)
    today = int(now_s // DAY_S)
    day = np.arange(today - days, today)
    km = rng.gamma(4.0, 8.0, size=days)
    evening = start_km + np.cumsum(km)
    ts = np.empty(2 * days, np.int64)
    ts[0::2], ts[1::2] = (day * DAY_S + 7 * 3600) * 1_000_000, (day * DAY_S + 19 * 3600) * 1_000_000
    odo = np.empty(2 * days)
    odo[0::2], odo[1::2] = evening - km, evening
    return Samples.from_columns([ODOMETER], np.zeros(2 * days), ts, odo * 1000.0), float(
        evening[-1]
    )


def with_odometer(samples: Samples, ts_us: int, odo_m: float) -> Samples:
    """``samples`` plus one odometer reading."""
    names = list(samples.names)
    if ODOMETER not in names:
        names.append(ODOMETER)
    return Samples.from_columns(
        names, np.r_[samples.sig, names.index(ODOMETER)], np.r_[samples.ts_us, ts_us],
        np.r_[samples.value, odo_m],
    )  # fmt: skip


def fleet_vin(device: str) -> str:
    """The VIN of a demo device: ``demo-car-N`` -> ``CPDEM`` + N on 12 digits, the scheme the
    dashboard's demo seeding uses (it then leaves these vehicles as they are)."""
    if device.startswith("demo-car-") and device[9:].isdigit():
        return f"CPDEM{int(device[9:]):012d}"
    # a VIN has no I, O or Q: the console refuses such a VIN (demo-silent's page was a 422)
    tail = "".join(c for c in device.upper() if c.isalnum())[-12:].translate(VIN_SAFE)
    return "CPDEM" + tail.rjust(12, "0")


def seed_crm(stack: Stack, devices: list[str]) -> tuple[Any, list[str], Path]:
    """Seed the stack's CRM database for the fleet (dealer ``dealer-a``, the dashboard's demo
    dealer); write the stream's device -> VIN registry file."""
    from crm import store as st
    from crm.demo import registry_of, seed_demo
    from crm.migrate import migrate

    store = st.CrmStore.from_url(stack.crm_url)
    migrate(store.engine)  # `stack up` did too; the demo stays one command either way
    vins = [fleet_vin(d) for d in devices]
    seed_demo(store, len(devices), devices=devices, vins=vins, dealer_id="dealer-a")
    registry = stack.root / "registry.json"
    registry.write_text(json.dumps(registry_of(store, devices), indent=1) + "\n")
    return store, vins, registry


def crm_view(store: Any, vins: list[str]) -> dict[str, str]:
    """Per VIN: 'member' / '-', the maintenance coupon issued to its owner, if any, and the open
    cards of each kind the demo shows (silent car, battery, intrusion, DTC, anomaly)."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from crm import store as st
    from crm.schema import Coupon
    from crm.tables import InboxItem

    out: dict[str, str] = {}
    try:
        with store.tx() as s:
            coupons = {
                c.vin: c
                for c in s.scalars(
                    select(Coupon).where(
                        Coupon.vin.in_(vins), Coupon.template_code == "maintenance"
                    )
                )
            }
            for vin in vins:
                owner = st.owner_at(s, vin, st.utcnow())
                member = owner is not None and st.has_consent(s, owner, "marketing")
                c = coupons.get(vin)
                due = f"coupon until {c.valid_until:%Y-%m-%d}" if c is not None else "no coupon"
                out[vin] = f"{'member' if member else 'no consent'}: {due}"
            silent = select(InboxItem.vin).where(
                InboxItem.kind == "silent_car", InboxItem.done_at.is_(None), InboxItem.vin.in_(vins)
            )
            for vin in s.scalars(silent):  # the call centre's card for the silent car
                out[vin] = out.get(vin, "") + " · SILENT-CAR CARD"
            cards = select(InboxItem).where(
                InboxItem.kind == "maintenance",
                InboxItem.done_at.is_(None),
                InboxItem.vin.in_(vins),
            )
            for card in s.scalars(cards):  # the advisor's card with a battery part
                if "battery" in ((card.data or {}).get("due") or []) and card.vin:
                    out[card.vin] = out.get(card.vin, "") + " · BATTERY CARD"
            intrusion = select(InboxItem.vin).where(
                InboxItem.kind == "intrusion", InboxItem.done_at.is_(None), InboxItem.vin.in_(vins)
            )
            for vin in s.scalars(intrusion):  # the security queue's card (demo-ids)
                out[vin] = out.get(vin, "") + " · INTRUSION CARD"
            for kind in ("dtc", "anomaly"):  # the advisor's fault-code and anomaly cards
                open_ = select(InboxItem.vin).where(
                    InboxItem.kind == kind, InboxItem.done_at.is_(None), InboxItem.vin.in_(vins)
                )
                for vin in set(s.scalars(open_)):
                    out[vin] = out.get(vin, "") + f" · {kind.upper()} CARD"
    except SQLAlchemyError as err:  # a busy database must not end the demo
        return {vin: f"? ({str(err)[:40]})" for vin in vins}
    return out


def _table(
    vehicles: list[Vehicle | LogCar],
    influx_speed_points: int | None,
    started: float,
    crm: dict[str, str] | None = None,
) -> Table:
    t = Table(
        title=f"carpulse demo - {time.monotonic() - started:5.0f} s - Ctrl-C stops everything"
    )
    for col in ("device", "VIN", "traffic", "batches", "samples", "speed km/h", "status", "CRM"):
        t.add_column(col)
    crm = crm or {}
    for v in vehicles:
        st = v.stats
        t.add_row(
            st.device_id,
            st.vin or "-",
            st.kind,
            str(st.batches),
            f"{st.samples:,}",
            "-" if st.speed != st.speed else f"{st.speed:5.1f}",
            st.error or "ok",
            crm.get(st.vin, "-"),
        )
    n_coupons = sum("coupon until" in x for x in crm.values())
    t.caption = (
        # the whole database: .carpulse keeps it between demo runs
        f"InfluxDB: {f'{influx_speed_points:,}' if influx_speed_points is not None else '?'} "
        f"Vehicle.Speed points stored (all runs) - CRM: {n_coupons} maintenance coupon(s) from "
        "service-due predictions"
    )
    return t


def drive_silent(v: Vehicle, now_s: float, started: float) -> None:
    """The silent car: fast with the engine on, then its connection dies without a goodbye (the
    broker publishes its last will, ``offline``) and it sends nothing more."""
    if v.stats.error:
        return
    if time.monotonic() - started >= SILENT_DRIVE_S:
        with contextlib.suppress(Exception):
            v.pub.client.loop_stop()
            v.pub.client.socket().close()  # type: ignore[union-attr]
        v.stats.error = "silent: connection died at speed"
        return
    ts = int(now_s * 1e6) + np.arange(10) * 100_000
    names = [SPEED, "Vehicle.Powertrain.CombustionEngine.Speed"]
    samples = Samples.from_columns(
        names,
        np.repeat(np.arange(2), 10),
        np.tile(ts, 2),
        np.r_[np.full(10, 123.0), np.full(10, 2800.0)],
    )
    with contextlib.suppress(Exception):  # a broker hiccup shows as no traffic
        v.send(samples)


def ev_dtc_event() -> dict[str, Any]:
    """The weak battery's fault code as the edge agent's DTC watcher reports it (``edge.dtc_watch``,
    the same event the agent sends after an OBD mode 03/07 poll): P0562, system voltage low, MIL
    on. The advisor's inbox shows a DTC card for ``demo-ev``."""
    snap = DtcSnapshot(stored=("P0562",), pending=(), mil=True, count=1)
    data = DtcWatcher().update(snap)
    assert data is not None  # a first snapshot is always news
    return data


def drive_ev(v: Vehicle, now_s: float, started: float) -> None:
    """The EV: 12 V readings at 10 Hz (14.0 V while the DC/DC charges it, a dip to ~9.2 V at
    each start: a battery that fails the load test) and its pack's extreme cell voltages and
    state of health (VSS ``TractionBattery``), once a second."""
    ts = int(now_s * 1e6) + np.arange(10) * 100_000
    lv = np.full(10, 14.0)
    if int(time.monotonic() - started) % EV_CRANK_EVERY_S == 0:
        lv[:6] = (12.5, 12.4, 9.5, 9.2, 9.4, 12.2)
    names = [LV_VOLTAGE, CELL_MIN, CELL_MAX, SOH]
    samples = Samples.from_columns(
        names, np.r_[np.zeros(10), 1.0, 2.0, 3.0], np.r_[ts, ts[:3]], np.r_[lv, 3.62, 3.87, 76.5]
    )
    with contextlib.suppress(Exception):  # a broker hiccup shows as no traffic
        v.send(samples)


class LogCar:
    """``demo-gt350``: the edge agent with a looping log source; its row in the table."""

    def __init__(self, s: CarpulseSettings, log: Path, dbc: Path, mapping: str) -> None:
        from edge.agent import AgentConfig, EdgeAgent

        self.stats = VehicleStats(REAL_DEVICE, f"edge agent, log {log.parent.name}/{log.name}")
        from carpulse.local_files import with_device_certs

        settings = with_device_certs(s, REAL_DEVICE)
        settings = settings.model_copy(
            update={
                "edge": settings.edge.model_copy(update={"device_id": REAL_DEVICE}),
                "metrics": s.metrics.model_copy(update={"edge_port": 0}),
            }
        )
        source = {"type": "log", "name": "log", "log": str(log), "dbc": str(dbc),
                  "mapping": mapping, "rate": "real", "loop": True, "restamp": True,
                  "strict": False}  # fmt: skip
        self.agent = EdgeAgent(settings, AgentConfig(sources=[source]))
        self.agent.sample_hooks.append(self._watch_speed)
        self.agent.sources[0].open()  # compiles the decoder now; a bad file fails the demo here
        self.thread = threading.Thread(target=self._run, name=REAL_DEVICE, daemon=True)

    def _watch_speed(self, samples: Samples) -> list[Event]:
        if SPEED in samples.names:
            speeds = samples.value[samples.sig == samples.names.index(SPEED)]
            if len(speeds):
                self.stats.speed = float(speeds[-1])
        return []

    def _run(self) -> None:
        try:
            self.agent.run()
        except Exception as err:  # keep the demo alive; show the problem in the table
            self.stats.error = str(err)[:60]

    def refresh(self) -> None:
        st = self.agent.stats
        self.stats.batches, self.stats.samples = st["batches"], st["samples_out"]
        self.stats.error = "" if self.agent.pub.connected else "connecting..."

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(10)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(settings: CarpulseSettings, vehicles: int = 5, seconds: float = 0) -> None:
    # Ctrl-C and SIGTERM both stop everything cleanly (even when started with SIGINT ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = Stack(settings.stack)
    console.rule("[bold]carpulse demo")
    console.print(
        "starting the local stack (Mosquitto TLS, Apache Kafka, InfluxDB 1.x, CRM SQLite)..."
    )
    stack.up(progress=lambda m: console.print(f"  {m}"))
    s = load_settings(stack.config_file)
    if port_in_use(s.stack.host, s.stream.web_port):
        raise StackError(
            f"port {s.stack.host}:{s.stream.web_port} (Faust web) is in use: is another carpulse worker "
            "running? Stop it, or set CARPULSE_STREAM__WEB_PORT"
        )
    logs = stack.root / "logs"
    logs.mkdir(exist_ok=True)
    car, log_name, dbc_name = REAL_LOG
    log, dbc = canlog_dir() / car / log_name, canlog_dir() / car / dbc_name
    has_real = log.exists() and dbc.exists()
    devices = [f"demo-car-{i + 1}" for i in range(vehicles)] + ([REAL_DEVICE] if has_real else [])
    devices += [SILENT_DEVICE, EV_DEVICE]
    from carpulse import demo_ids

    with_ids = demo_ids.available()
    if with_ids:
        devices.append(demo_ids.DEVICE)
    store, vins, registry = seed_crm(stack, devices)
    vin_of = dict(zip(devices, vins, strict=True))
    console.print(f"  CRM seeded: {len(vins)} vehicles with owners; registry {registry}")
    env = dict(
        os.environ, CARPULSE_CONFIG=str(stack.config_file), CARPULSE_STREAM__REGISTRY=str(registry)
    )
    procs = [
        _spawn(["stream", "bridge"], env, logs / "bridge.log"),
        _spawn(["stream", "worker"], {**env, "CARPULSE_STREAM__SILENT_AFTER_S": str(SILENT_AFTER_S)},
               logs / "worker.log"),
        # a short session timeout: the CRM group forms in seconds, not 30 s
        _spawn(["crm", "worker", "--interval", "5"], {**env, "CARPULSE_STREAM__SESSION_TIMEOUT_S": "8"},
               logs / "crm.log"),
    ]  # fmt: skip
    console.print(f"  ingest bridge, Faust worker and CRM worker started, logs in {logs}")
    if with_ids:  # the dashboard signs the console's commands with the key demo-ids trusts
        demo_ids.command_key(s)
    procs.append(
        _spawn(["dashboard", "--demo-users", "--insecure-cookies"], env, logs / "dashboard.log")
    )
    console.print(
        f"  dashboard: http://{s.stack.host}:8000 (agent, advisor, admin, auditor; password carpulse-demo)"
    )
    stop = threading.Event()
    threads: list[threading.Thread] = []
    fleet: list[Vehicle] = []
    ids_agent: Any = None
    log_car: LogCar | None = None
    try:
        db = load_dbc(default_dbc())
        decoder = CantoolsDecoder(db, PRIUS_VSS)
        cars = []
        odo_m: list[float] = []
        histories: list[Samples] = []
        for i in range(vehicles):
            v = Vehicle(s, f"demo-car-{i + 1}", "simulated (opendbc Prius DBC)")
            v.stats.vin = vin_of[v.stats.device_id]
            v.pub.connect()
            fleet.append(v)
            cars.append(SimulatedCar(db, seed=i, phase_s=37.0 * i))
            history, last_km = odometer_history(
                HISTORY_DAYS[i % len(HISTORY_DAYS)], 20_000.0 + 7_000.0 * i, time.time(), seed=i
            )
            histories.append(history)
            odo_m.append(last_km * 1000.0)
        if has_real:
            log_car = LogCar(s, log, dbc, car)
            log_car.stats.vin = vin_of[REAL_DEVICE]
            log_car.thread.start()
        else:
            console.print(f"  (no shared CAN logs at {canlog_dir()}: simulated traffic only)")
        silent = Vehicle(s, SILENT_DEVICE, f"123 km/h for {SILENT_DRIVE_S:.0f} s, then silent")
        silent.stats.vin = vin_of[SILENT_DEVICE]
        silent.pub.connect()
        fleet.append(silent)
        ev = Vehicle(s, EV_DEVICE, "EV: weak 12 V battery, pack out of balance")
        ev.stats.vin = vin_of[EV_DEVICE]
        ev.pub.connect()
        fleet.append(ev)
        _print_where_to_look(stack)
        _print_commands_car(stack, vin_of.get(demo_ids.DEVICE) if with_ids else None)
        _print_member_link(stack, store, s, vin_of["demo-car-1"])
        started = time.monotonic()
        sim_t = 0.0
        count: int | None = None
        crm: dict[str, str] = {}
        history_sent = False
        rows: list[Vehicle | LogCar] = [*fleet[:vehicles], *([log_car] if log_car else []),
                                        *fleet[vehicles:]]  # fmt: skip
        with Live(_table(rows, count, started), console=console, refresh_per_second=2) as live:
            while not seconds or time.monotonic() - started < seconds:
                tick = time.time()
                for i, (v, c) in enumerate(zip(fleet, cars, strict=False)):
                    frames = c.frames(int(tick * 1e6), sim_t, 1.0)
                    samples, _ = decoder.decode(frames)
                    if SPEED in samples.names:  # the odometer follows the simulated speed
                        speeds = samples.value[samples.sig == samples.names.index(SPEED)]
                        odo_m[i] += (
                            float(np.nan_to_num(speeds).mean()) / 3.6 if len(speeds) else 0.0
                        )
                    if history_sent:  # a live reading before the history would void it
                        samples = with_odometer(samples, int(tick * 1e6) + 999_000, odo_m[i])
                    try:
                        v.send(samples)
                        v.stats.error = ""
                    except Exception as err:  # a broker hiccup must not end the demo
                        v.stats.error = str(err)[:60]
                drive_silent(silent, tick, started)
                drive_ev(ev, tick, started)
                sim_t += 1.0
                if int(sim_t) % 3 == 0:
                    count = _influx_count(stack)
                    crm = crm_view(store, vins)
                if not history_sent and count:
                    # the bridge is subscribed (MQTT drops what is published before): send
                    # each car's odometer history, as if the stream had seen it for a year
                    for v, history in zip(fleet, histories, strict=False):
                        with contextlib.suppress(Exception):  # shown by the next live send
                            v.send_one(history)
                    history_sent = True
                    with contextlib.suppress(Exception):  # the EV's ECU stores P0562
                        ev.send_event("dtc", DTC_PRIORITY, ev_dtc_event())
                    if with_ids:  # the real edge agent, on a log with a CAN attack in it
                        ids_agent, th = demo_ids.start(s, logs)
                        threads.append(th)
                        console.print(f"  {demo_ids.DEVICE}: edge agent on a log with a CAN DoS")
                if log_car is not None:
                    log_car.refresh()
                live.update(_table(rows, count, started, crm))
                for p in procs:
                    if p.poll() is not None:
                        raise StackError(
                            f"a pipeline process exited (code {p.returncode}); see {logs}"
                        )
                time.sleep(max(0.0, 1.0 - (time.time() - tick)))
    except KeyboardInterrupt:
        console.print("\nstopping...")
    finally:
        stop.set()
        if ids_agent is not None:
            ids_agent.stop()
        if log_car is not None:
            log_car.stop()
        for th in threads:
            th.join(5)
        for v in fleet:
            with contextlib.suppress(Exception):  # closing is best effort
                v.pub.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        stack.down(progress=lambda m: console.print(f"  {m}"))
        store.engine.dispose()
        console.print("demo stopped; data stays in", stack.root)


def _print_member_link(stack: Stack, store: Any, s: CarpulseSettings, vin: str) -> None:
    """The member page of the first car's owner (a signed link, valid [member] link_ttl_h);
    the sign-in links of friends who claim a shared coupon land in member-messages.jsonl."""
    from dashboards.member import demo_link

    url = demo_link(store, s, vin, f"http://{s.stack.host}:8000")
    console.print("  member page (会员页) of the first car's owner, on a phone-sized window:")
    console.print(f"    {url}", soft_wrap=True, markup=False, highlight=False)  # one line, to copy
    console.print(f"  friends' sign-in links: {stack.root / 'member-messages.jsonl'}\n")


def _print_commands_car(stack: Stack, vin: str | None) -> None:
    """Which car acts on the console's remote actions (lock, unlock, navigate)."""
    if vin is None:
        console.print(
            "  remote actions: no car takes commands here (demo-ids needs the shared CAN logs)"
        )
        return
    console.print(
        f"  remote actions: demo-ids locks/unlocks (virtual doors) and navigates (head-unit "
        f"simulator), ack in the console: http://{stack.s.host}:8000/console/vehicles/{vin}",
        soft_wrap=True,  # one line, the URL whole
    )


def _print_where_to_look(stack: Stack) -> None:
    url = f"http://{stack.s.host}:{stack.s.influx_port}"
    q = 'SELECT mean("Vehicle.Speed") FROM telemetry WHERE time > now() - 5m GROUP BY device, time(10s)'
    console.print("\n[bold]Where to look[/bold]")
    console.print(f"  InfluxDB 1.x at {url}, database 'carpulse', measurement 'telemetry':")
    console.print(f"    curl -sG {url}/query --data-urlencode db=carpulse --data-urlencode 'q={q}'")
    console.print(f"  pipeline logs: {stack.root / 'logs'}; stack status: carpulse stack status")
    console.print(
        f"  dashboard: http://{stack.s.host}:8000 (users agent, advisor, admin, auditor; "
        "password carpulse-demo); a demo car and its owner's coupons: "
        f"http://{stack.s.host}:8000/console/vehicles/{fleet_vin('demo-car-3')}"
    )
    console.print(
        "  coupons the CRM issued from service-due predictions (the CRM column below):\n"
        f"    CARPULSE_CONFIG={stack.config_file} carpulse crm coupons --template maintenance\n"
        f"  service-due predictions: CRM worker log {stack.root / 'logs' / 'crm.log'}; "
        "device -> VIN registry: " + str(stack.root / "registry.json") + "\n"
    )
