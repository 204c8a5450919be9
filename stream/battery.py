"""12 V battery and EV pack health per vehicle slot of one partition, published under a cool-down.

``BatteryTracker`` feeds the estimators of ``models.maintenance.battery`` (cranking dips and
resting voltage of the 12 V battery; the spread between the highest and lowest cell voltage and
the state-of-health trend of a traction battery) with the samples of a micro-batch, one kernel
call each, and publishes a ``battery`` record (on ``carpulse.predictions``, beside service-due and
oil-life) for a vehicle when:

* its problems change (a battery turns weak, a pack becomes imbalanced, or it is fine again), or
* a problem persists and ``cooldown_s`` passed since the last record (source time),

never once per batch. A healthy vehicle that never had a problem publishes nothing. Problems:

* ``lv_weak`` / ``lv_replace``: 12 V health (``battery_health``) below ``WEAK_HEALTH`` /
  ``REPLACE_HEALTH``, judged after ``MIN_CRANKS`` cranks or a resting reading;
* ``ev_imbalance``: the smoothed cell spread above ``spread_v`` (a pack the BMS no longer
  balances);
* ``ev_soh_low``: the last state of health reported below ``soh_pct``;
* ``ev_soh_fading``: the state-of-health trend (below) reaches ``EOL_SOH_PCT`` within
  ``fade_years`` of the newest reading (a pack to look at while its warranty still runs).

A traction battery's record also carries its state-of-health trend (``soh_trend``: a
least-squares line over every reading so far) once the readings span enough time to mean
something (``TREND_MIN_READINGS`` readings whose days spread at least ``TREND_MIN_STD_DAYS``):
``ev_soh_pct_per_year`` and ``ev_soh_eol_date``, the day the line reaches ``EOL_SOH_PCT``
(70 %, the usual warranty threshold), when it falls and that day is within ``TREND_MAX_YEARS``.

Readings that cannot be real are dropped and counted (``rejected``), never fed to the models: a
12 V reading outside 0..20 V (the kernel's own check), a cell voltage outside 0..5 V, a spread
whose minimum exceeds its maximum, a state of health outside 0..100 %. (NaN and inf never get
here: the pipeline dead-letters them first.) The wire carries scalars only, so a pack arrives as
``CellVoltage.Max`` and ``CellVoltage.Min``, not as an array of cells.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from models.maintenance.battery import (
    BatteryState,
    PackState,
    battery_health,
    soh_trend,
    update_battery,
    update_pack,
)
from models.maintenance.soa import SlotState

LV_VOLTAGE: Final = "Vehicle.LowVoltageBattery.CurrentVoltage"  # V
CELL_MAX: Final = "Vehicle.Powertrain.TractionBattery.CellVoltage.Max"  # V
CELL_MIN: Final = "Vehicle.Powertrain.TractionBattery.CellVoltage.Min"  # V
SOH: Final = "Vehicle.Powertrain.TractionBattery.StateOfHealth"  # %
MIN_CRANKS: Final = 2  # one cold morning's crank is no verdict
WEAK_HEALTH: Final = 0.5  # crank score 0.5: dips to ~10 V; or a resting charge of 50 %
REPLACE_HEALTH: Final = 0.25  # models.maintenance.battery's own "replace"
MAX_CELL_V: Final = 5.0  # no lithium cell chemistry rests above this
DAY_US: Final = 86_400_000_000
# new names go last: the bit masks in checkpoints keep their meaning
PROBLEMS: Final = ("lv_replace", "lv_weak", "ev_imbalance", "ev_soh_low", "ev_soh_fading")
_NEVER: Final = np.iinfo(np.int64).min // 2
EOL_SOH_PCT: Final = 70.0  # the usual traction-battery warranty threshold
TREND_MIN_READINGS: Final = 10
TREND_MIN_STD_DAYS: Final = 14.0  # readings over about seven weeks or more, not one week's noise
TREND_MAX_YEARS: Final = 30.0  # a line that reaches 70 % later says nothing
FADE_YEARS: Final = 2.0


@dataclass
class BatteryTrack(SlotState):
    """What each vehicle last published, and since when its current problem episode runs."""

    problems: np.ndarray  # int64 bit mask of PROBLEMS last published (0: none)
    sent_us: np.ndarray  # int64 source time of the last record (_NEVER: none)
    since_us: np.ndarray  # int64 start of the current problem episode (_NEVER: none)
    soh_last: np.ndarray  # float64 last state of health reported (nan: none)
    soh_us: np.ndarray  # int64 its time

    @classmethod
    def empty(cls, n: int) -> BatteryTrack:
        never = np.full(n, _NEVER, np.int64)
        return cls(np.zeros(n, np.int64), never, never.copy(), np.full(n, np.nan), never.copy())


def _grow(state: SlotState, empty: SlotState) -> SlotState:
    for f in dataclasses.fields(state):  # type: ignore[arg-type]
        old = getattr(state, f.name)
        getattr(empty, f.name)[: len(old)] = old
    return empty


def _mask(names: list[str]) -> int:
    return sum(1 << PROBLEMS.index(p) for p in names)


def _names(mask: int) -> list[str]:
    return [p for i, p in enumerate(PROBLEMS) if mask >> i & 1]


def _round(x: float, nd: int) -> float | None:
    return round(float(x), nd) if math.isfinite(x) else None


def _date(day: float) -> str | None:
    """``2029-03-14`` of a day since 1970, or ``None`` (nan)."""
    if not math.isfinite(day):
        return None
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()


class BatteryTracker:
    """12 V and traction-battery state of every vehicle slot, and what was published."""

    def __init__(
        self,
        cooldown_s: float = 86_400.0,
        spread_v: float = 0.1,
        soh_pct: float = 80.0,
        fade_years: float = FADE_YEARS,
    ) -> None:
        self.cooldown_us = int(cooldown_s * 1e6)
        self.spread_v, self.soh_pct = float(spread_v), float(soh_pct)
        self.fade_days = float(fade_years) * 365.25
        self.lv = BatteryState.empty(0)
        self.pack = PackState.empty(0)
        self.track = BatteryTrack.empty(0)
        self.rejected = 0  # readings that cannot be real, dropped

    def grow(self, n: int) -> None:
        if n <= len(self.track.problems):
            return
        self.lv = _grow(self.lv, BatteryState.empty(n))  # type: ignore[assignment]
        self.pack = _grow(self.pack, PackState.empty(n))  # type: ignore[assignment]
        self.track = _grow(self.track, BatteryTrack.empty(n))  # type: ignore[assignment]

    def update(
        self,
        n: int,
        lv: tuple[np.ndarray, np.ndarray, np.ndarray],
        cells: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        soh: tuple[np.ndarray, np.ndarray, np.ndarray],
        names: dict[int, str],
    ) -> list[tuple[str, bytes]]:
        """Feed one micro-batch: ``lv`` = (slot, ts_us, volts) of 12 V readings; ``cells`` =
        (slot, ts_us, min V, max V) pairs; ``soh`` = (slot, ts_us, %); any order. Returns the
        ``battery`` records to publish (``n``: vehicle slots in use)."""
        self.grow(n)
        touched: list[tuple[np.ndarray, np.ndarray]] = []  # (slot, ts_us) of readings used
        s, t, v = lv
        if len(s):
            order = np.lexsort((t, s))  # time order per slot, as the kernel requires
            s, t, v = s[order], t[order], v[order]
            self.rejected += update_battery(self.lv, s, t / 1e6, v)
            touched.append((s, t))
        s, t, lo, hi = cells
        if len(s):
            ok = (lo >= 0) & (hi <= MAX_CELL_V) & (lo <= hi)
            self.rejected += int(np.count_nonzero(~ok))
            order = np.lexsort((t[ok], s[ok]))
            s, t, lo, hi = s[ok][order], t[ok][order], lo[ok][order], hi[ok][order]
            update_pack(
                self.pack, s, np.column_stack([lo, hi]), t / DAY_US, np.full(len(s), np.nan)
            )
            touched.append((s, t))
        s, t, pct = soh
        if len(s):
            ok = (pct >= 0) & (pct <= 100)
            self.rejected += int(np.count_nonzero(~ok))
            order = np.lexsort((t[ok], s[ok]))
            s, t, pct = s[ok][order], t[ok][order], pct[ok][order]
            update_pack(self.pack, s, np.full((len(s), 1), np.nan), t / DAY_US, pct)
            last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
            ls, lt, lp = s[last], t[last], pct[last]
            newer = lt >= self.track.soh_us[ls]
            self.track.soh_last[ls[newer]], self.track.soh_us[ls[newer]] = lp[newer], lt[newer]
            touched.append((s, t))
        all_s = np.concatenate([a for a, _ in touched]) if touched else np.zeros(0, np.int64)
        if not len(all_s):
            return []
        all_t = np.concatenate([b for _, b in touched])
        order = np.lexsort((all_t, all_s))  # each touched slot once, at its newest reading
        all_s, all_t = all_s[order], all_t[order]
        last = np.r_[all_s[1:] != all_s[:-1], True]
        return self._publish(all_s[last], all_t[last], names)

    def problems_of(self, slots: np.ndarray) -> tuple[list[int], dict[str, np.ndarray]]:
        """Problem masks of ``slots`` and the numbers they were judged from."""
        sub = BatteryState(*(getattr(self.lv, f.name)[slots] for f in dataclasses.fields(self.lv)))
        h = battery_health(sub)
        judged = (self.lv.cranks[slots] >= MIN_CRANKS) | ~np.isnan(self.lv.rest_ewma[slots])
        health = np.where(judged, h["health"], np.nan)
        spread = self.pack.spread_ewma[slots]
        soh = self.track.soh_last[slots]
        trend = self.trend_of(slots)
        newest = self.track.soh_us[slots] / DAY_US
        fading = (trend["soh_eol_day"] <= newest + self.fade_days) & (self.fade_days > 0)
        masks = []
        for i in range(len(slots)):
            names = []
            if health[i] < REPLACE_HEALTH:
                names.append("lv_replace")
            elif health[i] < WEAK_HEALTH:
                names.append("lv_weak")
            if spread[i] > self.spread_v:
                names.append("ev_imbalance")
            if soh[i] < self.soh_pct:
                names.append("ev_soh_low")
            if fading[i]:
                names.append("ev_soh_fading")
            masks.append(_mask(names))
        nums = {"health": health, "soc": h["soc_pct"], "spread": spread, "soh": soh}
        nums.update(trend)
        return masks, nums

    def trend_of(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Per slot: the state-of-health slope (% a year) and the day (since 1970) it reaches
        ``EOL_SOH_PCT``; nan where the readings are too few or span too little time, or the
        line does not fall, or reaches it beyond ``TREND_MAX_YEARS`` of its newest reading."""
        sub = PackState(*(getattr(self.pack, f.name)[slots] for f in dataclasses.fields(self.pack)))
        tr = soh_trend(sub, EOL_SOH_PCT)
        n = sub.n
        with np.errstate(invalid="ignore", divide="ignore"):
            std_days = np.sqrt(np.maximum(n * sub.stt - sub.st**2, 0.0)) / n
        newest = self.track.soh_us[slots] / DAY_US
        eol = tr["end_of_life_day"]
        ok = (n >= TREND_MIN_READINGS) & (std_days >= TREND_MIN_STD_DAYS)
        ok &= np.isfinite(tr["slope_pct_per_year"])
        falling = ok & (tr["slope_pct_per_year"] < 0) & np.isfinite(eol)
        falling &= eol <= newest + TREND_MAX_YEARS * 365.25
        return {
            "soh_slope": np.where(ok, tr["slope_pct_per_year"], np.nan),
            "soh_eol_day": np.where(falling, np.maximum(eol, newest), np.nan),
        }

    def _publish(
        self, slots: np.ndarray, ts: np.ndarray, names: dict[int, str]
    ) -> list[tuple[str, bytes]]:
        masks, nums = self.problems_of(slots)
        tr = self.track
        out = []
        for i, slot in enumerate(slots.tolist()):
            mask, now = masks[i], int(ts[i])
            before = int(tr.problems[slot])
            if mask == before and (mask == 0 or now - tr.sent_us[slot] < self.cooldown_us):
                continue  # nothing new, or the same problem within its cool-down
            if before == 0 and mask:
                tr.since_us[slot] = now  # a new episode
            tr.problems[slot], tr.sent_us[slot] = mask, now
            probs = _names(mask)
            rec: dict[str, Any] = {
                "vin": names[slot],
                "kind": "battery",
                "ts_us": int(now),
                "problems": probs,
                "due": bool(probs),
                # one problem episode: the CRM issues at most one coupon per episode
                "episode": f"battery@{tr.since_us[slot] // 1_000_000}" if probs else "",
                "lv_health_pct": _round(nums["health"][i] * 100, 1),
                "lv_soc_pct": _round(nums["soc"][i], 1),
                "lv_crank_v": _round(self.lv.crank_ewma[slot], 2),
                "lv_cranks": int(self.lv.cranks[slot]),
                "ev_spread_mv": _round(nums["spread"][i] * 1000, 1),
                "ev_soh_pct": _round(nums["soh"][i], 1),
                "ev_soh_pct_per_year": _round(nums["soh_slope"][i], 2),
                "ev_soh_eol_date": _date(nums["soh_eol_day"][i]),
            }
            out.append((names[slot], json.dumps(rec).encode()))
        return out

    def to_blobs(self) -> dict[str, bytes]:
        return {
            "battery_lv": self.lv.to_bytes(),
            "battery_pack": self.pack.to_bytes(),
            "battery_track": self.track.to_bytes(),
        }

    def load(self, doc: dict[str, Any]) -> None:
        """Restore from a checkpoint's blobs (a checkpoint without them: start empty)."""
        if "battery_lv" not in doc:
            return
        self.lv = BatteryState.from_bytes(doc["battery_lv"])
        self.pack = PackState.from_bytes(doc["battery_pack"])
        self.track = BatteryTrack.from_bytes(doc["battery_track"])
        sizes = {len(self.lv.cranks), len(self.pack.n), len(self.track.problems)}
        if len(sizes) != 1:
            raise ValueError(f"battery state: slot counts disagree {sorted(sizes)}")
