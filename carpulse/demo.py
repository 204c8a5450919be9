"""``carpulse demo``: the local stack, the pipeline and a simulated fleet, with a live progress table.

Vehicles ``demo-car-1..N`` follow a drive cycle encoded as CAN frames with opendbc's Prius DBC;
when ``../shared/data/canlogs`` is present, one more vehicle replays a real Mustang GT350 log in
a loop (timestamps moved to now). Ctrl-C stops the fleet, the pipeline and the stack.
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

from rich.console import Console
from rich.live import Live
from rich.table import Table

from carpulse.datasets import canlog_dir
from carpulse.stack import Stack, port_in_use
from core.config import CarpulseSettings, load_settings
from core.errors import StackError
from core.topics import device_topic
from core.wire import Samples, TelemetryBatch, encode_telemetry
from edge.publisher import MqttPublisher, device_mqtt_settings
from edge.replay import batches_for
from edge.seqstate import SequenceCounter
from firmware_bridge.dbc import CantoolsDecoder, load_dbc
from firmware_bridge.frames import read_candump
from firmware_bridge.sim import PRIUS_VSS, SimulatedCar, default_dbc

console = Console(stderr=True)
REAL_LOG = ("gt350", "normalsportcomfortengineon.log", "ford_lincoln_base_pt.dbc")


@dataclass
class VehicleStats:
    device_id: str
    kind: str
    batches: int = 0
    samples: int = 0
    speed: float = float("nan")
    error: str = ""


class Vehicle:
    """One connected vehicle publishing telemetry batches."""

    def __init__(self, s: CarpulseSettings, device_id: str, kind: str) -> None:
        self.s = s
        self.stats = VehicleStats(device_id, kind)
        self.seq = SequenceCounter(s.edge.state_dir, device_id)
        self.pub = MqttPublisher(device_mqtt_settings(s, device_id), self.seq.boot_id)
        self.topic = device_topic(device_id, "telemetry")

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


def _table(vehicles: list[Vehicle], influx_speed_points: int | None, started: float) -> Table:
    t = Table(
        title=f"carpulse demo - {time.monotonic() - started:5.0f} s - Ctrl-C stops everything"
    )
    for col in ("device", "traffic", "batches", "samples", "speed km/h", "status"):
        t.add_column(col)
    for v in vehicles:
        st = v.stats
        t.add_row(
            st.device_id,
            st.kind,
            str(st.batches),
            f"{st.samples:,}",
            "-" if st.speed != st.speed else f"{st.speed:5.1f}",
            st.error or "ok",
        )
    t.caption = f"InfluxDB: {influx_speed_points if influx_speed_points is not None else '?'} Vehicle.Speed points"
    return t


def _replay_loop(vehicle: Vehicle, log: Path, dbc: Path, stop: threading.Event) -> None:
    """Replay a real log at its real rate, forever, timestamps moved to now."""
    frames, _ = read_candump(log)
    samples, _ = CantoolsDecoder(load_dbc(dbc, strict=False)).decode(frames)
    parts = batches_for(samples, vehicle.s)
    if not parts:
        return
    t_first = int(samples.ts_us[0])
    while not stop.is_set():
        start_wall = time.time()
        base = int(start_wall * 1e6)
        for part in parts:
            due = (int(part.ts_us[0]) - t_first) / 1e6
            if stop.wait(max(0.0, due - (time.time() - start_wall))):
                return
            shifted = Samples(part.names, part.sig, part.ts_us - t_first + base, part.value)
            try:
                vehicle.send(shifted)
            except Exception as err:  # keep the demo alive; show the problem in the table
                vehicle.stats.error = str(err)[:60]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(settings: CarpulseSettings, vehicles: int = 5, seconds: float = 0) -> None:
    # Ctrl-C and SIGTERM both stop everything cleanly (even when started with SIGINT ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = Stack(settings.stack)
    console.rule("[bold]carpulse demo")
    console.print("starting the local stack (Mosquitto TLS, Tansu, InfluxDB 1.x, CRM SQLite)...")
    stack.up(progress=lambda m: console.print(f"  {m}"))
    s = load_settings(stack.config_file)
    if port_in_use(s.stack.host, s.stream.web_port):
        raise StackError(
            f"port {s.stack.host}:{s.stream.web_port} (Faust web) is in use: is another carpulse worker "
            "running? Stop it, or set CARPULSE_STREAM__WEB_PORT"
        )
    logs = stack.root / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ, CARPULSE_CONFIG=str(stack.config_file))
    procs = [
        _spawn(["stream", "bridge"], env, logs / "bridge.log"),
        _spawn(["stream", "worker"], env, logs / "worker.log"),
    ]
    console.print(f"  ingest bridge and Faust worker started, logs in {logs}")
    procs.append(
        _spawn(["dashboard", "--demo-users", "--insecure-cookies"], env, logs / "dashboard.log")
    )
    console.print(
        f"  dashboard: http://{s.stack.host}:8000 (agent, advisor, admin, auditor; password carpulse-demo)"
    )
    stop = threading.Event()
    threads: list[threading.Thread] = []
    fleet: list[Vehicle] = []
    try:
        db = load_dbc(default_dbc())
        decoder = CantoolsDecoder(db, PRIUS_VSS)
        cars = []
        for i in range(vehicles):
            v = Vehicle(s, f"demo-car-{i + 1}", "simulated (opendbc Prius DBC)")
            v.pub.connect()
            fleet.append(v)
            cars.append(SimulatedCar(db, seed=i, phase_s=37.0 * i))
        car, log_name, dbc_name = REAL_LOG
        log, dbc = canlog_dir() / car / log_name, canlog_dir() / car / dbc_name
        if log.exists() and dbc.exists():
            real = Vehicle(s, "demo-gt350", f"real log {car}/{log_name}")
            real.pub.connect()
            fleet.append(real)
            th = threading.Thread(target=_replay_loop, args=(real, log, dbc, stop), daemon=True)
            th.start()
            threads.append(th)
        else:
            console.print(f"  (no shared CAN logs at {canlog_dir()}: simulated traffic only)")
        _print_where_to_look(stack)
        started = time.monotonic()
        sim_t = 0.0
        count: int | None = None
        with Live(_table(fleet, count, started), console=console, refresh_per_second=2) as live:
            while not seconds or time.monotonic() - started < seconds:
                tick = time.time()
                for v, c in zip(fleet, cars, strict=False):
                    frames = c.frames(int(tick * 1e6), sim_t, 1.0)
                    samples, _ = decoder.decode(frames)
                    try:
                        v.send(samples)
                        v.stats.error = ""
                    except Exception as err:  # a broker hiccup must not end the demo
                        v.stats.error = str(err)[:60]
                sim_t += 1.0
                if int(sim_t) % 3 == 0:
                    count = _influx_count(stack)
                live.update(_table(fleet, count, started))
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
        console.print("demo stopped; data stays in", stack.root)


def _print_where_to_look(stack: Stack) -> None:
    url = f"http://{stack.s.host}:{stack.s.influx_port}"
    q = 'SELECT mean("Vehicle.Speed") FROM telemetry WHERE time > now() - 5m GROUP BY device, time(10s)'
    console.print("\n[bold]Where to look[/bold]")
    console.print(f"  InfluxDB 1.x at {url}, database 'carpulse', measurement 'telemetry':")
    console.print(f"    curl -sG {url}/query --data-urlencode db=carpulse --data-urlencode 'q={q}'")
    console.print(f"  pipeline logs: {stack.root / 'logs'}; stack status: carpulse stack status")
    console.print(
        f"  dashboard: http://{stack.s.host}:8000 (users agent, advisor, admin, auditor; "
        "password carpulse-demo)\n"
    )
