"""``python -m carpulse.bench.dashboards [--json]``: per-request costs of the dashboard on a SQLite CRM.

Times a session lookup in the CRM database (``SessionStore.get``), the live-state endpoint
(session + dealer check), the advisor inbox page with 100 maintenance cards of 60 evidence
points each, and ``GET /login`` without cookies (with the session rows it leaves behind: none, the
form's token is a signed cookie's), through FastAPI's TestClient (no network).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any


def run(cards: int = 100, lookups: int = 2000, pages: int = 20) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from crm import delivery
    from crm.migrate import upgrade
    from crm.store import CrmStore
    from dashboards.app import DashboardConfig, create_app
    from dashboards.auth import SessionRow, SessionStore
    from dashboards.users import DEMO_PASSWORD, create_demo_users, seed_demo_crm

    vin = "CPDEM000000000001"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'crm.sqlite'}"
        store = CrmStore.from_url(url)
        upgrade(store.engine)
        create_demo_users(store)
        seed_demo_crm(store, [(vin, "demo-car-1", "DEMO001")])
        sessions = SessionStore(store.engine)
        ws = sessions.new()
        t0 = time.perf_counter()
        for _ in range(lookups):
            sessions.get(ws.id)
        lookup_us = (time.perf_counter() - t0) / lookups * 1e6
        with store.tx() as s:
            for i in range(cards):
                evidence = [[j * 86_400_000_000, 1000.0 - j * 10] for j in range(60)]
                delivery.file_card(s, role="advisor", kind="maintenance", key=f"bench|{i}",
                                   vin=vin, title=f"card {i}",
                                   data={"kind": "service_due", "ts_us": 1_700_000_000_000_000,
                                         "days": 20, "km": 11000, "odo": 10000,
                                         "evidence": evidence})  # fmt: skip
        app = create_app(DashboardConfig(crm_url=url))
        with TestClient(app, base_url="https://testserver") as c:
            page = c.get("/login").text
            token = re.search(r'name="csrf-token" content="([^"]+)"', page)
            assert token is not None
            c.post("/login", data={"username": "advisor", "password": DEMO_PASSWORD,
                                   "csrf_token": token.group(1)})  # fmt: skip
            html = c.get("/inbox").text
            assert html.count('data-kind="maintenance"') == cards, "inbox did not render"
            t0 = time.perf_counter()
            for _ in range(pages):
                c.get("/inbox")
            inbox_ms = (time.perf_counter() - t0) / pages * 1e3
            t0 = time.perf_counter()
            for _ in range(lookups // 10):
                c.get(f"/console/vehicles/{vin}/state")
            state_ms = (time.perf_counter() - t0) / (lookups // 10) * 1e3
        with TestClient(app, base_url="https://testserver") as anon:
            with store.tx() as s:
                rows0 = s.query(SessionRow).count()
            t0 = time.perf_counter()
            for _ in range(pages * 10):
                anon.cookies.clear()
                anon.get("/login")
            login_page_ms = (time.perf_counter() - t0) / (pages * 10) * 1e3
            with store.tx() as s:
                login_page_rows = s.query(SessionRow).count() - rows0
        store.engine.dispose()
    return {
        "session_lookup_us": round(lookup_us, 1),
        "state_endpoint_ms": round(state_ms, 2),
        "inbox_page_ms": round(inbox_ms, 1),
        "inbox_cards": cards,
        "inbox_html_kib": len(html) // 1024,
        "login_page_ms": round(login_page_ms, 2),
        "login_page_rows": login_page_rows,  # session rows written by those GET /login
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--cards", type=int, default=100, help="inbox cards on the page")
    args = ap.parse_args(argv)
    out = run(cards=args.cards)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:20} {v}")


if __name__ == "__main__":
    main()
