"""The yearly driving report per owner ("year bill"): distance, trips, places visited (clustered,
only with location consent), driving score, fuel or energy, services; HTML with PNG charts.

Telemetry comes from InfluxDB (measurement ``telemetry``, tag ``device``, one field per VSS
path; see ``stream.lines``) and is read only inside the owner's ``visible_windows``: a new owner
never sees what the car did before they bought it. The arithmetic is vectorised NumPy over the
columns of the year (``summarise``), so it is testable without a database.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import CrmError, SinkError
from crm import store as st
from crm.schema import Appointment, Coupon, Vehicle

SPEED: Final = "Vehicle.Speed"
ODO: Final = "Vehicle.TraveledDistance"  # metres in InfluxDB (VSS); km in ``Columns``
LAT: Final = "Vehicle.CurrentLocation.Latitude"
LON: Final = "Vehicle.CurrentLocation.Longitude"
FUEL: Final = "Vehicle.Powertrain.FuelSystem.Level"  # percent of the tank
SOC: Final = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"  # percent
FIELDS: Final = (SPEED, ODO, LAT, LON, FUEL, SOC)
TRIP_GAP_S: Final = 600.0  # no data for 10 minutes ends a trip
MAX_STEP_S: Final = 10.0  # integrate speed only over gaps this short
HARSH_ACCEL: Final = 3.0  # m/s^2
HARSH_BRAKE: Final = -4.0
SPEEDING_KMH: Final = 120.0
PLACE_RADIUS_KM: Final = 0.3


@dataclass
class Columns:
    """Time-sorted telemetry of one vehicle: ``ts_us`` and one float column per field (NaN = none)."""

    ts_us: np.ndarray
    values: dict[str, np.ndarray]

    @classmethod
    def empty(cls) -> Columns:
        return cls(np.zeros(0, np.int64), {f: np.zeros(0) for f in FIELDS})

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        if not parts:
            return cls.empty()
        ts = np.concatenate([p.ts_us for p in parts])
        order = np.argsort(ts, kind="stable")
        return cls(
            ts[order], {f: np.concatenate([p.values[f] for p in parts])[order] for f in FIELDS}
        )


@dataclass
class YearSummary:
    distance_km: float
    trips: int
    driving_hours: float
    monthly_km: list[float]
    monthly_trips: list[int]
    score: float
    harsh_accel: int
    harsh_brake: int
    speeding_share: float
    fuel_l: float | None
    energy_kwh: float | None
    places: list[dict[str, Any]] = field(default_factory=list)  # empty without location consent
    speed_hist: list[int] = field(default_factory=list)


def _trip_ids(ts_s: np.ndarray) -> np.ndarray:
    gaps = np.diff(ts_s) > TRIP_GAP_S
    return np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)


def _drops(level: np.ndarray) -> float:
    """Sum of decreases of a level (refuelling/charging jumps up are not consumption)."""
    v = level[np.isfinite(level)]
    if len(v) < 2:
        return 0.0
    d = np.diff(v)
    return float(-d[d < 0].sum())


def _cluster(lat: np.ndarray, lon: np.ndarray, radius_km: float) -> list[dict[str, Any]]:
    """Greedy leader clustering of trip ends (a few hundred a year): visits and centre per place."""
    centres: list[list[float]] = []  # lat, lon, count
    for la, lo in zip(lat.tolist(), lon.tolist(), strict=True):
        best, best_d = -1, radius_km
        for i, (cla, clo, _n) in enumerate(centres):
            dx = (lo - clo) * 111.32 * np.cos(np.radians(cla))
            d = float(np.hypot((la - cla) * 110.57, dx))
            if d <= best_d:
                best, best_d = i, d
        if best < 0:
            centres.append([la, lo, 1.0])
        else:
            c = centres[best]
            c[2] += 1
            c[0] += (la - c[0]) / c[2]
            c[1] += (lo - c[1]) / c[2]
    centres.sort(key=lambda c: -c[2])
    return [{"lat": round(c[0], 4), "lon": round(c[1], 4), "visits": int(c[2])} for c in centres]


def summarise(
    cols: Columns,
    year: int,
    *,
    with_places: bool,
    tank_l: float = 50.0,
    battery_kwh: float = 60.0,
) -> YearSummary:
    ts_s = cols.ts_us / 1e6
    n = len(ts_s)
    speed = cols.values[SPEED]
    # month of every row: time is sorted, so a search over the month starts does it
    starts = np.array([dt.datetime(year, m, 1, tzinfo=dt.UTC).timestamp() for m in range(1, 13)])
    month = np.clip(np.searchsorted(starts, ts_s, side="right") - 1, 0, 11)
    trip = _trip_ids(ts_s) if n else np.zeros(0, np.int64)
    # distance per row: odometer steps within a trip where present, else speed x time
    step_s = np.diff(ts_s, prepend=ts_s[0] if n else 0.0)
    same_trip = np.diff(trip, prepend=trip[0] if n else 0) == 0
    odo = cols.values[ODO]
    odo_step = np.diff(odo, prepend=np.nan)
    spd_step = np.where(
        same_trip & (step_s <= MAX_STEP_S), np.nan_to_num(speed) * step_s / 3600.0, 0.0
    )
    use_odo = np.isfinite(odo_step) & same_trip & (odo_step >= 0) & (odo_step < 5.0)
    has_odo = np.isfinite(odo).sum() >= 2
    dist = np.where(use_odo, odo_step, 0.0) if has_odo else spd_step
    monthly_km = np.bincount(month, weights=dist, minlength=12)[:12]
    trip_km = np.bincount(trip, weights=dist) if n else np.zeros(0)
    real = trip_km >= 0.5
    first_row = np.flatnonzero(np.diff(trip, prepend=-1) != 0) if n else np.zeros(0, np.int64)
    monthly_trips = np.bincount(month[first_row][real], minlength=12)[:12] if n else np.zeros(12)
    moving = same_trip & (step_s <= MAX_STEP_S) & (np.nan_to_num(speed) > 1.0)
    hours = float(step_s[moving].sum() / 3600.0)
    # driving style from consecutive speed samples less than 2 s apart
    ok = np.isfinite(speed)
    sv, st_ = speed[ok], ts_s[ok]
    dv, dtt = np.diff(sv) / 3.6, np.diff(st_)
    close = (dtt > 0) & (dtt <= 2.0)
    acc = np.where(close, dv / np.where(close, dtt, 1.0), 0.0)
    harsh_a = (
        int(((acc > HARSH_ACCEL) & np.r_[True, acc[:-1] <= HARSH_ACCEL]).sum()) if len(acc) else 0
    )
    harsh_b = (
        int(((acc < HARSH_BRAKE) & np.r_[True, acc[:-1] >= HARSH_BRAKE]).sum()) if len(acc) else 0
    )
    fast_t = float(np.where(close, dtt, 0.0)[sv[1:] > SPEEDING_KMH].sum()) if len(sv) > 1 else 0.0
    drive_t = float(np.where(close, dtt, 0.0)[sv[1:] > 1.0].sum()) if len(sv) > 1 else 0.0
    speeding = fast_t / drive_t if drive_t > 0 else 0.0
    total = float(monthly_km.sum())
    per100 = (harsh_a + harsh_b) / max(total / 100.0, 1.0)
    score = float(np.clip(100.0 - 4.0 * per100 - 100.0 * speeding, 0.0, 100.0))
    fuel = (
        _drops(cols.values[FUEL]) * tank_l / 100.0 if np.isfinite(cols.values[FUEL]).any() else None
    )
    energy = (
        _drops(cols.values[SOC]) * battery_kwh / 100.0
        if np.isfinite(cols.values[SOC]).any()
        else None
    )
    places: list[dict[str, Any]] = []
    if with_places and n:
        lat, lon = cols.values[LAT], cols.values[LON]
        has = np.isfinite(lat) & np.isfinite(lon)
        # the last position of each real trip is where the car went
        idx = np.flatnonzero(has)
        if len(idx):
            last_of = np.full(int(trip.max()) + 1, -1)
            last_of[trip[idx]] = idx  # later rows overwrite earlier ones
            ends = last_of[(last_of >= 0) & np.r_[real, np.zeros(len(last_of) - len(real), bool)]]
            places = _cluster(lat[ends], lon[ends], PLACE_RADIUS_KM)[:10]
    hist = np.histogram(speed[np.isfinite(speed) & (speed > 1)], bins=np.arange(0, 181, 20))[0]
    return YearSummary(
        distance_km=round(total, 1), trips=int(real.sum()), driving_hours=round(hours, 1),
        monthly_km=[round(float(x), 1) for x in monthly_km],
        monthly_trips=[int(x) for x in monthly_trips], score=round(score, 1),
        harsh_accel=harsh_a, harsh_brake=harsh_b, speeding_share=round(speeding, 4),
        fuel_l=None if fuel is None else round(fuel, 1),
        energy_kwh=None if energy is None else round(energy, 1),
        places=places, speed_hist=[int(x) for x in hist],
    )  # fmt: skip


# ----- InfluxDB 1.x -------------------------------------------------------------------------------
@dataclass
class InfluxReader:
    url: str
    database: str
    measurement: str = "telemetry"
    username: str | None = None
    password: str | None = None
    timeout_s: float = 60.0

    def _query(self, q: str) -> Iterator[dict[str, Any]]:
        params = {
            "db": self.database,
            "q": q,
            "epoch": "u",
            "chunked": "true",
            "chunk_size": "20000",
        }
        if self.username:
            params |= {"u": self.username, "p": self.password or ""}
        url = f"{self.url.rstrip('/')}/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                for line in resp:  # chunked: one JSON document per line
                    if line.strip():
                        yield json.loads(line)
        except OSError as err:
            raise SinkError(f"InfluxDB {self.url}: {err}") from err

    def fetch(self, device: str, start: dt.datetime, end: dt.datetime) -> Columns:
        """``FIELDS`` for ``device`` in ``[start, end)`` at one row per second at most.

        CAN signals arrive at up to 100 Hz; the server averages them per second (positions and
        levels: the last value), which keeps a year of driving in memory and loses nothing a
        yearly summary needs (harsh events are judged over one-second speed changes).
        """
        sel = ",".join(
            f'{"last" if f in (ODO, LAT, LON, FUEL, SOC) else "mean"}("{f}") AS "{f}"'
            for f in FIELDS
        )
        dev = device.replace("\\", "\\\\").replace("'", "\\'")
        q = (
            f'SELECT {sel} FROM "{self.measurement}" WHERE "device" = \'{dev}\' '
            f"AND time >= {int(start.timestamp() * 1e9)} AND time < {int(end.timestamp() * 1e9)} "
            "GROUP BY time(1s) fill(none)"
        )
        ts: list[int] = []
        vals: list[list[float | None]] = []
        for doc in self._query(q):
            for res in doc.get("results", []):
                if "error" in res:
                    raise SinkError(f"InfluxDB query failed: {res['error']}")
                for series in res.get("series", []):
                    cols = series["columns"]
                    pos = [cols.index(f) if f in cols else None for f in FIELDS]
                    for row in series["values"]:
                        ts.append(int(row[0]))
                        vals.append([row[p] if p is not None else None for p in pos])
        arr = np.array(vals, dtype=np.float64).reshape(len(ts), len(FIELDS))  # None -> nan
        arr[:, FIELDS.index(ODO)] /= 1000.0  # the summary counts in km
        return Columns(np.array(ts, np.int64), {f: arr[:, i] for i, f in enumerate(FIELDS)})


# ----- the report ---------------------------------------------------------------------------------
def year_windows(
    windows: Sequence[tuple[dt.datetime, dt.datetime | None]], year: int
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The parts of the ownership windows inside ``year``."""
    y0 = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    y1 = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    out = []
    for a, b in windows:
        lo, hi = max(a, y0), min(b or y1, y1)
        if lo < hi:
            out.append((lo, hi))
    return out


