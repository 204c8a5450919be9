"""Silent cars (``stream.silence``): moving fast, then nothing for N s, ignition never off ->
one alert; a car that stopped or switched off first, or a tunnel shorter than N, is no alarm;
the car's next report closes the episode."""

from __future__ import annotations

import json
from typing import Any

from stream.silence import SilenceWatch

VIN, DEV = "LSVAA4182E2123456", "car-1"
S = 1_000_000  # one second in microseconds
T0 = 1_767_225_600 * S


def state(speed: float | None, ignition: bool | None = True, src: int = T0) -> dict[str, Any]:
    sig = {} if speed is None else {"Vehicle.Speed": [src, speed]}
    return {"vin": VIN, "device": DEV, "signals": sig, "ignition": ignition, "last_seen_us": src}


def drive(w: SilenceWatch, speeds: list[float], t0: int = T0, ignition: bool | None = True) -> int:
    """One report a second at these speeds; returns the wall time of the last one."""
    t = t0
    for i, v in enumerate(speeds):
        t = t0 + i * S
        assert w.seen(VIN, 0, t, state(v, ignition, src=t)) is None
    return t


def test_moving_then_silent_for_n_seconds_raises_one_alert() -> None:
    w = SilenceWatch(after_s=120, min_kmh=30)
    last = drive(w, [110, 118, 123])
    assert w.due(last + 119 * S) == []  # not yet
    ((key, raw),) = w.due(last + 120 * S)
    doc = json.loads(raw)
    assert key == VIN and doc["kind"] == "silent" and doc["vin"] == VIN and doc["device"] == DEV
    assert doc["data"]["speed_kmh"] == 123 and doc["data"]["silent_s"] == 120.0
    assert doc["alarm_id"] == f"{VIN}:silent:{last}" and doc["severity"] == "critical"
    assert w.due(last + 300 * S) == []  # one alert per episode
    assert w.open_alarms() == 1


def test_a_car_that_stops_first_is_no_alarm_parking_garage() -> None:
    w = SilenceWatch(after_s=120, min_kmh=30)
    last = drive(w, [60, 35, 12, 4, 0])  # slows down into the garage, then no signal
    assert w.due(last + 3600 * S) == []


def test_ignition_off_then_silent_is_no_alarm() -> None:
    w = SilenceWatch(after_s=120, min_kmh=30)
    t = drive(w, [90, 90])
    w.seen(
        VIN, 0, t + S, state(90.0, ignition=False, src=t + S)
    )  # speed sample stale, ignition off
    assert w.due(t + 3600 * S) == []


def test_a_tunnel_shorter_than_n_is_no_alarm() -> None:
    w = SilenceWatch(after_s=120, min_kmh=30)
    last = drive(w, [100, 100])
    assert w.due(last + 90 * S) == []  # in the tunnel
    drive(w, [98, 101], t0=last + 95 * S)  # out again after 95 s
    assert w.due(last + 150 * S) == []  # 55 s since the car came back
    assert w.open_alarms() == 0


def test_reporting_again_closes_the_episode_and_a_new_episode_is_a_new_alert() -> None:
    w = SilenceWatch(after_s=60, min_kmh=30)
    last = drive(w, [123])
    ((_, first),) = w.due(last + 61 * S)
    end = w.seen(VIN, 0, last + 500 * S, state(0.0, src=last + 500 * S))
    assert end is not None
    doc = json.loads(end)
    assert doc["kind"] == "silent_end" and doc["alarm_id"] == json.loads(first)["alarm_id"]
    assert w.open_alarms() == 0 and (w.raised, w.closed) == (1, 1)
    assert w.seen(VIN, 0, last + 501 * S, state(50.0, src=last + 501 * S)) is None  # no 2nd end
    ((_, second),) = w.due(last + 600 * S)
    assert json.loads(second)["alarm_id"] != json.loads(first)["alarm_id"]


def test_offline_last_will_while_moving_is_carried_not_a_shortcut() -> None:
    w = SilenceWatch(after_s=120, min_kmh=30)
    last = drive(w, [123])
    w.status(DEV, "offline", last + 45 * S)  # the broker's last will, 1.5 keep-alives later
    assert w.due(last + 60 * S) == []  # a tunnel as long as the keep-alive is no alarm yet
    ((_, raw),) = w.due(last + 121 * S)
    assert json.loads(raw)["data"]["device_status"] == "offline"
    w.status("someone-else", "offline", last + 122 * S)  # unknown devices change nothing


def test_unknown_speed_or_a_revoked_partition_is_no_alarm() -> None:
    w = SilenceWatch(after_s=10, min_kmh=30)
    w.seen(VIN, 0, T0, state(None))  # no speed ever: nothing to say the car was moving
    assert w.due(T0 + 3600 * S) == []
    w.seen("LSVAA4182E2654321", 3, T0, {**state(120.0), "vin": "x", "device": "car-2"})
    assert w.due(T0 + 3600 * S, owned={0, 1}) == []  # partition 3 moved to another worker
    assert "LSVAA4182E2654321" not in w.cars
