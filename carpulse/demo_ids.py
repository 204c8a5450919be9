"""The demo's car under a CAN attack: the real edge agent with ``[edge.intrusion]`` on a real log.

``demo-ids`` is an ``edge.agent.EdgeAgent`` (the product's agent, not a stand-in) whose log
source (``edge.sources.log``) replays a held-out gt350 log (``ATTACKED``) with a 2 s DoS injected at 5 s
(``models.ids.attacks``); its profile is learned at start from other gt350 logs (``TRAIN``), as
``carpulse ids learn`` does. The agent's ``intrusion`` event goes the product's way: MQTT ->
bridge -> Kafka -> CRM worker -> the desk's security queue.

It is also the demo's car that acts on the console's remote actions (``command_tables``): it
trusts the stack's command key (``pki/cmd-sign.pub``, made by ``command_key`` before the dashboard
starts, which then signs with ``cmd-sign.key``), locks and unlocks a virtual door actuator and hands
``navigate`` to a head-unit simulator on a Unix socket; its acks say what the car did.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets import canlog_dir

DEVICE = "demo-ids"
CAR = "gt350"
DBC = "ford_lincoln_base_pt.dbc"
TRAIN = ("keyon.log", "aconoff.log", "steeringchanges.log", "normalsportcomfort.log")
ATTACKED = "tracoff.log"
HEAD_UNIT_SOCKET = "demo-ids-head-unit.sock"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are at most 107 bytes on Linux


def available() -> bool:
    root = canlog_dir() / CAR
    return all((root / n).exists() for n in (*TRAIN, ATTACKED, DBC))


def prepare(workdir: Path) -> tuple[Path, Path]:
    """The profile file and the attacked log, written into ``workdir``."""
    from firmware_bridge.frames import read_candump
    from models.ids.attacks import inject, write_candump
    from models.ids.profile import learn

    root = canlog_dir() / CAR
    logs = [(str(root / n), (root / n).read_bytes(), read_candump(root / n)[0]) for n in TRAIN]
    profile = workdir / "demo-gt350.ids.json"
    profile.write_text(json.dumps(learn(logs, CAR), indent=1) + "\n")
    clean, _ = read_candump(root / ATTACKED)
    t0 = int(clean.ts_us[0])
    got = inject(clean, "dos", t0 + 5_000_000, t0 + 7_000_000, np.random.default_rng(0))
    assert got is not None  # a DoS always applies
    attacked = workdir / "demo-ids-attacked.log"
    write_candump(got[0], attacked)
    return profile, attacked


def command_key(settings: Any) -> Path:
    """The stack's command verification key (``pki/cmd-sign.pub``), made with its signing key
    (``cmd-sign.key``, which the dashboard signs with) when the stack has none yet."""
    from core.signing import generate_keypair

    return generate_keypair(Path(settings.stack.data_dir) / "pki")[1]


def head_unit_socket(workdir: Path) -> Path:
    path = workdir / HEAD_UNIT_SOCKET
    if len(str(path)) > MAX_SOCKET_PATH:
        path = Path(tempfile.mkdtemp(prefix="carpulse-hu-")) / HEAD_UNIT_SOCKET
    return path


def command_tables(settings: Any, workdir: Path) -> dict[str, Any]:
    """The car's ``[edge.commands]``, ``[edge.actuators.doors]`` (virtual, starts locked) and
    ``[edge.head_unit]`` tables, as a config file would give them to ``edge.wiring``."""
    return {
        "commands": {"public_key": str(command_key(settings))},
        "actuators": {"doors": {"kind": "virtual", "state": "locked"}},
        "head_unit": {"socket": str(head_unit_socket(workdir))},
    }


def build(settings: Any, workdir: Path) -> tuple[Any, Any]:
    """The agent, not started: the attacked log's CAN source and its intrusion detector, the
    console's commands with the door actuator; and its head-unit simulator, running (closed when
    the agent stops)."""
    from carpulse.local_files import with_device_certs
    from edge.agent import AgentConfig, EdgeAgent
    from edge.headunit import HeadUnitSimulator
    from edge.intrusion import attach_intrusion
    from edge.wiring import attach_commands

    profile, attacked = prepare(workdir)
    s = settings.model_copy(
        update={
            "edge": settings.edge.model_copy(update={"device_id": DEVICE}),
            "metrics": settings.metrics.model_copy(update={"edge_port": 0}),
        }
    )
    # the log source at the log's own speed, stamped with the wall clock as a live bus would be
    source = {"type": "log", "name": "can", "log": str(attacked), "rate": "real", "restamp": True,
              "dbc": str(canlog_dir() / CAR / DBC), "mapping": CAR}  # fmt: skip
    agent = EdgeAgent(with_device_certs(s, DEVICE), AgentConfig(sources=[source]))
    doc = {"intrusion": {"enabled": True, "profile": str(profile)},
           **command_tables(settings, workdir)}  # fmt: skip
    attach_intrusion(agent, doc)
    head_unit = HeadUnitSimulator(doc["head_unit"]["socket"]).start()
    agent.stop_hooks.append(head_unit.close)
    attach_commands(agent, doc, None)
    return agent, head_unit


def start(settings: Any, workdir: Path) -> tuple[Any, threading.Thread]:
    """Build and start the agent in a thread; ``agent.stop()`` ends it."""
    agent, _head_unit = build(settings, workdir)
    th = threading.Thread(target=agent.run, name="demo-ids", daemon=True)
    th.start()
    return agent, th
