"""A real CAN log -> edge publisher -> Mosquitto (TLS) -> bridge -> Apache Kafka -> Faust -> InfluxDB 1.x.

The reference is independent of our code path: python-can reads the log, cantools decodes each
frame; InfluxDB must hold exactly those values, count for count.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import can
import cantools
import pytest

from carpulse.local_files import with_device_certs
from edge.replay import replay_log
from firmware_bridge.dbc import private_path
from tests.conftest import require_data
from tests.integration.helpers import influx_query, pipeline, wait_for

pytestmark = pytest.mark.integration

LOG = "canlogs/gt350/only202steer.log"
DBC = "canlogs/gt350/ford_lincoln_base_pt.dbc"


def reference(log: Path, dbc: Path) -> dict[tuple[str, int], float]:
    db = cantools.database.load_file(str(dbc))
    expected: dict[tuple[str, int], float] = {}
    for msg in can.CanutilsLogReader(str(log)):
        try:
            m = db.get_message_by_frame_id(msg.arbitration_id)
        except KeyError:
            continue
        ts_us = round(msg.timestamp * 1_000_000)
        for name, value in m.decode(bytes(msg.data), decode_choices=False).items():
            key = (private_path(m.name, name), ts_us)
            assert key not in expected, f"duplicate sample {key} in the log"
            expected[key] = float(value)
    return expected


def test_can_log_lands_in_influxdb_exactly(local_stack, tmp_path: Path) -> None:
    log, dbc = require_data(LOG), require_data(DBC)
    expected = reference(log, dbc)
    assert len(expected) > 10_000
    device = "gt350-it"
    with pipeline(local_stack, tmp_path):
        s = with_device_certs(local_stack.settings, device)  # type: ignore[attr-defined]
        report = replay_log(log, dbc, device, s, rate="max")
        assert report["samples"] == len(expected)
        want_counts = Counter(name for name, _ in expected)

        def counts() -> Counter[str] | None:
            try:
                series = influx_query(
                    local_stack, f"SELECT COUNT(*) FROM telemetry WHERE device='{device}'"
                )
            except AssertionError:  # "database not found" until the worker has created it
                return None
            if not series:
                return None
            cols, row = series[0]["columns"], series[0]["values"][0]
            got = Counter(
                {c.removeprefix("count_"): v for c, v in zip(cols[1:], row[1:], strict=True) if v}
            )
            return got if got == want_counts else None

        try:
            wait_for(counts, 240, "every sample in InfluxDB")
        except AssertionError:
            logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
            raise AssertionError(f"pipeline logs: {logs}") from None

    series = influx_query(local_stack, f"SELECT * FROM telemetry WHERE device='{device}'")
    cols = series[0]["columns"]
    got: dict[tuple[str, int], float] = {}
    for row in series[0]["values"]:
        ts = row[0]
        for col, value in zip(cols[1:], row[1:], strict=True):
            if col != "device" and value is not None:
                got[(col, ts)] = value
    assert got == expected
