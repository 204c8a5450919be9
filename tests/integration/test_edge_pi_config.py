"""config/examples/edge-pi.toml runs: the agent starts from the shipped file with its hardware
replaced through environment overrides only (CAN: python-can's udp_multicast bus instead of can0;
OBD-II: the ELM327 emulator's pty instead of /dev/ttyUSB0; GNSS: a pty carrying NMEA instead of
/dev/ttyACM0) and telemetry from each source reaches the throwaway stack's Mosquitto."""

from __future__ import annotations

import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import can
import paho.mqtt.client as mqtt
import pytest

from carpulse.stack import Stack
from core.signing import generate_keypair
from core.topics import device_topic
from core.wire import decode_telemetry
from firmware_bridge.frames import read_candump
from firmware_bridge.obd.emulator import ElmEmulator
from tests.conftest import require_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EDGE_PI = ROOT / "config" / "examples" / "edge-pi.toml"
NMEA = (
    b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
    b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
)
FROM_CAN = "Vehicle.Speed"  # gt350 mapping: EngVehicleSpThrottle2.Veh_V_ActlEng
FROM_OBD = "ControlModuleVoltage"  # PID 0x42, a name only the OBD-II source produces
FROM_GNSS = "Vehicle.CurrentLocation.Latitude"


class Names:
    """Every signal name in the device's telemetry, read as a service over TLS."""

    def __init__(self, stack: Stack, device: str) -> None:
        self.names: set[str] = set()
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"names-{uuid.uuid4().hex[:8]}"
        )
        self.client.username_pw_set(
            "carpulse-bridge", stack.secret_file("carpulse-bridge").read_text().strip()
        )
        self.client.tls_set(ca_certs=str(stack.pki.ca_cert), cert_reqs=ssl.CERT_REQUIRED)
        topic = device_topic(device, "telemetry")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(stack.s.host, stack.s.mqtt_service_port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(30), "could not subscribe"

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        batch = decode_telemetry(msg.payload)
        with self.lock:
            self.names.update(batch.samples.names[int(i)] for i in set(batch.samples.sig.tolist()))

    def seen(self) -> set[str]:
        with self.lock:
            return set(self.names)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def nmea_pty() -> Iterator[str]:
    master, slave = os.openpty()
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(0.2):
            try:
                os.write(master, NMEA)
            except OSError:
                return

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    yield os.ttyname(slave)
    stop.set()
    t.join(5)
    os.close(master)
    os.close(slave)


@pytest.fixture
def can_bus() -> Iterator[str]:
    """A udp_multicast CAN bus carrying the GT350 log's frames in a loop; yields its group."""
    log = require_data("canlogs/gt350/evox.log")
    frames, _ = read_candump(log)
    group = f"239.255.{random.randint(1, 254)}.{random.randint(1, 254)}"
    bus = can.Bus(interface="udp_multicast", channel=group)
    stop = threading.Event()

    def send() -> None:
        i = 0
        while not stop.is_set():
            for _ in range(200):  # 200 frames every 20 ms: a busy powertrain bus
                k = i % len(frames)
                bus.send(
                    can.Message(
                        arbitration_id=int(frames.can_id[k]),
                        is_extended_id=bool(frames.extended[k]),
                        dlc=int(frames.dlc[k]),
                        data=bytes(frames.data[k][: int(frames.dlc[k])]),
                    )
                )
                i += 1
            stop.wait(0.02)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    yield group
    stop.set()
    t.join(5)
    bus.shutdown()


def test_the_shipped_pi_config_runs_with_every_source(
    local_stack: Stack, tmp_path: Path, nmea_pty: str, can_bus: str
) -> None:
    device = f"pi-{uuid.uuid4().hex[:8]}"
    cert, key = local_stack.provision_device(device)
    _, pub = generate_keypair(tmp_path / "cmdkey")
    dbc = require_data("canlogs/gt350/ford_lincoln_base_pt.dbc")
    numba_cache = tmp_path / "numba"
    names = Names(local_stack, device)
    with ElmEmulator() as elm:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARPULSE_")}
        env.update(
            CARPULSE_EDGE__DEVICE_ID=device,
            CARPULSE_EDGE__BROKER_HOST=local_stack.s.host,
            CARPULSE_EDGE__BROKER_PORT=str(local_stack.s.mqtt_device_port),
            CARPULSE_EDGE__CA_FILE=str(local_stack.pki.ca_cert),
            CARPULSE_EDGE__CERT_FILE=str(cert),
            CARPULSE_EDGE__KEY_FILE=str(key),
            CARPULSE_EDGE__STATE_DIR=str(tmp_path / "state"),
            CARPULSE_EDGE__NUMBA_CACHE_DIR=str(numba_cache),
            CARPULSE_EDGE__COMMANDS__PUBLIC_KEY=str(pub),
            CARPULSE_EDGE__SOURCES__CAN__INTERFACE="udp_multicast",
            CARPULSE_EDGE__SOURCES__CAN__CHANNEL=can_bus,
            CARPULSE_EDGE__SOURCES__CAN__DBC=str(dbc),
            CARPULSE_EDGE__SOURCES__CAN__MAPPING="gt350",
            CARPULSE_EDGE__SOURCES__OBD__PORT=elm.port,
            CARPULSE_EDGE__SOURCES__OBD__PIDS="[0x0C, 0x0D, 0x42]",
            CARPULSE_EDGE__SOURCES__GNSS__PORT=nmea_pty,
        )
        log = tmp_path / "agent.log"
        with open(log, "wb") as out:
            agent = subprocess.Popen(
                [sys.executable, "-m", "carpulse", "edge", "run", "--config", str(EDGE_PI)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        try:
            deadline = time.monotonic() + 180  # the first start compiles the kernels
            wanted = {FROM_CAN, FROM_GNSS}
            while time.monotonic() < deadline and agent.poll() is None:
                seen = names.seen()
                if wanted <= seen and any(n.endswith(FROM_OBD) for n in seen):
                    break
                time.sleep(0.5)
            seen = names.seen()
            assert agent.poll() is None, log.read_text()[-3000:]
            assert FROM_CAN in seen, (sorted(seen), log.read_text()[-3000:])
            assert FROM_GNSS in seen, (sorted(seen), log.read_text()[-3000:])
            assert any(n.endswith(FROM_OBD) for n in seen), (sorted(seen), log.read_text()[-3000:])
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(60) == 0, log.read_text()[-3000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
            names.close()
    # [edge] numba_cache_dir: the compiled kernels were written there
    assert list(numba_cache.rglob("*.nbi")), "numba wrote no cache index"


def test_a_source_override_that_names_no_source_is_a_config_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARPULSE_")}
    env["CARPULSE_EDGE__SOURCES__CANBUS__CHANNEL"] = "can1"
    proc = subprocess.run(
        [sys.executable, "-m", "carpulse", "edge", "run", "--config", str(EDGE_PI)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2  # the systemd unit does not restart exit status 2
    assert "CARPULSE_EDGE__SOURCES__CANBUS__CHANNEL" in proc.stderr
    assert "can, obd, gnss" in proc.stderr


def test_a_bad_vss_mapping_stops_the_agent_with_the_file_and_line(
    local_stack: Stack, tmp_path: Path
) -> None:
    device = f"pi-{uuid.uuid4().hex[:8]}"
    cert, key = local_stack.provision_device(device)
    dbc = require_data("canlogs/gt350/ford_lincoln_base_pt.dbc")
    mapping = tmp_path / "car-vss.yaml"
    mapping.write_text(
        "vehicle: mine\ndbc: ford_lincoln_base_pt.dbc\nsignals:\n"
        "  - signal: EngVehicleSpThrottle2.Veh_V_ActlEng\n    vss: Vehicle.Speeed\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARPULSE_")}
    env.update(
        CARPULSE_EDGE__DEVICE_ID=device,
        CARPULSE_EDGE__BROKER_HOST=local_stack.s.host,
        CARPULSE_EDGE__BROKER_PORT=str(local_stack.s.mqtt_device_port),
        CARPULSE_EDGE__CA_FILE=str(local_stack.pki.ca_cert),
        CARPULSE_EDGE__CERT_FILE=str(cert),
        CARPULSE_EDGE__KEY_FILE=str(key),
        CARPULSE_EDGE__STATE_DIR=str(tmp_path / "state"),
        CARPULSE_EDGE__NUMBA_CACHE_DIR=str(tmp_path / "numba"),
        CARPULSE_EDGE__COMMANDS__PUBLIC_KEY=str(generate_keypair(tmp_path / "k")[1]),
        CARPULSE_EDGE__SOURCES__CAN__DBC=str(dbc),
        CARPULSE_EDGE__SOURCES__CAN__MAPPING=str(mapping),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "carpulse", "edge", "run", "--config", str(EDGE_PI)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{mapping}:5" in proc.stderr and "Vehicle.Speeed" in proc.stderr
