"""Every source plugin passes the same contract (python-can's back-to-back style).

Each fixture builds a source through the registry, next to something feeding it: a log written
from the simulator (candump for the CAN source; candump, ASC and BLF for the log source), a
python-can ``virtual`` bus with a sender thread, the simulator itself, the ELM327 emulator
(OBD-II) and a pty carrying NMEA (GNSS).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import numpy as np
import pytest

from core.errors import ConfigError, SourceUnavailableError
from core.wire import NAME_RE
from edge.sources import SOURCES, Source, create_source
from edge.sources.base import source_class

NMEA = (
    b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
    b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
)


def _sim_frames(seconds: float) -> Any:
    from firmware_bridge.dbc import load_dbc
    from firmware_bridge.sim import SimulatedCar, default_dbc

    car = SimulatedCar(load_dbc(default_dbc(), strict=False), seed=1)
    return car.frames(1_700_000_000_000_000, 40.0, seconds)


def _prius_mapping(tmp: Path) -> Path:
    from firmware_bridge.sim import PRIUS_VSS

    lines = ["vehicle: simulated Prius\nsignals:\n"]
    lines += [f"  - signal: {m}.{s}\n    vss: {v}\n" for (m, s), v in PRIUS_VSS.items()]
    p = tmp / "prius.yaml"
    p.write_text("".join(lines))
    return p


@pytest.fixture
def can_log(tmp_path: Path) -> Iterator[Source]:
    from firmware_bridge.can_logs import write_log
    from firmware_bridge.sim import default_dbc

    log = tmp_path / "sim.log"
    write_log(log, _sim_frames(2.0))
    yield create_source(
        "can", "log", {"log": str(log), "dbc": str(default_dbc()), "mapping": str(_prius_mapping(tmp_path)),
                       "rate": 4.0, "strict": False, "block_ms": 50},
    )  # fmt: skip


def _log_source(tmp_path: Path, suffix: str) -> Source:
    from firmware_bridge.can_logs import write_log
    from firmware_bridge.sim import default_dbc

    log = tmp_path / f"sim{suffix}"
    write_log(log, _sim_frames(2.0))
    return create_source(
        "log", "log", {"log": str(log), "dbc": str(default_dbc()), "mapping": str(_prius_mapping(tmp_path)),
                       "rate": 4.0, "restamp": True, "strict": False, "block_ms": 50},
    )  # fmt: skip


@pytest.fixture
def log_candump(tmp_path: Path) -> Source:
    return _log_source(tmp_path, ".log")


@pytest.fixture
def log_asc(tmp_path: Path) -> Source:
    return _log_source(tmp_path, ".asc")


@pytest.fixture
def log_blf(tmp_path: Path) -> Source:
    return _log_source(tmp_path, ".blf")


@pytest.fixture
def can_virtual(tmp_path: Path) -> Iterator[Source]:
    from firmware_bridge.can_logs import frames_to_messages
    from firmware_bridge.sim import default_dbc

    channel = f"contract-{os.getpid()}-{time.monotonic_ns()}"
    src = create_source(
        "can", "bus", {"interface": "virtual", "channel": channel, "dbc": str(default_dbc()),
                       "mapping": str(_prius_mapping(tmp_path)), "strict": False, "block_ms": 50},
    )  # fmt: skip
    msgs = list(frames_to_messages(_sim_frames(1.0)))
    stop = threading.Event()

    def send() -> None:
        with can.Bus(interface="virtual", channel=channel) as bus:
            while not stop.is_set():
                for m in msgs[:50]:
                    m.timestamp = time.time()
                    bus.send(m)
                stop.wait(0.02)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    yield src
    stop.set()
    t.join(5)


@pytest.fixture
def sim() -> Source:
    return create_source("sim", "sim", {"seed": 3, "min_block_s": 0.02})


@pytest.fixture
def obd() -> Iterator[Source]:
    from firmware_bridge.obd.emulator import ElmEmulator

    with ElmEmulator() as emu:
        yield create_source(
            "obd", "obd", {"port": emu.port, "pids": [0x0C, 0x0D], "interval_s": 0.2}
        )


@pytest.fixture
def gnss() -> Iterator[Source]:
    master, slave = os.openpty()
    src = create_source("gnss", "gnss", {"port": os.ttyname(slave)})
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(0.05):
            os.write(master, NMEA)

    t = threading.Thread(target=feed, daemon=True)
    t.start()  # keeps writing, so lines arrive after open() flushed the tty
    yield src
    stop.set()
    t.join(5)
    src.close()
    os.close(master)
    os.close(slave)


@pytest.fixture
def tick(tmp_path: Path) -> Source:
    return create_source("tick", "tick", {"hz": 200, "journal": str(tmp_path / "ticks")})


PLUGINS = [
    "can_log",
    "log_candump",
    "log_asc",
    "log_blf",
    "can_virtual",
    "sim",
    "obd",
    "gnss",
    "tick",
]


@pytest.fixture(params=PLUGINS)
def source(request: pytest.FixtureRequest) -> Source:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


class TestSourceContract:
    def test_read_before_open_is_refused(self, source: Source) -> None:
        with pytest.raises(SourceUnavailableError):
            source.read(0.1)

    def test_negative_timeout_is_refused(self, source: Source) -> None:
        with source, pytest.raises(ValueError):
            source.read(-1)

    def test_delivers_vss_named_samples_within_the_timeout(self, source: Source) -> None:
        got = 0
        with source:
            deadline = time.monotonic() + 20
            while got == 0 and time.monotonic() < deadline:
                t0 = time.monotonic()
                s = source.read(0.3)
                assert time.monotonic() - t0 < 0.3 + 2.5  # one driver round trip at most
                got += len(s)
                if len(s):
                    assert all(NAME_RE.match(n) for n in s.names)
                    assert s.sig.dtype == np.int32 and s.ts_us.dtype == np.int64
                    assert s.value.dtype == np.float64
                    assert s.sig.max() < len(s.names)
                    assert abs(int(s.ts_us[0]) - time.time() * 1e6) < 86_400e6  # stamped live
            assert got > 0, f"{source!r} delivered nothing in 20 s"
            assert source.counters.samples == got and source.counters.reads >= 1

    def test_open_and_close_are_idempotent(self, source: Source) -> None:
        source.open()
        source.open()
        assert source.is_open
        source.close()
        source.close()
        assert not source.is_open
        with pytest.raises(SourceUnavailableError):
            source.read(0.1)


def test_registry_knows_every_plugin_and_refuses_unknown_ones() -> None:
    for kind in SOURCES:
        assert issubclass(source_class(kind), Source)
    with pytest.raises(ConfigError, match="unknown source type 'camera'"):
        create_source("camera", "x", {})
    with pytest.raises(ConfigError, match="source 'x' \\(type sim\\)"):
        create_source("sim", "x", {"colour": "red"})
    with pytest.raises(ConfigError, match="either 'log' or 'interface'"):
        create_source("can", "x", {"dbc": "x.dbc"})