def services(
    s: Session, vin: str, customer: str, windows: Sequence[tuple[dt.datetime, dt.datetime]]
) -> list[dict[str, str]]:
    out = []
    for a, b in windows:
        for ap in s.scalars(
            select(Appointment)
            .where(Appointment.vin == vin, Appointment.at >= a, Appointment.at < b)
            .order_by(Appointment.at)
        ):
            out.append({"date": f"{ap.at:%Y-%m-%d}", "what": ap.kind, "state": ap.state})
        for cp in s.scalars(
            select(Coupon).where(
                Coupon.redeemed_by == customer, Coupon.redeemed_at >= a, Coupon.redeemed_at < b
            )
        ):
            out.append({"date": f"{cp.redeemed_at:%Y-%m-%d}", "what": f"coupon {cp.template_code}",
                        "state": "redeemed"})  # fmt: skip
    return sorted(out, key=lambda r: r["date"])


def yearly_report(
    s: Session,
    reader: InfluxReader,
    vin: str,
    year: int,
    out_dir: Path,
    *,
    customer_id: str | None = None,
    actor: str = "report",
) -> dict[str, Any]:
    """Write ``index.html`` and PNG charts to ``out_dir``; returns the summary as a dict."""
    vehicle = s.get(Vehicle, vin)
    if vehicle is None:
        raise CrmError(f"unknown VIN {vin!r}")
    owner = customer_id or st.owner_at(
        s,
        vin,
        min(dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC), st.utcnow()) - dt.timedelta(seconds=1),
    )
    if owner is None:
        raise CrmError(f"{vin} had no owner at the end of {year}")
    owner = st.resolve(s, owner)
    windows = year_windows(st.visible_windows(s, vin, owner), year)
    cols = Columns.concat([reader.fetch(vehicle.device_id or vin, a, b) for a, b in windows])
    with_places = st.has_consent(s, owner, "location")
    summary = summarise(cols, year, with_places=with_places)
    st.audit(s, actor, "report.yearly", vin, "yearly-report", customer=owner, year=year,
             rows=len(cols.ts_us), places=with_places)  # fmt: skip
    doc = {
        "vin": vin, "model": vehicle.model, "year": year, "customer": owner,
        "windows": [[a.isoformat(), b.isoformat()] for a, b in windows],
        "rows": len(cols.ts_us), "location_consent": with_places,
        "services": services(s, vin, owner, windows), **summary.__dict__,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = _charts(summary, out_dir)
    (out_dir / "report.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2))
    (out_dir / "index.html").write_text(_html(doc, charts), encoding="utf-8")
    return doc


def _charts(sm: YearSummary, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    months = ["J", "F", "M", "A", "M", "J", "J", "A", "S", "O", "N", "D"]
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    ax.bar(range(12), sm.monthly_km, color="#2a7ab9")
    ax.set_xticks(range(12), months)
    ax.set_ylabel("km")
    ax.set_title("Distance per month")
    fig.tight_layout()
    fig.savefig(out / "distance.png")
    plt.close(fig)
    names.append("distance.png")
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    ax.bar([f"{20 * i}" for i in range(len(sm.speed_hist))], sm.speed_hist, color="#e07b39")
    ax.set_xlabel("km/h (from)")
    ax.set_title("Time at speed (samples)")
    fig.tight_layout()
    fig.savefig(out / "speed.png")
    plt.close(fig)
    names.append("speed.png")
    if sm.places:
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.scatter([p["lon"] for p in sm.places], [p["lat"] for p in sm.places],
                   s=[20 + 10 * p["visits"] for p in sm.places], alpha=0.6)  # fmt: skip
        ax.set_title("Places visited")
        fig.tight_layout()
        fig.savefig(out / "places.png")
        plt.close(fig)
        names.append("places.png")
    return names


def _html(doc: dict[str, Any], charts: list[str]) -> str:
    e = html.escape

    def row(k: str, v: Any) -> str:
        return f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>"

    fuel = f"{doc['fuel_l']} L" if doc["fuel_l"] is not None else "-"
    energy = f"{doc['energy_kwh']} kWh" if doc["energy_kwh"] is not None else "-"
    places = (
        "".join(f"<li>{p['lat']}, {p['lon']}: {p['visits']}</li>" for p in doc["places"])
        if doc["location_consent"]
        else "<li>Not shown: no location consent.</li>"
    )
    svc = (
        "".join(
            f"<li>{e(x['date'])} {e(x['what'])} ({e(x['state'])})</li>" for x in doc["services"]
        )
        or "<li>-</li>"
    )
    imgs = "".join(f'<img src="{e(c)}" alt="{e(c)}">' for c in charts)
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{e(doc["vin"])} {doc["year"]} 年度账单</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto}}th{{text-align:left;padding-right:1em}}</style>
</head><body>
<h1>{doc["year"]} 年度用车账单 / Year in driving</h1>
<p>{e(doc["model"])} · {e(doc["vin"])}</p>
<table>
{row("里程 Distance", f"{doc['distance_km']} km")}
{row("行程 Trips", doc["trips"])}
{row("驾驶时长 Hours driven", doc["driving_hours"])}
{row("驾驶评分 Driving score", doc["score"])}
{row("急加速/急刹车 Harsh accel/brake", f"{doc['harsh_accel']} / {doc['harsh_brake']}")}
{row("燃油 Fuel", fuel)}
{row("电能 Energy", energy)}
</table>
<h2>去过的地方 Places</h2><ul>{places}</ul>
<h2>保养 Services</h2><ul>{svc}</ul>
{imgs}
</body></html>
"""
