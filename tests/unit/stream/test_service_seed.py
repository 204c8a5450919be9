"""The CRM's service records seed the service-due model: the registry carries each vehicle's last
service and the next service is predicted from it, not from the first odometer reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from stream.partition_models import PartitionModels
from stream.registry import load_registry
from stream.service_due import schedule_from
from tests.unit.stream.test_service_due import DAY0, START_KM, drive

SERVICE_DAY = DAY0 - 100  # 2025-11-08
SERVICE_KM = 18_500.0


def registry(tmp_path: Path, last: object) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps([
        {"device_id": "car-1", "vin": "VIN1", "last_service": last},
        {"device_id": "car-2", "vin": "VIN2"},
    ]))  # fmt: skip
    return path


def test_registry_reads_the_last_service(tmp_path: Path) -> None:
    reg = load_registry(str(registry(tmp_path, {"date": "2025-11-08", "odometer_km": 18500})))
    assert reg.vin("car-1") == "VIN1"
    assert reg.last_service == {"VIN1": (float(SERVICE_DAY), SERVICE_KM)}
    with pytest.raises(ConfigError, match="item 0: bad last_service"):
        load_registry(str(registry(tmp_path, {"date": "yesterday", "odometer_km": 1})))


def test_the_interval_starts_at_the_service_record() -> None:
    sched = schedule_from(km=3_000.0, days=365.0)
    seeded = PartitionModels(schedule=sched)
    seeded.seed_services({"VIN1": (float(SERVICE_DAY), SERVICE_KM)})
    last = drive(seeded, 10, 50.0)[-1]
    assert last["interval_start"] == "service_record"
    assert last["cycle"] == f"2025-11-08@{SERVICE_KM:.0f}km"
    assert last["km"] == pytest.approx(SERVICE_KM + 3_000.0)  # not START_KM + 3000
    # the unseeded vehicle in the same partition keeps the first reading
    other = drive(seeded, 10, 50.0, vin="VIN2")[-1]
    assert other["interval_start"] == "first_seen"
    assert other["km"] == pytest.approx(START_KM + 3_000.0)


def test_a_newer_service_restarts_a_tracked_vehicle_and_survives_a_checkpoint() -> None:
    sched = schedule_from(km=3_000.0, days=365.0)
    m = PartitionModels(schedule=sched)
    drive(m, 5, 50.0)  # tracked from its first reading
    serviced = (float(DAY0 + 5), START_KM + 250.0)
    m.seed_services({"VIN1": serviced})
    restored = PartitionModels.from_bytes(m.to_bytes(), sched)
    restored.seed_services({"VIN1": serviced})  # same record: kept, still marked as seeded
    last = drive(restored, 4, 50.0, day0=DAY0 + 5)[-1]
    assert last["interval_start"] == "service_record"
    assert last["km"] == pytest.approx(START_KM + 250.0 + 3_000.0)
    old = PartitionModels.from_bytes(m.to_bytes(), sched)
    old.seed_services({"VIN1": (float(DAY0 - 400), 1.0)})  # older than the interval: ignored
    assert old.service.track.start_day[0] == DAY0 + 5
