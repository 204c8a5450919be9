"""``carpulse report yearly`` against a real InfluxDB 1.x: a new owner never sees the previous
owner's data, places only with location consent, HTML and PNG charts written."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from carpulse.stack import Stack
from crm import store as st
from crm.migrate import upgrade
from crm.schema import Vehicle

pytestmark = pytest.mark.integration
VIN = "LSVAA4182E2123456"
SOLD = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def influx(stack: Stack, path: str, data: bytes, **params: str) -> None:
    """POST to InfluxDB 1.x. A query's own error (HTTP 200, an ``error`` in the body) fails the
    test by name; a write that meets "database not found" is retried for a few seconds: a CI run
    once got that 404 right after ``CREATE DATABASE`` had returned."""
    url = f"http://{stack.s.host}:{stack.s.influx_port}{path}?{urllib.parse.urlencode(params)}"
    deadline = time.monotonic() + 10.0
    while True:
        try:
            request = urllib.request.Request(url, data=data, method="POST")
            with urllib.request.urlopen(request, timeout=30) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            if err.code == 404 and "database not found" in detail and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise AssertionError(f"InfluxDB {path} answered {err.code}: {detail}") from err
        if path == "/query":
            results = json.loads(body or b"{}").get("results", [])
            errors = [r["error"] for r in results if "error" in r]
            assert not errors, f"InfluxDB refused {params.get('q')!r}: {errors}"
        return


def trip_lines(start: dt.datetime, odo0: float, lat: float, lon: float) -> list[str]:
    """Ten minutes at 72 km/h sampled every second (12 km; odometer in metres, as VSS), as the
    stream writes them."""
    t0 = int(start.timestamp() * 1e6)
    out = []
    for i in range(600):
        f = (f'Vehicle.Speed=72.0,Vehicle.TraveledDistance={(odo0 + i * 0.02) * 1000!r},'
             f'Vehicle.CurrentLocation.Latitude={lat},Vehicle.CurrentLocation.Longitude={lon}')  # fmt: skip
        out.append(f"telemetry,device=car-1 {f} {t0 + i * 1_000_000}")
    return out


def test_yearly_report_only_shows_the_owners_own_period(local_stack: Stack, tmp_path: Path) -> None:
    db = "crm_" + uuid.uuid4().hex[:8]
    influx(local_stack, "/query", b"", q=f"CREATE DATABASE {db}")
    lines: list[str] = []
    odo = 1000.0
    for day in range(5):  # the first owner drives to (31.2, 121.4) in March
        lines += trip_lines(dt.datetime(2026, 3, 2 + day, 8, tzinfo=dt.UTC), odo, 31.2, 121.4)
        odo += 12.5
    for day in range(3):  # the buyer drives to (30.6, 114.3) in September
        lines += trip_lines(dt.datetime(2026, 9, 2 + day, 8, tzinfo=dt.UTC), odo, 30.6, 114.3)
        odo += 12.5
    for i in range(0, len(lines), 5000):
        influx(local_stack, "/write", "\n".join(lines[i : i + 5000]).encode(), db=db, precision="u")

    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    store = st.CrmStore.from_url(url)
    upgrade(store.engine)
    with store.tx() as s:
        s.add(Vehicle(vin=VIN, model="Lavida", device_id="car-1"))
        s.flush()
        seller = st.find_or_create_customer(s, {"phone": "1"})
        buyer = st.find_or_create_customer(s, {"phone": "2"})
        st.transfer_ownership(s, VIN, seller, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        st.transfer_ownership(s, VIN, buyer, SOLD)
        st.set_consent(s, buyer, "location", True)
    store.engine.dispose()
    env = {**os.environ, "CARPULSE_CONFIG": str(local_stack.config_file),
           "CARPULSE_INFLUX__DATABASE": db}  # fmt: skip

    def report(out: Path, *extra: str) -> dict[str, object]:
        proc = subprocess.run(
            [sys.executable, "-m", "carpulse", "report", "yearly", "--vin", VIN, "--year", "2026",
             "--out", str(out), "--db", url, *extra],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]

    mine = report(tmp_path / "buyer")
    assert mine["rows"] == 3 * 600 and mine["trips"] == 3
    assert abs(float(mine["distance_km"]) - 3 * 599 * 0.02) < 0.06  # type: ignore[arg-type]
    monthly = np.array(mine["monthly_km"])
    assert monthly[2] == 0 and monthly[8] > 0  # nothing from March, the seller's months
    assert mine["places"] == [{"lat": 30.6, "lon": 114.3, "visits": 3}]
    html = (tmp_path / "buyer" / "index.html").read_text()
    assert "30.6, 114.3" in html and "31.2" not in html
    for png in ("distance.png", "speed.png", "places.png"):
        assert (tmp_path / "buyer" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    theirs = report(tmp_path / "seller", "--customer", seller)
    assert theirs["rows"] == 5 * 600 and theirs["trips"] == 5
    assert theirs["places"] == [] and theirs["location_consent"] is False  # seller did not consent
    assert "no location consent" in (tmp_path / "seller" / "index.html").read_text()
