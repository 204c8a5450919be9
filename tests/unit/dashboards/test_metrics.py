"""The dashboard's /metrics (loopback only), /readyz and its request and login counters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crm.store import CrmStore
from dashboards.app import DashboardConfig, create_app
from dashboards.metrics import database_ready
from tests.unit.dashboards.conftest import csrf_of


def test_metrics_count_routes_and_logins_for_loopback_only(
    app_store: tuple[Any, CrmStore],
) -> None:
    app = app_store[0]
    with TestClient(app, base_url="https://testserver", client=("127.0.0.1", 5000)) as c:
        token = csrf_of(c.get("/login").text)
        r = c.post("/login", data={"username": "agent1", "password": "nope", "csrf_token": token})
        assert r.status_code == 401
        assert c.get("/no/such/page").status_code == 404
        assert c.get("/readyz").json()["ready"] is True
        text = c.get("/metrics").text
    assert 'carpulse_dashboard_logins_total{outcome="failed"} 1.0' in text
    assert 'carpulse_dashboard_logins_total{outcome="success"} 0.0' in text
    assert 'carpulse_dashboard_requests_total{method="GET",route="/login",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text  # never the raw path
    assert "/no/such/page" not in text
    with TestClient(app, base_url="https://testserver", client=("203.0.113.9", 5000)) as c:
        assert c.get("/metrics").status_code == 403


def test_readyz_is_503_when_the_database_does_not_answer(app_store: tuple[Any, CrmStore]) -> None:
    # a PostgreSQL URL on a port nothing listens on: the app starts, it is not ready
    app = create_app(
        DashboardConfig(crm_url="postgresql+psycopg://u@127.0.0.1:1/crm", migrate=False)
    )
    with TestClient(app, base_url="https://testserver") as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False and body["reason"].startswith("database: postgresql database:")


def test_a_database_behind_the_schema_is_refused_at_start_and_not_ready_later(
    tmp_path: Any,
) -> None:
    from core.errors import SchemaError

    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    CrmStore.from_url(url).engine.dispose()
    with pytest.raises(SchemaError, match="carpulse crm migrate"):
        create_app(DashboardConfig(crm_url=url, migrate=False))
    # a dashboard started while the database was down, which then came up unmigrated
    store = CrmStore.from_url(url)
    ok, reason = database_ready(store)
    assert not ok and "carpulse crm migrate" in reason


def test_metrics_show_the_live_feeds_bad_records_and_cards_not_filed(
    app_store: tuple[Any, CrmStore],
) -> None:
    from core.topics import KAFKA_ALERTS, KAFKA_VEHICLE_STATE
    from dashboards.live import KafkaFeed

    app = app_store[0]

    def refuse(_topic: str, _doc: dict[str, Any]) -> None:
        raise RuntimeError("the CRM database is away")

    with TestClient(app, base_url="https://testserver", client=("127.0.0.1", 5000)) as c:
        feed = KafkaFeed("unused:9092", app.state.hub, refuse)
        app.state.feed = feed
        feed.handle(KAFKA_ALERTS, b"{not json")
        feed.handle(KAFKA_ALERTS, b"[1, 2]")  # JSON, not an object
        feed.handle(KAFKA_VEHICLE_STATE, b'{"vin": "LSVAX4E25NN000001", "active_dtcs": ["P0420"]}')
        assert feed.drain(5)
        text = c.get("/metrics").text
    assert "carpulse_dashboard_feed_bad_records_total 2.0" in text
    assert 'carpulse_dashboard_feed_cards_not_filed_total{reason="error"} 1.0' in text
    assert 'carpulse_dashboard_feed_cards_not_filed_total{reason="queue_full"} 0.0' in text
    assert "carpulse_dashboard_feed_cards_waiting 0.0" in text
    asyncio.run(feed.stop())
