"""``carpulse eval faults`` in its short form: every scenario loses and duplicates nothing.

The evaluation runs as the command users run (a subprocess, JSON on stdout); each test takes
one Kafka topology, so together they cover every scenario of the short form:

- one broker: Kafka stop/start, kill -9 of a worker and of a bridge, Mosquitto restart,
  InfluxDB down ``CARPULSE_FAULTS_OUTAGE_S`` (default 10 s), ``CARPULSE_FAULTS_KILLS``
  (default 3) kill -9 of an edge agent;
- three brokers: kill -9 of the partition leader, then (``make test-full``) of the active KRaft
  controller.

``CARPULSE_FAULTS_SCENARIOS=a,b`` runs only those (both tests skip what they do not own).

Mosquitto restart: Mosquitto 2.0.11 (Debian 12) does not restore *shared* subscriptions of
persistent sessions from its persistence file, so with a share group the messages cars publish
before the bridges subscribe again are acknowledged and dropped (2,268 of 4,240 accepted samples
in a short run). The bridges therefore use plain persistent subscriptions by default
(``[mqtt] share_group = ""``), and this scenario must lose nothing.

Worker kill: a worker killed with -9 after a micro-batch's InfluxDB write and before its dedupe
state (or its offset commit) reached Kafka has that batch written again by the next owner of its
partitions: at least once into an idempotent sink, InfluxDB keeps one point per series and time.
Seen twice (96 and 152 samples written again; both runs with load on the machine, where the
window between the write and the changelog is longer); allowed up to a tenth of the scenario's
samples, and the stored points must still equal what the agents accepted.

Known stall: in 2 of 4 short-form runs on a loaded machine the surviving Faust worker never
finished restoring the killed worker's changelog partitions ("No event received for active tp
... since recovery start") and delivered nothing for those partitions until the killed worker
came back (after ``--recovery-timeout-s``); nothing was lost. A worker-kill recovery timeout
xfails too, after every other check. The test waits 45 s for a recovery (healthy ones took 0.4-14 s
in BENCHMARKS.md's runs): a stall costs `make test` 45 s, not the 90 s it cost before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from carpulse.evals.faults import REWRITES_ALLOWED, SINGLE, TRIPLE
from tests.reliability.helpers import aot_kernels

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

OUTAGE_S = os.environ.get("CARPULSE_FAULTS_OUTAGE_S", "10")
KILLS = os.environ.get("CARPULSE_FAULTS_KILLS", "3")
ONLY = [s for s in os.environ.get("CARPULSE_FAULTS_SCENARIOS", "").split(",") if s]
# `make test` kills the partition leader of the three-broker cluster; `make test-full`
# (CARPULSE_FAULTS_FULL=1) kills the active controller too (about 2 minutes more). A controller kill
# under a producer is also in tests/reliability/test_kafka_cluster.py, in every run.
FULL = os.environ.get("CARPULSE_FAULTS_FULL", "") not in ("", "0")
DEFAULT_TRIPLE = TRIPLE if FULL else ("kafka-leader",)


def run_eval(tmp_path: Path, scenarios: list[str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "carpulse", "eval", "faults", "--json",
            "--scenarios", ",".join(scenarios), "--outage-s", OUTAGE_S, "--kills", KILLS,
            "--down-s", "5", "--lead-s", "2", "--tail-s", "2", "--vehicles", "4", "--quiet-s", "30", "--recovery-timeout-s", "45",
            "--keep", str(tmp_path / "run")]  # fmt: skip
    kernels = aot_kernels()  # the agents start without compiling (a Pi's default too)
    if kernels is not None:
        argv += ["--kernels-dir", str(kernels)]
    err = tmp_path / "faults.err"
    with open(err, "wb") as stderr:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, timeout=900)
    progress = [ln for ln in err.read_text().splitlines() if ln.startswith("[faults")]
    assert proc.returncode == 0, "\n".join(err.read_text().splitlines()[-40:])
    result: dict[str, Any] = json.loads(proc.stdout)
    if kernels is not None:  # every agent ran the build, none compiled with numba
        assert result["settings"]["kernels"] == "aot"
        logs = list((tmp_path / "run").glob("rig-*/logs/edge-*.log"))
        for log in logs:
            text = log.read_text(errors="replace")
            assert "loaded ahead of time" in text and "numba compiles" not in text, log
        assert logs
    print("\n" + "\n".join(progress))
    return result


KNOWN_STALL = {"worker-kill"}


def check(result: dict[str, Any], scenarios: list[str]) -> None:
    assert sorted(result["scenarios"]) == sorted(scenarios)
    known: list[str] = []
    for name, r in result["scenarios"].items():
        assert "error" not in r, f"{name}: {r}"
        assert r["lost"] == 0, f"{name}: {r}"
        if name in REWRITES_ALLOWED:  # the killed worker's last batch, written again (bounded)
            assert 0 <= r["duplicates"] <= r["accepted"] // 10, f"{name}: {r}"
        else:
            assert r["duplicates"] == 0, f"{name}: {r}"
        assert r["unexpected"] == 0, f"{name}: {r}"
        assert r["stored"] == r["accepted"] > 0, f"{name}: {r}"
        assert r["crm"]["inbox"] == r["crm"]["crashes"] > 0, f"{name}: {r}"
        if name in KNOWN_STALL and r["recovery_s"] is None:
            known.append(f"{name}: no recovery within the timeout ({r['fault']})")
        else:
            assert r["recovery_s"] is not None, f"{name}: {r}"
        if name != "edge-kill":  # only a kill leaves samples in an agent's memory
            assert r["in_memory_at_kill"] == 0 and r["source"] == r["accepted"], f"{name}: {r}"
    allowed = sum(r["duplicates"] for n, r in result["scenarios"].items() if n in REWRITES_ALLOWED)
    assert result["total"]["duplicates"] == allowed
    if known:
        pytest.xfail("known issues (see the module docstring): " + "; ".join(known))
    assert result["ok"] and result["total"]["lost"] == 0


@pytest.mark.parametrize("group", [SINGLE, DEFAULT_TRIPLE], ids=["one-broker", "three-brokers"])
def test_faults_short_form_loses_and_duplicates_nothing(
    tmp_path: Path, group: tuple[str, ...]
) -> None:
    scenarios = [s for s in group if not ONLY or s in ONLY]
    if not scenarios:
        pytest.skip("CARPULSE_FAULTS_SCENARIOS selects none of this topology's scenarios")
    check(run_eval(tmp_path, scenarios), scenarios)
