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
# the stream's anomaly detector output (stream/anomaly.py): tags vin, signal, detector
WHERE_VIN: Final = '"vin" =~ /^$vin$/ AND $timeFilter'


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


def vin_var() -> dict[str, Any]:
    return {
        "name": "vin",
        "type": "query",
        "datasource": DS,
        "query": 'SHOW TAG VALUES FROM "anomaly" WITH KEY = "vin"',
        "multi": True,
        "includeAll": True,
        "refresh": 2,
    }


def dashboard(
    uid: str,
    title: str,
    panels: list[dict[str, Any]],
    multi: bool = True,
    extra_vars: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["carpulse"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {"list": [device_var(multi), *extra_vars]},
        "panels": panels,
    }


def status_panel() -> dict[str, Any]:
    """Each device's last status message (online / the broker's last will) as a table."""
    p = panel(
        5,
        "Devices online (1) / offline (0, the last will)",
        'SELECT last("online") AS "online" FROM "device_status" WHERE "device" =~ /^$device$/ '
        'GROUP BY "device", "vin"',
        "table",
        w=24,
    )
    p["description"] = (
        "Each device's last status message (carpulse.status): 1 online, 0 offline. The broker "
        "publishes offline (the device's last will) when a connection dies; the stream writes it "
        "to device_status."
    )
    p["targets"][0]["resultFormat"] = "table"
    return p


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
            status_panel(),
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
                "Anomaly events by vehicle and signal (detector, after its cool-down)",
                f'SELECT sum("events") FROM "anomaly" WHERE {WHERE_VIN} GROUP BY "vin", "signal", "detector"',
                "table",
            ),
            panel(
                2,
                "DTC count",
                f'SELECT max({DTC}) FROM "telemetry" WHERE {WHERE_DEV} GROUP BY time($__interval), "device" fill(none)',
            ),
            panel(
                3,
                "Anomaly score by vehicle and signal (detector output; threshold in the field)",
                f'SELECT max("score") AS "score", last("threshold") AS "threshold" FROM "anomaly" WHERE {WHERE_VIN} GROUP BY time($__interval), "vin", "signal" fill(none)',
            ),
            panel(
                4,
                "Odometer (km, for service intervals; VSS sends metres)",
                f'SELECT last({ODO}) / 1000 FROM "telemetry" WHERE {WHERE_DEV} GROUP BY "device"',
                "table",
            ),
        ],
        extra_vars=(vin_var(),),
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


# The services' own metrics (Prometheus, `/metrics` of each component; see README "Observability").
PROM: Final = {"type": "prometheus", "uid": "carpulse-prometheus"}


def prom_panel(
    pid: int, title: str, exprs: dict[str, str], unit: str = "short", kind: str = "timeseries"
) -> dict[str, Any]:
    """A panel over PromQL ``exprs`` (legend -> expression)."""
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": PROM,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "gridPos": {"x": ((pid - 1) % 2) * 12, "y": ((pid - 1) // 2) * 8, "w": 12, "h": 8},
        "targets": [
            {"refId": chr(65 + i), "datasource": PROM, "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(exprs.items())
        ],
    }


# fmt: off
SERVICES: Final = {
    "uid": "carpulse-services",
    "title": "carpulse · services (Prometheus)",
    "tags": ["carpulse"],
    "schemaVersion": 39,
    "time": {"from": "now-1h", "to": "now"},
    "refresh": "10s",
    "templating": {"list": []},
    "panels": [
        prom_panel(1, "Targets up", {"{{job}} {{instance}}": 'up{job=~"carpulse-.*"}'}, kind="stat"),
        prom_panel(2, "Messages per second (bridge in/out, stream records, CRM records)", {
            "bridge in": "sum(rate(carpulse_bridge_messages_received_total[1m]))",
            "bridge out": "sum(rate(carpulse_bridge_messages_forwarded_total[1m]))",
            "stream records": "sum(rate(carpulse_stream_records_total[1m]))",
            "crm records": "sum(rate(carpulse_crm_records_total[1m]))",
        }, "ops"),
        prom_panel(3, "Dead letters per second by reason", {
            "bridge {{reason}}": "sum by (reason) (rate(carpulse_bridge_dead_letters_total[5m]))",
            "stream {{source}} {{reason}}":
                "sum by (source, reason) (rate(carpulse_stream_dead_letters_total[5m]))",
            "crm {{reason}}": "sum by (reason) (rate(carpulse_crm_dead_letters_total[5m]))",
            "rate limited": "sum(rate(carpulse_bridge_rate_limited_total[5m]))",
        }, "ops"),
        prom_panel(4, "Consumer lag (records)", {
            "stream {{topic}}": "sum by (topic) (carpulse_stream_consumer_lag_messages)",
            "crm {{topic}}": "sum by (topic) (carpulse_crm_consumer_lag_messages)",
        }),
        prom_panel(5, "InfluxDB write latency (p50, p99)", {
            "p50": "histogram_quantile(0.5, sum by (le) (rate(carpulse_stream_sink_write_seconds_bucket[5m])))",
            "p99": "histogram_quantile(0.99, sum by (le) (rate(carpulse_stream_sink_write_seconds_bucket[5m])))",
        }, "s"),
        prom_panel(6, "InfluxDB retries and parked lines per second", {
            "retries": "sum(rate(carpulse_stream_sink_retries_total[5m]))",
            "parked lines": "sum(rate(carpulse_stream_sink_lines_parked_total[5m]))",
            "broken": "max(carpulse_stream_sink_broken)",
        }),
        prom_panel(7, "Edge queue fill and drops", {
            "{{device}} fill": "carpulse_edge_queue_bytes / carpulse_edge_queue_max_bytes",
            "{{device}} dropped {{reason}}": "increase(carpulse_edge_queue_dropped_total[15m])",
        }),
        prom_panel(8, "Detections and rule firings per minute", {
            "anomalies": "sum(rate(carpulse_stream_anomalies_total[5m])) * 60",
            "alerts": "sum(rate(carpulse_stream_alerts_total[5m])) * 60",
            "rule {{rule}}": "sum by (rule) (rate(carpulse_crm_rule_firings_total[5m])) * 60",
        }),
        prom_panel(9, "Dashboard requests per second by status", {
            "{{status}}": "sum by (status) (rate(carpulse_dashboard_requests_total[5m]))",
            "failed logins": 'sum(rate(carpulse_dashboard_logins_total{outcome="failed"}[5m]))',
        }, "reqps"),
        prom_panel(10, "Edge agents connected", {
            "connected": "sum(carpulse_edge_mqtt_connected)",
            "source errors/s": "sum(rate(carpulse_edge_source_errors_total[5m]))",
        }),
    ],
}
# fmt: on
DASHBOARDS["pipeline-metrics"] = SERVICES


def main() -> None:
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, doc in DASHBOARDS.items():
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
