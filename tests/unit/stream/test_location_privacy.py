"""The stream's location decisions without Kafka: policy records, the split of a batch, the
published state, the crash alert's fix, and the pipeline's lines (default deny)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.config import StreamSettings
from core.errors import WireError
from core.privacy import LATITUDE, LONGITUDE, LocationPolicy, decode_policy, is_location_signal
from core.wire import Event, Samples, TelemetryBatch, encode_event, encode_telemetry
from stream import state as vstate
from stream.alerts import handle_event
from stream.lines import SkewPolicy
from stream.pipeline import T_STATE, TelemetryPipeline
from stream.privacy import (
    PrivacyView,
    alert_location,
    location_tags,
    public_state,
    scrub_state,
    split_location,
)
from stream.registry import DeviceRegistry
from stream.state import SPEED

NOW = 1_800_000_000_000_000
SINCE = NOW - 3_600_000_000  # the current ownership began an hour ago
ALT = "Vehicle.CurrentLocation.Altitude"
FIX_TYPE = "Vehicle.CurrentLocation.GNSSReceiver.FixType"


def policy(vin: str = "VIN1", location: bool = True, since: int = SINCE) -> LocationPolicy:
    return LocationPolicy(vin, location, "17", since, since)


def batch(t0: int, device: str = "car-1", seq: int = 1) -> TelemetryBatch:
    ts = t0 + np.arange(3) * 100_000
    names = [SPEED, LATITUDE, LONGITUDE, ALT]
    s = Samples.from_columns(
        names, np.repeat(np.arange(4), 3), np.tile(ts, 4),
        np.r_[np.full(3, 42.0), np.full(3, 31.23), np.full(3, 121.47), np.full(3, 8.0)],
    )  # fmt: skip
    return TelemetryBatch(device, "b", seq, s, ((FIX_TYPE, t0, "3D"), ("Vehicle.VIN", t0, "X")))


def test_location_signals_are_the_current_location_branch() -> None:
    assert is_location_signal(LATITUDE) and is_location_signal(FIX_TYPE)
    assert not is_location_signal(SPEED) and not is_location_signal("Vehicle.CurrentLocationX")


def test_policy_record_round_trip_and_bad_records_deny() -> None:
    p = policy()
    assert decode_policy(b"VIN1", p.encode()) == p
    assert decode_policy(b"VIN1", None) is None  # tombstone
    good = json.loads(p.encode())
    for bad in (
        b"not json",
        b"[1]",
        json.dumps({**good, "v": 2}).encode(),
        json.dumps({**good, "since_us": 10**30}).encode(),
        json.dumps({**good, "since_us": 1.5}).encode(),
        json.dumps({**good, "location": "yes"}).encode(),
        json.dumps({**good, "ownership": ["x"]}).encode(),
        json.dumps({**good, "vin": "bad vin"}).encode(),
        b"{" + b" " * 2000 + b"}",
    ):
        with pytest.raises(WireError):
            decode_policy(b"VIN1", bad)
    with pytest.raises(WireError, match="key"):
        decode_policy(b"OTHER", p.encode())  # a record for another key
    view = PrivacyView()
    view.apply(b"VIN1", p.encode())
    assert view.get("VIN1") == p
    view.apply(b"VIN1", json.dumps({**good, "since_us": 10**30}).encode())
    assert view.get("VIN1") is None and view.bad == 1  # a bad record withdraws, never grants
    view.apply(b"VIN1", p.encode())
    view.apply(b"VIN1", None)
    assert view.get("VIN1") is None


def test_the_view_names_vehicles_whose_published_location_must_go() -> None:
    view = PrivacyView()
    view.apply(b"VIN1", policy().encode())
    view.apply(b"VIN2", policy("VIN2", location=False).encode())
    assert view.take_revoked() == []  # nothing was allowed before
    view.apply(b"VIN1", policy(since=SINCE).encode())
    assert view.take_revoked() == []  # the same again
    view.apply(b"VIN1", policy(since=SINCE + 1).encode())  # sold to a consenting buyer
    view.apply(b"VIN1", policy(location=False, since=SINCE + 1).encode())  # ... who withdraws
    view.apply(b"VIN2", policy("VIN2").encode())
    view.apply(b"VIN2", None)  # a tombstone
    assert sorted(view.take_revoked(limit=1) + view.take_revoked()) == ["VIN1", "VIN2"]
    assert view.take_revoked() == []
    view.apply(b"VIN3", policy("VIN3", location=False).encode())
    view.revoke_denied()  # after the first catch-up: every denied vehicle once
    assert sorted(view.take_revoked()) == ["VIN1", "VIN3"]


@pytest.mark.parametrize("pol", [None, policy(location=False)], ids=["unknown", "no-consent"])
def test_without_consent_no_location_row_is_kept_and_the_rest_is_unchanged(
    pol: LocationPolicy | None,
) -> None:
    b = batch(NOW - 1_000_000)
    out = split_location(b, pol)
    assert out.stored is None and out.withheld == 9 + 1
    s = out.rest.samples
    assert [s.names[i] for i in np.unique(s.sig)] == [SPEED]
    assert s.value.tolist() == [42.0] * 3 and s.ts_us.tolist() == b.samples.ts_us[:3].tolist()
    assert out.rest.text == (("Vehicle.VIN", NOW - 1_000_000, "X"),)


def test_with_consent_only_fixes_of_the_current_ownership_are_kept() -> None:
    b = batch(SINCE - 100_000)  # the first sample is from before the sale
    out = split_location(b, policy())
    assert out.stored is not None
    s = out.stored.samples
    assert set(s.names[i] for i in s.sig) == {LATITUDE, LONGITUDE, ALT}
    assert (s.ts_us >= SINCE).all() and len(s) == 6
    assert out.withheld == 3 + 1  # one instant of three signals, and the pre-sale fix type
    assert len(out.rest.samples) == 3  # speed, all of it
    assert location_tags(policy()) == (("ownership", "17"), ("vin", "VIN1"))


def test_a_batch_without_location_passes_through_untouched() -> None:
    s = Samples.from_records([(SPEED, NOW, 1.0)])
    b = TelemetryBatch("car-1", "b", 1, s)
    out = split_location(b, None)
    assert out.rest is b and out.stored is None and out.withheld == 0


def located_state(ts: int) -> vstate.State:
    st = vstate.new_state("VIN1", "car-1")
    st["signals"] = {SPEED: [ts, 50.0], LATITUDE: [ts, 31.2], LONGITUDE: [ts, 121.4]}
    st["location"] = {"lat": 31.2, "lon": 121.4, "ts_us": ts}
    return st


def test_published_state_carries_a_location_only_as_allowed() -> None:
    st = located_state(NOW)
    assert public_state(st, policy()) is st  # allowed: the very same object (bytes reused)
    for pol in (None, policy(location=False), policy(since=NOW + 1)):
        pub = public_state(st, pol)
        assert pub["location"] is None and set(pub["signals"]) == {SPEED}
        assert st["location"] is not None  # the worker's own state keeps it
    # a fix of the previous ownership leaves the worker's state too, and never rides an alert
    old = located_state(SINCE - 1)
    assert alert_location(old, None) == old["location"]  # unknown vehicle: vital interest
    assert alert_location(old, policy(location=False)) is None
    assert scrub_state(old, policy(location=False)) is True
    assert old["location"] is None and set(old["signals"]) == {SPEED}
    assert scrub_state(old, policy()) is False
    fresh = located_state(NOW)
    assert alert_location(fresh, policy(location=False)) == fresh["location"]


def make(view: PrivacyView) -> TelemetryPipeline:
    reg = DeviceRegistry({"car-1": "VIN1", "car-2": "VIN2"})
    return TelemetryPipeline(StreamSettings(), reg, SkewPolicy(), now_us=lambda: NOW, privacy=view)


def run(p: TelemetryPipeline, *batches: TelemetryBatch) -> tuple[list[str], list[dict]]:  # type: ignore[type-arg]
    data: dict[tuple[str, str], bytes] = {}
    recs = [(0, encode_telemetry(b)) for b in batches]
    res = p.process(recs, lambda t, k: data.get((t, k)))
    return res.lines, [json.loads(v) for _, v in res.state_updates]


def test_pipeline_default_deny_keeps_speed_and_drops_positions() -> None:
    p = make(PrivacyView())
    lines, states = run(p, batch(NOW - 1_000_000))
    assert lines and all("CurrentLocation" not in ln for ln in lines)
    assert sum("Vehicle.Speed=42.0" in ln for ln in lines) == 3
    assert all(ln.startswith("telemetry,device=car-1 ") for ln in lines)
    assert states[0]["location"] is None and LATITUDE not in states[0]["signals"]
    assert states[0]["signals"][SPEED][1] == 42.0
    assert p.counters.locations_withheld == 10 and p.counters.locations_stored == 0
    assert p.counters.dead_lettered == 0  # withheld is not an error


def test_pipeline_with_consent_tags_positions_with_the_ownership() -> None:
    view = PrivacyView()
    view.apply(b"VIN1", policy().encode())
    p = make(view)
    lines, states = run(p, batch(NOW - 1_000_000), batch(NOW - 1_000_000, "car-2", 1))
    loc = [ln for ln in lines if "CurrentLocation" in ln]
    assert len(loc) == 3 and all(
        ln.startswith("telemetry,device=car-1,ownership=17,vin=VIN1 ") for ln in loc
    )
    assert all("Vehicle.Speed" not in ln for ln in loc)  # positions are series of their own
    assert not any("car-2" in ln and "CurrentLocation" in ln for ln in lines)  # VIN2: no record
    by_vin = {s["vin"]: s for s in states}
    assert by_vin["VIN1"]["location"]["lat"] == 31.23
    assert by_vin["VIN2"]["location"] is None
    assert p.counters.locations_stored == 9


def test_detectors_never_see_positions() -> None:
    view = PrivacyView()
    view.apply(b"VIN1", policy().encode())
    p = make(view)
    seen: list[set[str]] = []
    models = p.models_for(0, lambda t, k: None)
    real = models.update

    def spy(feed):  # type: ignore[no-untyped-def]
        seen.extend({s.names[i] for i in np.unique(s.sig)} for _, s in feed)
        return real(feed)

    models.update = spy  # type: ignore[method-assign]
    run(p, batch(NOW - 1_000_000))
    assert seen == [{SPEED}]


def test_a_dtc_event_publishes_the_state_without_an_unallowed_location() -> None:
    st = located_state(NOW)
    reg = DeviceRegistry({"car-1": "VIN1"})
    ev = encode_event(Event("car-1", "b", 1, "dtc", NOW, 2, {"codes": ["P0301"]}))
    lookup = {(T_STATE, "VIN1"): vstate.dumps(st)}
    res = handle_event(ev, reg, lambda t, k: lookup.get((t, k)), NOW, PrivacyView())
    assert res.state_update is not None
    assert json.loads(res.state_update[1])["location"] is None
    crash = encode_event(Event("car-1", "b", 2, "crash", NOW, 3, {"g": 9.0}))
    res = handle_event(crash, reg, lambda t, k: lookup.get((t, k)), NOW, PrivacyView())
    assert res.alert is not None and json.loads(res.alert[1])["location"]["lat"] == 31.2
