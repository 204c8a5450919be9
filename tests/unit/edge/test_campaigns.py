"""Campaigns over micro-batches: selection, periodic aggregates, on-change, triggers with pre/post windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from core.wire import Samples
from edge.agent import Batcher
from edge.campaigns import CampaignManager, CampaignSpec, concat_samples, parse_specs

SPEED, ACC, RPM = (
    "Vehicle.Speed",
    "Vehicle.Acceleration.Longitudinal",
    "Vehicle.Powertrain.CombustionEngine.Speed",
)


def _batch(t0_s: float, t1_s: float, hz: float, fn: dict[str, object]) -> Samples:
    """Samples of every signal in ``fn`` (value = fn(t)) at ``hz`` over ``[t0, t1)``."""
    t = np.arange(t0_s, t1_s, 1 / hz)
    names = list(fn)
    sig = np.repeat(np.arange(len(names)), len(t))
    ts = np.tile(np.round(t * 1e6).astype(np.int64), len(names))
    val = np.concatenate([np.asarray(f(t), float) for f in fn.values()])  # type: ignore[operator]
    order = np.argsort(ts, kind="stable")
    return Samples.from_columns(names, sig[order], ts[order], val[order])


def _by_name(parts: list[Samples]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for n, t, v in concat_samples(parts).records():
        out.setdefault(n, []).append((t, v))
    return out


def test_raw_selects_exact_paths_and_prefixes() -> None:
    m = CampaignManager(
        [CampaignSpec(name="c", signals=[SPEED, "Vehicle.Powertrain.*"], priority=4)]
    )
    out = m.process(_batch(0, 1, 10, {SPEED: lambda t: t, ACC: lambda t: t, RPM: lambda t: t}))
    got = _by_name(out.by_priority[4])
    assert set(got) == {SPEED, RPM} and len(got[SPEED]) == 10


def test_periodic_aggregates_across_batches() -> None:
    spec = CampaignSpec(
        name="p", kind="periodic", signals=[SPEED], hz=1, aggregates=["min", "max", "mean", "last"]
    )
    m = CampaignManager([spec])
    parts: list[Samples] = []
    for a in (0.0, 0.7, 1.4, 2.1):  # batch edges fall inside windows
        parts += m.process(_batch(a, a + 0.7, 10, {SPEED: lambda t: 10 * t})).by_priority.get(5, [])
    got = _by_name(parts)
    assert set(got) == {SPEED, f"{SPEED}.Min", f"{SPEED}.Max", f"{SPEED}.Mean"}
    # Windows [0,1) and [1,2) are closed: 10 samples each, values 0..9 and 10..19.
    assert [v for _, v in got[f"{SPEED}.Min"]][:2] == pytest.approx([0, 10])
    assert [v for _, v in got[f"{SPEED}.Max"]][:2] == pytest.approx([9, 19])
    assert [v for _, v in got[f"{SPEED}.Mean"]][:2] == pytest.approx([4.5, 14.5])
    assert [v for _, v in got[SPEED]][:2] == pytest.approx([9, 19])


def test_on_change_with_deadband() -> None:
    m = CampaignManager([CampaignSpec(name="o", kind="on_change", signals=[SPEED], deadband=1.0)])
    vals = [0.0, 0.5, 1.0, 1.6, 1.7, 0.5, 0.5]
    s = Samples.from_records([(SPEED, i, v) for i, v in enumerate(vals)])
    got = [v for _, v in _by_name(m.process(s).by_priority[5])[SPEED]]
    assert got == [0.0, 1.6, 0.5]


def test_condition_sends_pre_and_post_windows_once() -> None:
    spec = CampaignSpec(
        name="hard-brake", kind="condition", signals=[SPEED, ACC], priority=2,
        condition=f"{SPEED} > 120 and {ACC} < -8", pre_s=2, post_s=1,
    )  # fmt: skip
    m = CampaignManager([spec])
    speed = lambda t: np.where(t < 10, 130.0, 60.0)  # noqa: E731
    acc = lambda t: np.where((t >= 5) & (t < 5.5), -9.0, 0.0)  # noqa: E731 - one hard brake at 5 s
    parts, triggers = [], []
    for a in np.arange(0, 12, 0.5):  # 0.5 s micro-batches, 10 Hz
        out = m.process(_batch(a, a + 0.5, 10, {SPEED: speed, ACC: acc}))
        parts += out.by_priority.get(2, [])
        triggers += out.triggers
    assert [t["ts_us"] for t in triggers] == [5_000_000]
    got = _by_name(parts)
    ts = sorted({t for rows in got.values() for t, _ in rows})
    assert ts[0] == 3_000_000 and ts[-1] == 6_000_000  # 2 s before, 1 s after
    assert len(got[SPEED]) == len(got[ACC]) == 31  # every sample once, none twice


def test_condition_waits_for_every_signal() -> None:
    m = CampaignManager(
        [CampaignSpec(name="c", kind="condition", condition=f"{SPEED} > 1 and {ACC} < 0")]
    )
    assert not m.process(_batch(0, 1, 10, {SPEED: lambda t: t + 5})).triggers
    assert len(m.process(_batch(1, 2, 10, {ACC: lambda t: -t})).triggers) == 1


def test_apply_replaces_newer_versions_only_and_persists(tmp_path: Path) -> None:
    state = tmp_path / "campaigns.json"
    m = CampaignManager([CampaignSpec(name="c", version=1, signals=[SPEED])], state)
    assert m.apply({"name": "c", "version": 1, "signals": [ACC]})["reason"] == "stale_version"
    ok = m.apply({"name": "c", "version": 2, "signals": [ACC], "priority": 3})
    assert ok["ok"] and m.specs["c"].version == 2
    out = m.process(_batch(0, 1, 10, {SPEED: lambda t: t, ACC: lambda t: t}))
    assert set(_by_name(out.by_priority[3])) == {ACC}
    bad = m.apply({"name": "d", "kind": "condition", "condition": "__import__('os')"})
    assert not bad["ok"] and bad["reason"] == "invalid"
    # A restart with the old config keeps the newer version that came over a command.
    m2 = CampaignManager([CampaignSpec(name="c", version=1, signals=[SPEED])], state)
    assert m2.specs["c"].version == 2
    assert m2.remove("c")["ok"] and "c" not in m2.specs


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ({"name": "x", "kind": "periodic", "hz": 0}, "hz"),
        ({"name": "x", "kind": "condition"}, "needs 'condition'"),
        ({"name": "x", "kind": "raw", "condition": "Vehicle.Speed > 1"}, "only applies"),
        ({"name": "x", "kind": "condition", "condition": "Vehicle.Speed >>> 1"}, "column"),
        ({"name": "x", "priority": 0}, "priority"),
        ({"name": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_campaigns_name_the_entry_and_field(item: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError, match=why) as err:
        parse_specs([{"name": "ok"}, item], "edge.toml")
    assert "campaigns[1]" in str(err.value)


def test_batcher_cuts_by_size_and_time() -> None:
    b = Batcher(max_samples=100, max_interval_s=1.0)
    b.add(5, _batch(0, 0.5, 100, {SPEED: lambda t: t}))
    assert b.due() == []  # 50 samples over 0.5 s: not yet
    b.add(5, _batch(0.5, 1.2, 100, {SPEED: lambda t: t}))
    out = b.due()
    assert [len(s) for _, s in out] == [100, 20] and all(p == 5 for p, _ in out)
    assert np.all(np.diff(concat_samples([s for _, s in out]).ts_us) > 0)
    b.add(2, _batch(0, 0.1, 100, {ACC: lambda t: t}))
    assert [(p, len(s)) for p, s in b.due(force=True)] == [(2, 10)]
