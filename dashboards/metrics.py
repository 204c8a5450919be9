"""Prometheus metrics and readiness of the dashboard: ``carpulse_dashboard_*``, ``/metrics``, ``/readyz``.

Requests are counted by route template (``/vehicles/{vin}``, never the raw path, so a scanner
cannot blow up the series) and status; logins by outcome. ``/metrics`` answers only clients in
``[metrics] allow`` (loopback by default): the app is public behind its proxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.errors import ConfigError
from core.observe import readiness
from crm.migrate import check_schema

LOGIN_OUTCOMES = ("success", "failed", "throttled", "busy")


class DashboardMetrics:
    """The app's registry: request and login counters, live-feed gauges read at scrape time."""

    def __init__(self, app: FastAPI, allow: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow]
        self.requests = Counter(
            "carpulse_dashboard_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.logins = Counter(
            "carpulse_dashboard_logins",
            "Login attempts by outcome (success, failed, throttled, busy).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in LOGIN_OUTCOMES:
            self.logins.labels(outcome)
        self.registry.register(_Live(app))

    def allowed(self, request: Request) -> bool:
        host = request.client.host if request.client else ""
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.allow)

    def count(self, request: Request, status: int) -> None:
        route = request.scope.get("route")
        path = getattr(route, "path", None)
        if path is None:
            path = "/static" if request.url.path.startswith("/static/") else "unmatched"
        self.requests.labels(path, request.method, str(status)).inc()


class _Live(Collector):
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Any:
        state = self.app.state
        feed = getattr(state, "feed", None)
        g = GaugeMetricFamily(
            "carpulse_dashboard_live_vehicles", "Vehicles whose state the live feed holds."
        )
        g.add_metric([], len(state.hub.states))
        yield g
        f = GaugeMetricFamily(
            "carpulse_dashboard_feed_ready", "1 once the Kafka live feed caught up (0 without one)."
        )
        f.add_metric([], int(feed is not None and feed.ready.is_set()))
        yield f
        bad = CounterMetricFamily(
            "carpulse_dashboard_feed_bad_records", "Kafka records the live feed could not read."
        )
        bad.add_metric([], 0 if feed is None else feed.bad)
        yield bad
        waiting = GaugeMetricFamily(
            "carpulse_dashboard_feed_cards_waiting",
            "DTC and maintenance records waiting for the CRM database (the feed's filer thread).",
        )
        waiting.add_metric([], 0 if feed is None else feed.filing)
        yield waiting
        lost = CounterMetricFamily(
            "carpulse_dashboard_feed_cards_not_filed",
            "Records the feed did not file: the write failed (error) or too many waited (queue_full);"
            " the feed files a vehicle's codes again with its later records.",
            labels=["reason"],
        )
        lost.add_metric(["error"], 0 if feed is None else feed.not_filed)
        lost.add_metric(["queue_full"], 0 if feed is None else feed.dropped)
        yield lost


def install(app: FastAPI, allow: Sequence[str]) -> DashboardMetrics:
    """Count every request and serve ``/metrics`` and ``/readyz`` (ready: the CRM database)."""
    metrics = DashboardMetrics(app, allow)
    app.state.metrics = metrics

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        try:
            resp: Response = await call_next(request)
        except Exception:
            metrics.count(request, 500)
            raise
        metrics.count(request, resp.status_code)
        return resp

    @app.get("/metrics", tags=["meta"], include_in_schema=False)
    def metrics_page(request: Request) -> Response:
        if not metrics.allowed(request):
            return JSONResponse({"detail": "not allowed from this address"}, status_code=403)
        return Response(
            generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @app.get("/readyz", tags=["meta"])
    async def readyz(request: Request) -> JSONResponse:
        store = request.app.state.crm
        try:
            db = await asyncio.wait_for(asyncio.to_thread(database_ready, store), 5.0)
        except TimeoutError:
            db = (False, "database did not answer within 5 s")
        status, body = readiness({"database": db})
        return JSONResponse(body, status_code=status)

    return metrics


def database_ready(store: Any) -> tuple[bool, str]:
    """The database answers and its schema is this carpulse's: a database that came up after
    the dashboard may still need ``carpulse crm migrate``. Checked until it is right once."""
    ok, reason = store.ping()
    if not ok or getattr(store, "schema_checked", False):
        return ok, reason
    try:
        check_schema(store.engine)
    except ConfigError as err:
        return False, str(err)
    store.schema_checked = True
    return True, reason
