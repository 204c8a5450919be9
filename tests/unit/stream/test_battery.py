"""12 V and EV battery health in the stream (``stream.battery`` through ``PartitionModels`` and the
pipeline): a healthy battery publishes nothing, a weak one one record per problem episode under the
cool-down, impossible readings are counted and dropped, and the state survives a checkpoint."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from core.config import StreamSettings
from core.wire import Samples, TelemetryBatch, encode_telemetry
from stream.battery import CELL_MAX, CELL_MIN, LV_VOLTAGE, SOH, BatteryTracker
from stream.lines import SkewPolicy
from stream.partition_models import PartitionModels
from stream.pipeline import T_MODELS, TelemetryPipeline
from stream.registry import DeviceRegistry

T0 = 1_800_000_000_000_000
S = 1_000_000


def crank(t0: int, dip: float, running: float = 14.1) -> Samples:
    """An engine start sampled at 10 Hz: resting 12.5 V, a cranking dip to ``dip``, then the
    alternator's ``running`` voltage."""
    v = np.r_[12.5, 12.4, dip + 0.3, dip, dip + 0.2, np.full(5, running)]
    ts = t0 + np.arange(len(v)) * 100_000
    return Samples.from_columns([LV_VOLTAGE], np.zeros(len(v)), ts, v)


def pack(t0: int, lo: float, hi: float, soh: float | None = None) -> Samples:
    names, sig, ts, val = [CELL_MIN, CELL_MAX], [0.0, 1.0], [t0, t0], [lo, hi]
    if soh is not None:
        names.append(SOH)
        sig.append(2.0)
        ts.append(t0)
        val.append(soh)
    return Samples.from_columns(names, np.array(sig), np.array(ts), np.array(val))


def battery_recs(out: Any) -> list[dict[str, Any]]:
    return [r for r in (json.loads(v) for _, v in out.predictions) if r["kind"] == "battery"]


def test_a_healthy_battery_publishes_nothing() -> None:
    m = PartitionModels()
    got = []
    for i in range(20):  # twenty starts dipping to 10.8 V, a healthy pack at 97 %
        got += battery_recs(m.update([("VIN1", crank(T0 + i * 3600 * S, 10.8))]))
        got += battery_recs(m.update([("VIN1", pack(T0 + i * 3600 * S, 3.91, 3.93, 97.0))]))
    assert got == []
    assert m.battery.lv.cranks[0] == 20  # the starts were seen, judged fine


def test_a_weak_battery_is_one_record_per_cooldown_and_an_episode_ends_when_fixed() -> None:
    m = PartitionModels(battery=BatteryTracker(cooldown_s=86_400))
    got = []
    for i in range(12):  # a start every hour dipping to 9.3 V: below the 9.6 V load test
        got += battery_recs(m.update([("VIN1", crank(T0 + i * 3600 * S, 9.3))]))
    (rec,) = got  # judged after the second crank, then quiet within the cool-down
    assert rec["problems"] == ["lv_replace"] and rec["due"] is True
    assert rec["lv_crank_v"] == 9.3 and rec["lv_cranks"] == 2 and rec["lv_health_pct"] == 0.0
    assert rec["episode"] == f"battery@{(T0 + 3600 * S) // S}"
    later = battery_recs(m.update([("VIN1", crank(T0 + 26 * 3600 * S, 9.3))]))
    (again,) = later  # the cool-down passed: the same problem once more, the same episode
    assert again["episode"] == rec["episode"] and again["problems"] == ["lv_replace"]
    fixed = []
    for i in range(30, 45):  # a new battery: the smoothed dip climbs back above 10 V
        fixed += battery_recs(m.update([("VIN1", crank(T0 + i * 3600 * S, 10.6))]))
    assert [r["problems"] for r in fixed][-1] == []  # fine again: one "due: false" record
    assert fixed[-1]["due"] is False and fixed[-1]["episode"] == ""
    assert all(r["problems"] for r in fixed[:-1])  # weak on the way up, never spammed
    assert len(fixed) <= 3


