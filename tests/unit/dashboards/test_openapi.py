"""Schemathesis against the app's OpenAPI spec: no input, logged in or not, gives a server error."""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.unit.dashboards.conftest import login  # noqa: E402


def test_openapi_has_the_screens_and_actions(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/login",
        "/console",
        "/console/vehicles/{vin}/reveal",
        "/inbox/{item_id}/coupon",
    } <= paths


@pytest.mark.slow
def test_no_server_errors_for_generated_requests(app_store: Any) -> None:
    from fastapi.testclient import TestClient

    app = app_store[0]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    with TestClient(app, base_url="https://testserver") as c:
        token = login(c, "admin")
        cookie = f"carpulse_session={c.cookies.get('carpulse_session')}"
    headers = {"cookie": cookie, "x-csrf-token": token, "accept": "application/json"}
    ops = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path == "/console/events":  # an endless event stream; covered by the browser tests
            continue
        ops += 1

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        run()
    assert ops >= 12
