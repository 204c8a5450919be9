"""``carpulse bench e2e``'s CRM phase: its records are one CRM event each, in the stated mix, and
the baseline (the rules alone) places every one of them on the seeded fleet."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from carpulse.bench.e2e_crm import CRM_MIX, GATE, crm_records, engine_alone, seeded_store
from core.topics import KAFKA_ALERTS, KAFKA_ANOMALIES, KAFKA_EVENTS, KAFKA_PREDICTIONS
from crm.normalize import from_record


def test_each_record_is_one_crm_event_in_the_stated_mix(tmp_path: Path) -> None:
    _, vins, devices, plates = seeded_store(f"sqlite:///{tmp_path / 'c.sqlite'}", 12)
    recs = crm_records(vins, devices, plates, 1000)
    assert recs == crm_records(vins, devices, plates, 1000)  # the same load every run
    kinds: Counter[str] = Counter()
    for topic, _key, value in recs:
        (ev,) = from_record(topic, value, frozenset({GATE}))
        kinds[ev.kind] += 1
    share = {k: kinds[k] / len(recs) * 100 for k in kinds}
    want = dict(CRM_MIX) | {"gate_arrival": dict(CRM_MIX)["gate"]}
    for kind, pct in share.items():
        assert pct == pytest.approx(want[kind], abs=4), kind
    assert {t for t, _, _ in recs} == {
        KAFKA_PREDICTIONS, KAFKA_ANOMALIES, KAFKA_EVENTS, KAFKA_ALERTS
    }  # fmt: skip
    assert len({v for _, _, v in recs}) == len(recs)  # no record is a replay of another


def test_the_baseline_places_every_event_and_fires_rules(tmp_path: Path) -> None:
    _, vins, devices, plates = seeded_store(f"sqlite:///{tmp_path / 'seed.sqlite'}", 12)
    recs = crm_records(vins, devices, plates, 200)
    out = engine_alone(f"sqlite:///{tmp_path / 'alone.sqlite'}", recs, 12)
    assert out["events"] == 200
    assert out["parked"] == 0  # every car, device and plate of the mix is in its CRM
    assert 0 < out["fired"] <= 200  # DTC and anomaly cards, crash calls, coupons...
    assert out["cpu_us_per_event"] > 0 and out["events_per_s"] > 0


@pytest.mark.integration
def test_the_baseline_runs_on_a_fresh_postgresql_database(
    postgres_url: str, tmp_path: Path
) -> None:
    """``--crm-db``: each CRM of the phase gets a database of its own on the server."""
    from carpulse.bench.crm import fresh_url

    seed_url, alone_url = fresh_url(postgres_url, tmp_path), fresh_url(postgres_url, tmp_path)
    assert seed_url != alone_url and seed_url.startswith("postgresql://")
    store, vins, devices, plates = seeded_store(seed_url, 12)
    store.engine.dispose()
    out = engine_alone(alone_url, crm_records(vins, devices, plates, 60), 12)
    assert out["events"] == 60 and out["parked"] == 0 and out["fired"] > 0
