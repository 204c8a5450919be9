"""MQTT topic layout and Kafka topic names shared by the edge, the bridge and the stream."""

from __future__ import annotations

import re
from typing import Final

from core.errors import WireError

MQTT_ROOT: Final = "carpulse/v1"
DEVICE_CHANNELS: Final[tuple[str, ...]] = ("telemetry", "events", "status", "cmd-ack")

# A device id is the MQTT client id and the certificate CN: keep it topic- and DNS-safe.
DEVICE_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

# Kafka topics written by the ingest bridge and read by the Faust app.
KAFKA_TELEMETRY: Final = "carpulse.telemetry"
KAFKA_EVENTS: Final = "carpulse.events"
KAFKA_STATUS: Final = "carpulse.status"
KAFKA_CMD_ACK: Final = "carpulse.cmd-ack"
KAFKA_DEADLETTER: Final = "carpulse.deadletter"
# Line protocol parked by the InfluxDB sink during an outage, replayed by the retry agent.
KAFKA_INFLUX_RETRY: Final = "carpulse.influx-retry"
# Written by the Faust app (stream/): live state (compacted), detector output, trips and alerts.
KAFKA_VEHICLE_STATE: Final = "vehicle-state"
KAFKA_ANOMALIES: Final = "carpulse.anomalies"
KAFKA_PREDICTIONS: Final = "carpulse.predictions"
KAFKA_TRIPS: Final = "carpulse.trips"
KAFKA_DAILY: Final = "carpulse.daily"
KAFKA_ALERTS: Final = "carpulse.alerts"
# Compacted, key VIN: written by the CRM, read by the stream: may this vehicle's positions be
# stored, and under which ownership period (core.privacy.LocationPolicy). No record = no.
KAFKA_PRIVACY: Final = "carpulse.privacy"
KAFKA_BY_CHANNEL: Final[dict[str, str]] = {
    "telemetry": KAFKA_TELEMETRY,
    "events": KAFKA_EVENTS,
    "status": KAFKA_STATUS,
    "cmd-ack": KAFKA_CMD_ACK,
}


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is a valid device id, else raise ``WireError``."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise WireError("bad_device_id", f"{device_id!r} is not a valid device id")
    return device_id


def device_topic(device_id: str, channel: str) -> str:
    """Topic a device publishes ``channel`` on, e.g. ``carpulse/v1/car-1/telemetry``."""
    check_device_id(device_id)
    if channel not in DEVICE_CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {DEVICE_CHANNELS}")
    return f"{MQTT_ROOT}/{device_id}/{channel}"


def command_topic(device_id: str, name: str) -> str:
    """Topic a command ``name`` is sent to the device on."""
    check_device_id(device_id)
    if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", name):
        raise ValueError(f"bad command name {name!r}")
    return f"{MQTT_ROOT}/{check_device_id(device_id)}/cmd/{name}"


def parse_topic(topic: str) -> tuple[str, str]:
    """Split a device topic into ``(device_id, channel)``; ``cmd/<name>`` gives channel ``cmd/<name>``."""
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != MQTT_ROOT:
        raise WireError("bad_topic", f"{topic!r} is not under {MQTT_ROOT}/")
    device_id = check_device_id(parts[2])
    channel = "/".join(parts[3:])
    if channel not in DEVICE_CHANNELS and not (len(parts) == 5 and parts[3] == "cmd" and parts[4]):
        raise WireError("bad_topic", f"unknown channel {channel!r} in {topic!r}")
    return device_id, channel


def subscription(channel: str, share_group: str | None = None) -> str:
    """Subscription filter for ``channel`` of every device, optionally as a shared subscription."""
    flt = f"{MQTT_ROOT}/+/{channel}"
    return f"$share/{share_group}/{flt}" if share_group else flt
