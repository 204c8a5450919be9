"""Every Grafana panel query (InfluxQL), variables filled, returns rows from InfluxDB 1.x with demo data."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helpers import influx_query

pytestmark = pytest.mark.integration
GRAFANA = Path(__file__).resolve().parents[2] / "dashboards" / "grafana"
DEVICES = ("graf-car-1", "graf-car-2")
VINS = ("GRAFVIN0000000001", "GRAFVIN0000000002")


def _lines(now_s: int) -> str:
    """Two vehicles, 10 min at 1 Hz, in the schema of stream/lines.py (tag device, VSS fields)."""
    out = []
    for d, dev in enumerate(DEVICES):
        for i in range(600):
            ts = (now_s - 600 + i) * 1_000_000_000
            fields = {
                "Vehicle.Speed": 30.0 + d * 10 + (i % 50),
                "Vehicle.Powertrain.CombustionEngine.Speed": 1500.0 + 10 * (i % 30),
                "Vehicle.TraveledDistance": 12000.0 + i * 0.01,
                "Vehicle.LowVoltageBattery.CurrentVoltage": 11.5 if d and i % 100 == 0 else 12.6,
                "Vehicle.Diagnostics.DTCCount": float(d),
                "Vehicle.Powertrain.FuelSystem.RelativeLevel": 60.0 - i * 0.01,
            }
            body = ",".join(f"{k}={v!r}" for k, v in fields.items())
            out.append(f"telemetry,device={dev} {body} {ts}")
        # the stream's device status (stream.agents: online 1, offline 0 from the last will)
        out.append(f"device_status,device={dev},vin=VIN{d} online={float(d)!r} {now_s * 10**9}")
    return "\n".join(out + anomaly_lines(now_s))


def anomaly_lines(now_s: int) -> list[str]:
    """The stream's own anomaly points (stream.partition_models, default detector) for a speed spike."""
    import numpy as np

    from core.wire import Samples
    from stream.partition_models import PartitionModels

    m, lines = PartitionModels(), []
    for d, vin in enumerate(VINS):
        v = 50.0 + d + np.sin(np.arange(600) / 5.0)
        v[500] = 250.0
        t = (now_s - 600 + np.arange(600)) * 1_000_000
        for a in range(0, 600, 100):  # six micro-batches
            s = Samples.from_columns(
                ["Vehicle.Speed"], np.zeros(100, np.int64), t[a : a + 100], v[a : a + 100]
            )
            out = m.update([(vin, s)])
            lines += [
                ln[: ln.rindex(" ")] + ln[ln.rindex(" ") :] + "000" for ln in out.anomaly_lines
            ]
    assert sum("events=1.0" in ln for ln in lines) == len(VINS)  # the spike, once per vehicle
    return lines


def influx_dashboards() -> list[Path]:
    """The InfluxQL dashboards (pipeline-metrics is PromQL: tests/integration/test_observability)."""
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    return [
        f
        for f in files
        if json.loads(f.read_text())["panels"][0]["datasource"]["type"] == "influxdb"
    ]


def queries() -> list[tuple[str, str, str]]:
    out = []
    for f in influx_dashboards():
        doc = json.loads(f.read_text())
        for p in doc["panels"]:
            for t in p["targets"]:
                out.append((f.stem, p["title"], t["query"]))
        for var in doc["templating"]["list"]:
            out.append((f.stem, f"variable {var['name']}", var["query"]))
    return out


def fill(q: str) -> str:
    dev, vin = "(" + "|".join(DEVICES) + ")", "(" + "|".join(VINS) + ")"
    return (q.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "30s")
            .replace("$device", dev).replace("$vin", vin))  # fmt: skip


def test_provisioning_points_at_the_dashboards_and_an_influxql_source() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/carpulse.yaml").read_text())
    src, prom = ds["datasources"]
    assert src["type"] == "influxdb" and src["jsonData"]["dbName"] == "carpulse"
    assert prom["type"] == "prometheus"
    uids = {(p["datasource"]["type"], p["datasource"]["uid"])
            for f in (GRAFANA / "dashboards").glob("*.json")
            for p in json.loads(f.read_text())["panels"]}  # fmt: skip
    assert uids == {(src["type"], src["uid"]), (prom["type"], prom["uid"])}
    assert len(influx_dashboards()) == 4
    assert len(list((GRAFANA / "dashboards").glob("*.json"))) == 5


def test_every_panel_query_returns_rows(local_stack: Any) -> None:
    s = local_stack.s
    base = f"http://{s.host}:{s.influx_port}"
    urllib.request.urlopen(base + "/query?" + urllib.parse.urlencode({"q": "CREATE DATABASE carpulse"}),
                           data=b"", timeout=10).close()  # fmt: skip
    req = urllib.request.Request(base + "/write?db=carpulse&precision=ns",
                                 data=_lines(int(time.time())).encode(), method="POST")  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204
    qs = queries()
    assert len(qs) >= 16
    empty = []
    t0 = time.perf_counter()
    for dash, title, q in qs:
        series = influx_query(local_stack, fill(q))
        if not series or not any(row for sr in series for row in sr.get("values", [])):
            empty.append(f"{dash}: {title}: {q}")
    print(f"{len(qs)} Grafana queries in {time.perf_counter() - t0:.2f} s")
    assert not empty, "queries without rows:\n" + "\n".join(empty)
    # the anomaly panels show the detector's output: one event per vehicle, on the spiked signal
    (events_q,) = [q for _, title, q in qs if title.startswith("Anomaly events")]
    rows = {(sr["tags"]["vin"], sr["tags"]["signal"]): sr["values"][0][1]
            for sr in influx_query(local_stack, fill(events_q))}  # fmt: skip
    assert rows == {(vin, "Vehicle.Speed"): 1.0 for vin in VINS}
