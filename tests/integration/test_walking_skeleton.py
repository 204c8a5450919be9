"""A real CAN log -> `carpulse replay` (the edge agent: log source, compiled decoder, VSS mapping,
durable queue, publisher) -> Mosquitto (TLS) -> bridge -> Apache Kafka -> Faust -> InfluxDB 1.x.

The reference is independent of our code path: python-can reads the log, cantools decodes each
frame and, for the VSS names, the mapping YAML is read with PyYAML and applied by hand (units,
value maps); InfluxDB must hold exactly those values, count for count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
import yaml

from firmware_bridge.dbc import private_path
from firmware_bridge.vss import MAPPINGS_DIR
from tests.conftest import require_data
from tests.integration.helpers import influx_query, pipeline, pipeline_env, wait_for

pytestmark = pytest.mark.integration

PRIVATE_LOG = "canlogs/gt350/only202steer.log"
VSS_LOG = "canlogs/gt350/keyon.log"
DBC = "canlogs/gt350/ford_lincoln_base_pt.dbc"
UNITS = {("km", "m"): 1000.0}  # the conversions the gt350 mapping uses


def reference(
    log: Path, dbc: Path, mapping: dict[str, Any] | None = None
) -> dict[tuple[str, int], float]:
    db = cantools.database.load_file(str(dbc))
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    if mapping is not None:
        for e in mapping["signals"]:
            msg, _, sig = e["signal"].partition(".")
            entries[(msg, sig)] = e
    expected: dict[tuple[str, int], float] = {}
    for msg in can.CanutilsLogReader(str(log)):
        try:
            m = db.get_message_by_frame_id(msg.arbitration_id)
        except KeyError:
            continue
        ts_us = round(msg.timestamp * 1_000_000)
        for name, value in m.decode(bytes(msg.data), decode_choices=False).items():
            if mapping is None:
                key, got = (private_path(m.name, name), ts_us), float(value)
            else:
                e = entries.get((m.name, name))
                if e is None:
                    continue
                got = float(value)
                if "unit" in e:
                    got *= UNITS[(e["unit"]["from"], e["unit"]["to"])]
                if "map" in e:
                    if got not in e["map"]:
                        continue  # a value the mapping leaves out (e.g. a faulty belt sensor)
                    got = float(e["map"][got])
                key = (e["vss"], ts_us)
            assert key not in expected, f"duplicate sample {key} in the log"
            expected[key] = got
    return expected


def replay(stack: Any, log: Path, dbc: Path, device: str, *extra: str) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, "-m", "carpulse", "replay", str(log), "--dbc", str(dbc),
         "--device", device, "--rate", "max", *extra],
        env=pipeline_env(stack), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return report


def influx_rows(stack: Any, device: str) -> dict[tuple[str, int], float]:
    series = influx_query(stack, f"SELECT * FROM telemetry WHERE device='{device}'")
    cols = series[0]["columns"]
    got: dict[tuple[str, int], float] = {}
    for row in series[0]["values"]:
        ts = row[0]
        for col, value in zip(cols[1:], row[1:], strict=True):
            if col != "device" and value is not None:
                got[(col, ts)] = float(value)
    return got


def wait_counts(
    stack: Any, device: str, expected: dict[tuple[str, int], float], logs: Path
) -> None:
    want = Counter(name for name, _ in expected)

    def counts() -> Counter[str] | None:
        try:
            series = influx_query(stack, f"SELECT COUNT(*) FROM telemetry WHERE device='{device}'")
        except AssertionError:  # "database not found" until the worker has created it
            return None
        if not series:
            return None
        cols, row = series[0]["columns"], series[0]["values"][0]
        got = Counter(
            {c.removeprefix("count_"): v for c, v in zip(cols[1:], row[1:], strict=True) if v}
        )
        return got if got == want else None

    try:
        wait_for(counts, 240, f"every sample of {device} in InfluxDB")
    except AssertionError:
        tails = {p.name: p.read_text()[-3000:] for p in logs.glob("*.log")}
        raise AssertionError(f"pipeline logs: {tails}") from None


def test_can_log_lands_in_influxdb_exactly(local_stack, tmp_path: Path) -> None:
    private_log, vss_log, dbc = require_data(PRIVATE_LOG), require_data(VSS_LOG), require_data(DBC)
    mapping = yaml.safe_load((MAPPINGS_DIR / "gt350.yaml").read_text())
    assert mapping["dbc"] == dbc.name
    want_vss = reference(vss_log, dbc, mapping)
    want_private = reference(private_log, dbc)
    assert len(want_private) > 10_000 and len(want_vss) > 5_000
    assert len({name for name, _ in want_vss}) >= 20  # many VSS signals, not one
    with pipeline(local_stack, tmp_path):
        # The shipped mapping is picked for this DBC: the samples carry VSS names.
        report = replay(local_stack, vss_log, dbc, "gt350-vss")
        assert report["mapping"] == "gt350" and report["flushed"] is True
        assert report["samples"] == len(want_vss) and report["queued_left"] == 0
        assert report["frames"] == sum(1 for _ in can.CanutilsLogReader(str(vss_log)))
        assert report["refused"] == 0
        # --mapping none: every DBC signal under its private name, as the replay used to send.
        report = replay(local_stack, private_log, dbc, "gt350-it", "--mapping", "none")
        assert report["samples"] == len(want_private)
        wait_counts(local_stack, "gt350-vss", want_vss, tmp_path)
        wait_counts(local_stack, "gt350-it", want_private, tmp_path)
    got = influx_rows(local_stack, "gt350-vss")
    assert all(name.startswith("Vehicle.") and ".Private." not in name for name, _ in got)
    assert got == want_vss
    assert influx_rows(local_stack, "gt350-it") == want_private