def test_ev_pack_imbalance_and_low_state_of_health() -> None:
    m = PartitionModels()
    got = []
    for i in range(30):  # a pack whose weakest cell sags 0.25 V below the strongest
        got += battery_recs(m.update([("VIN-EV", pack(T0 + i * 60 * S, 3.62, 3.87, 76.5))]))
    assert len(got) <= 2  # SoH at once, imbalance once the smoothed spread passes 0.1 V
    last = got[-1]
    assert last["problems"] == ["ev_imbalance", "ev_soh_low"] and last["ev_soh_pct"] == 76.5
    assert last["ev_spread_mv"] is not None and last["ev_spread_mv"] > 100


def test_impossible_readings_are_counted_and_never_reach_the_models() -> None:
    m = PartitionModels()
    names = [LV_VOLTAGE, CELL_MIN, CELL_MAX, SOH]
    t = T0 + np.arange(4) * S
    bad = Samples.from_columns(
        names, np.repeat(np.arange(4), 4), np.tile(t, 4),
        np.r_[[1e9, -3.0, 21.0, 1e300], [-1.0, 9.0, 4.0, 3.9], [3.5, 1e6, 3.0, 3.9],
              [101.0, -5.0, 1e12, 250.0]],
    )  # fmt: skip
    out = m.update([("VIN1", bad)])
    assert battery_recs(out) == []
    # 4 volts; cells: (-1, 3.5) low<0, (9, 1e6) both out, (4, 3) min>max; (3.9, 3.9) fine; 4 SoH
    assert out.battery_rejected == 4 + 3 + 4
    assert m.battery.lv.cranks[0] == 0 and math.isnan(m.battery.lv.last_v[0])
    assert math.isnan(m.battery.track.soh_last[0])


def test_battery_state_survives_a_checkpoint_and_a_v3_blob_still_loads() -> None:
    import msgpack

    m = PartitionModels()
    for i in range(2):
        m.update([("VIN1", crank(T0 + i * 3600 * S, 9.3))])
    restored = PartitionModels.from_bytes(m.to_bytes())
    assert restored.battery.lv.cranks[0] == 2
    assert restored.battery.track.problems[0] == m.battery.track.problems[0] != 0
    # the restored worker does not publish the same episode again within the cool-down
    assert battery_recs(restored.update([("VIN1", crank(T0 + 3 * 3600 * S, 9.3))])) == []
    doc = msgpack.unpackb(m.to_bytes(), raw=False)
    for k in ("battery_lv", "battery_pack", "battery_track"):
        del doc[k]
    doc["v"] = 3
    old = PartitionModels.from_bytes(msgpack.packb(doc, use_bin_type=True))
    assert len(old.battery.track.problems) == 0 and old.vehicles == {"VIN1": 0}


def test_pipeline_counts_rejected_readings_and_keeps_the_partition_moving() -> None:
    p = TelemetryPipeline(
        StreamSettings(), DeviceRegistry({"car-1": "VIN1"}), SkewPolicy(), now_us=lambda: T0
    )
    data: dict[tuple[str, str], bytes] = {}
    s = Samples.from_columns([LV_VOLTAGE], np.zeros(3), T0 - np.arange(3)[::-1] * S,
                             np.array([1e9, 12.6, 5e5]))  # fmt: skip
    payload = encode_telemetry(TelemetryBatch("car-1", "b", 1, s))
    res = p.process([(0, payload)], lambda t, k: data.get((t, k)))
    assert p.counters.battery_rejected == 2 and p.counters.accepted == 1
    assert any(w[1] == T_MODELS for w in res.writes)


def test_the_demo_ev_is_flagged_for_both_batteries() -> None:
    """``make demo``'s EV (carpulse.demo.drive_ev) through the stream's model: one record per
    change, the last naming the weak 12 V battery and both pack problems."""
    import time

    from carpulse.demo import EV_CRANK_EVERY_S, drive_ev

    class Sink:
        def __init__(self) -> None:
            self.sent: list[Samples] = []

        def send(self, samples: Samples) -> None:
            self.sent.append(samples)

    car, now = Sink(), time.monotonic()
    for i in range(3 * EV_CRANK_EVERY_S + 1):  # the demo's loop: one call a second
        drive_ev(car, T0 / 1e6 + i, now - i)  # type: ignore[arg-type]
    m, got = PartitionModels(), []
    for samples in car.sent:
        got += battery_recs(m.update([("CPDEM0000DEMOEV", samples)]))
    assert 1 <= len(got) <= 3
    assert got[-1]["problems"] == ["lv_replace", "ev_imbalance", "ev_soh_low"]
    assert m.battery.lv.cranks[0] >= 2


