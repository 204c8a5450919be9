"""The committed Grafana JSON is what ``python -m dashboards.grafana.build`` writes (no hand edits
that the next regeneration would drop)."""

from __future__ import annotations

import json

from dashboards.grafana.build import DASHBOARDS, HERE


def test_every_committed_dashboard_is_the_generators_output() -> None:
    out = HERE / "dashboards"
    committed = {p.stem for p in out.glob("*.json")}
    assert committed == set(DASHBOARDS)
    for name, doc in DASHBOARDS.items():
        assert json.loads((out / f"{name}.json").read_text()) == doc, name
