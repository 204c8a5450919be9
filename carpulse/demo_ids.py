"""The demo's car under a CAN attack: the real edge agent with ``[edge.intrusion]`` on a real log.

``demo-ids`` is an ``edge.agent.EdgeAgent`` (the product's agent, not a stand-in) whose CAN
source replays a held-out gt350 log (``ATTACKED``) with a 2 s DoS injected at 5 s
(``models.ids.attacks``); its profile is learned at start from other gt350 logs (``TRAIN``), as
``carpulse ids learn`` does. The agent's ``intrusion`` event goes the product's way: MQTT ->
bridge -> Kafka -> CRM worker -> the desk's security queue.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from carpulse.datasets import canlog_dir

DEVICE = "demo-ids"
CAR = "gt350"
DBC = "ford_lincoln_base_pt.dbc"
TRAIN = ("keyon.log", "aconoff.log", "steeringchanges.log", "normalsportcomfort.log")
ATTACKED = "tracoff.log"


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


def start(settings: Any, workdir: Path) -> tuple[Any, threading.Thread]:
    """Build and start the agent in a thread; ``agent.stop()`` ends it."""
    from edge.agent import AgentConfig, EdgeAgent
    from edge.intrusion import attach_intrusion

    profile, attacked = prepare(workdir)
    s = settings.model_copy(
        update={
            "edge": settings.edge.model_copy(update={"device_id": DEVICE}),
            "metrics": settings.metrics.model_copy(update={"edge_port": 0}),
        }
    )
    source = {"type": "can", "name": "can", "log": str(attacked),
              "dbc": str(canlog_dir() / CAR / DBC), "mapping": CAR}  # fmt: skip
    agent = EdgeAgent(s, AgentConfig(sources=[source]))
    attach_intrusion(agent, {"intrusion": {"enabled": True, "profile": str(profile)}})
    th = threading.Thread(target=agent.run, name="demo-ids", daemon=True)
    th.start()
    return agent, th
