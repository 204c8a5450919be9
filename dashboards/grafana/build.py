"""Writes the Grafana dashboards (JSON) and provisioning: ``python -m dashboards.grafana.build``.

Queries are InfluxQL against the stream's schema (``stream/lines.py``): measurement ``telemetry``,
tag ``device``, one field per VSS path. ``$device`` is a template variable over the device tag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).parent
DS: Final = {"type": "influxdb", "uid": "carpulse-influx"}
SPEED, RPM = '"Vehicle.Speed"', '"Vehicle.Powertrain.CombustionEngine.Speed"'
ODO, BATT = '"Vehicle.TraveledDistance"', '"Vehicle.LowVoltageBattery.CurrentVoltage"'
DTC, FUEL = '"Vehicle.Diagnostics.DTCCount"', '"Vehicle.Powertrain.FuelSystem.RelativeLevel"'
WHERE_DEV: Final = '"device" =~ /^$device$/ AND $timeFilter'


def panel(
    pid: int, title: str, query: str, kind: str = "timeseries", w: int = 12
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": ((pid - 1) % 2) * 12, "y": ((pid - 1) // 2) * 8, "w": w, "h": 8},
        "targets": [
            {
                "refId": "A",
                "datasource": DS,
                "rawQuery": True,
                "resultFormat": "time_series",
                "query": query,
            }
        ],
    }


def device_var(multi: bool) -> dict[str, Any]:
    return {
        "name": "device",
        "type": "query",
        "datasource": DS,
        "query": 'SHOW TAG VALUES FROM "telemetry" WITH KEY = "device"',
        "multi": multi,
        "includeAll": multi,
        "refresh": 2,
    }


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], multi: bool = True
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["carpulse"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {"list": [device_var(multi)]},
        "panels": panels,
    }


# fmt: off
DASHBOARDS: Final = {
    "fleet-overview": dashboard(
        "carpulse-fleet",
        "carpulse · fleet overview",
        [
            panel(
                1,
                "Vehicles reporting",
                f'SELECT count(distinct("device")) FROM (SELECT last({SPEED}) FROM "telemetry" WHERE $timeFilter GROUP BY "device")',
                "stat",
            ),
            panel(
                2,
                "Mean speed by vehicle",
                f'SELECT mean({SPEED}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval), "device" fill(none)',
            ),
            panel(
                3,
                "Distance driven (km)",
                f'SELECT spread({ODO}) / 1000 FROM "telemetry" WHERE {WHERE_DEV} GROUP BY "device"',
                "bargauge",
            ),
            panel(
                4,
                "Vehicles with DTCs",
                f'SELECT max({DTC}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY "device"',
                "table",
            ),
        ],
    ),
    "vehicle-detail": dashboard(
        "carpulse-vehicle",
        "carpulse · vehicle detail",
        [
            panel(
                1,
                "Speed (km/h)",
                f'SELECT mean({SPEED}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval) fill(none)',
            ),
            panel(
                2,
                "Engine speed (rpm)",
                f'SELECT mean({RPM}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval) fill(none)',
            ),
            panel(
                3,
                "12 V battery (V)",
                f'SELECT mean({BATT}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval) fill(none)',
            ),
            panel(
                4,
                "Fuel level (%)",
                f'SELECT last({FUEL}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval) fill(none)',
            ),
        ],
        multi=False,
    ),
    "anomalies-maintenance": dashboard(
        "carpulse-anomalies",
        "carpulse · anomalies and maintenance",
        [
            panel(
                1,
                "Low 12 V battery readings (< 11.8 V)",
                f'SELECT count({BATT}) FROM "telemetry" WHERE {BATT} < 11.8 AND {WHERE_DEV} GROUP BY "device"',
                "table",
            ),
            panel(
                2,
                "DTC count",
                f'SELECT max({DTC}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval), "device" fill(none)',
            ),
            panel(
                3,
                "Engine speed spread (rpm)",
                f'SELECT stddev({RPM}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval), "device" fill(none)',
            ),
            panel(
                4,
                "Odometer (km, for service intervals; VSS sends metres)",
                f'SELECT last({ODO}) / 1000 FROM "telemetry" WHERE {WHERE_DEV} GROUP BY "device"',
                "table",
            ),
        ],
    ),
    "pipeline-health": dashboard(
        "carpulse-pipeline",
        "carpulse · pipeline health",
        [
            panel(
                1,
                "Samples written per interval",
                f'SELECT count({SPEED}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval), "device" fill(0)',
            ),
            panel(
                2,
                "Last sample per vehicle",
                f'SELECT last({SPEED}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY "device"',
                "table",
            ),
            panel(3, "Series cardinality", "SHOW SERIES CARDINALITY", "stat"),
            panel(
                4,
                "Signals per vehicle",
                f'SELECT count(*) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY "device"',
                "table",
            ),
        ],
    ),
}
# fmt: on


def main() -> None:
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, doc in DASHBOARDS.items():
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