def test_demo_vins_open_on_the_console() -> None:
    """The demo's extra cars have VINs the console's vehicle page accepts (no I, O, Q)."""
    import re

    from carpulse.demo import EV_DEVICE, SILENT_DEVICE, fleet_vin
    from dashboards.console import VIN_RE

    for device in (EV_DEVICE, SILENT_DEVICE, "demo-gt350", "demo-car-3"):
        assert re.match(VIN_RE, fleet_vin(device)), fleet_vin(device)
    assert fleet_vin("demo-car-3") == "CPDEM000000000003"


def test_the_demo_evs_fault_code_is_a_crm_dtc_event() -> None:
    """``make demo``'s EV sends P0562 once, as the edge agent's DTC watcher words it: the CRM's
    normaliser (what its worker runs on carpulse.events) makes it a dtc event for the inbox."""
    from carpulse.demo import EV_DEVICE, ev_dtc_event
    from core.wire import Event, encode_event
    from crm.normalize import from_device_event

    data = ev_dtc_event()
    assert data["codes"] == ["P0562"] and data["mil"] is True and data["new"] == ["P0562"]
    payload = encode_event(Event(EV_DEVICE, "boot", 7, "dtc", 1_700_000_000_000_000, 2, data))
    events = from_device_event(payload)
    assert [e.kind for e in events] == ["dtc"]
    assert "P0562" in repr(events[0]) and "System voltage low" in repr(events[0])


DAY = 86_400 * S


def soh_only(t0: int, soh: float) -> Samples:
    return Samples.from_columns([SOH], np.zeros(1), np.array([t0]), np.array([soh]))


def test_a_pack_fading_fast_is_flagged_with_its_trend_and_70_percent_date() -> None:
    """SoH falling 6 % a year from 86 %, one reading a day: the line reaches 70 % on day 974
    (16 / 6 years). It is flagged once the newest reading is within two years of that, on day
    244, with its slope and that date; then quiet within the cool-down of a day each."""
    m = PartitionModels(battery=BatteryTracker(cooldown_s=86_400 * 30, fade_years=2.0))
    got: list[dict[str, Any]] = []
    for d in range(400):
        soh = 86.0 - 6.0 / 365.25 * d
        got += battery_recs(m.update([("VIN-EV", soh_only(T0 + d * DAY, soh))]))
    first = got[0]
    assert first["problems"] == ["ev_soh_fading"] and first["due"] is True
    assert (first["ts_us"] - T0) // DAY in (243, 244, 245)
    assert first["ev_soh_pct_per_year"] == -6.0
    eol = (np.datetime64(first["ev_soh_eol_date"]) - np.datetime64("1970-01-01")).astype(int)
    assert abs(eol - (T0 // DAY + 974)) <= 1
    # then once a month (the cool-down) and when it also falls below 80 % (day 365)
    assert len(got) <= 8
    assert got[-1]["problems"] == ["ev_soh_low", "ev_soh_fading"]


def test_a_slow_or_short_soh_history_gives_no_trend_and_no_problem() -> None:
    slow = PartitionModels(battery=BatteryTracker(fade_years=2.0))
    got: list[dict[str, Any]] = []
    for d in range(200):  # 1 % a year from 95 %: 70 % in 25 years
        got += battery_recs(slow.update([("VIN-A", soh_only(T0 + d * DAY, 95.0 - d / 365.25))]))
    assert got == []
    trend = slow.battery.trend_of(np.array([0]))
    assert abs(trend["soh_slope"][0] + 1.0) < 0.01 and not np.isnan(trend["soh_eol_day"][0])
    short = PartitionModels(battery=BatteryTracker(fade_years=2.0))
    for h in range(200):  # a steep fall, but all within a week: noise, not a trend
        short.update([("VIN-B", soh_only(T0 + h * 3600 * S, 90.0 - h * 0.05))])
    t = short.battery.trend_of(np.array([0]))
    assert np.isnan(t["soh_slope"][0]) and np.isnan(t["soh_eol_day"][0])
    # a low pack's record carries the trend when there is one, and none when there is not
    low = PartitionModels()
    (rec,) = battery_recs(low.update([("VIN-C", soh_only(T0, 76.5))]))
    assert rec["problems"] == ["ev_soh_low"]
    assert rec["ev_soh_pct_per_year"] is None and rec["ev_soh_eol_date"] is None
