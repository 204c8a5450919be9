"""The sink registry and base class without a server: names, entry points, what a plug-in fills in.

The real sinks pass ``tests/contract/test_sinks.py`` against real servers; here a CSV plug-in
defined in this file shows the base's shared work (render checks, chunking, bisection) for a
format that is not line protocol.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import EntryPoint
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stream.sinks as registry
from core.config import CarpulseSettings
from core.errors import ConfigError
from stream.pipeline import summary_lines, summary_points
from stream.sinks.base import Block, Points, Rejected, Sink, bodies


class CsvSink(Sink):
    """One CSV row per sample; refuses rows whose value is 13 (as a server would)."""

    name = "csv"
    record_format = "csv-row/1"

    def __init__(self) -> None:
        super().__init__("memory://", batch_records=4, max_retries=0)
        self.bodies: list[bytes] = []

    def _render_internal(self, points: Points) -> list[str]:
        tags = ";".join(f"{k}={v}" for k, v in points.tags)
        return [
            f"{points.measurement},{tags},{points.names[s]},{t},{v!r}"
            for s, t, v in zip(
                points.sig.tolist(), points.ts_us.tolist(), points.value.tolist(), strict=True
            )
        ]

    async def _write_internal(self, body: bytes, group: str) -> None:
        if b",13.0\n" in body:
            raise Rejected(400, "13 is unlucky")
        self.bodies.append(body)


def test_an_entry_point_sink_is_found_built_in_names_win(monkeypatch: Any) -> None:
    here = "tests.unit.stream.test_sinks_base"
    eps = [
        EntryPoint("csv", f"{here}:CsvSink", registry.ENTRY_POINT_GROUP),
        EntryPoint("influx-v1", f"{here}:CsvSink", registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    assert registry.sink_class("csv") is CsvSink
    assert registry.sink_class("influx-v1").__name__ == "InfluxV1Sink"
    sink = registry.make_sink(CarpulseSettings.model_validate({"stream": {"sink": "csv"}}))
    assert isinstance(sink, CsvSink)
    with pytest.raises(ConfigError, match="known: csv, influx-v1, influx-v2"):
        registry.sink_class("clickhouse")


def test_a_target_that_is_missing_or_no_sink_is_a_config_error(monkeypatch: Any) -> None:
    monkeypatch.setitem(registry.SINKS, "gone", "no_such_module:Sink")
    monkeypatch.setitem(registry.SINKS, "other", "core.errors:ConfigError")
    with pytest.raises(ConfigError, match=r"'gone' \(no_such_module:Sink\) is not available"):
        registry.sink_class("gone")
    with pytest.raises(ConfigError, match=r"is not a stream\.sinks\.base\.Sink"):
        registry.sink_class("other")


def test_a_plugin_gets_checks_chunks_and_bisection_from_the_base() -> None:
    sink = CsvSink()
    p = Points.of(
        "m", {"car": "a,b"}, ["x", "y"], [0, 1, 0, 1, 0], [1, 1, 2, 2, 3], [1.0, np.nan, 13.0, 4, 5]
    )
    rendered = sink.render([p])
    assert [r for r, _ in rendered.refused] == ["non_finite"] and rendered.refused_rows == 1
    assert rendered.records[0] == "m,car=a,b,x,1,1.0"
    result = asyncio.run(sink.write(rendered.records))
    assert result.written == 3 and [r for r, _ in result.rejected] == ["m,car=a,b,x,2,13.0"]
    assert "13 is unlucky" in result.rejected[0][1]
    assert sink.written_lines == 3 and sink.rejected_lines == 1


def test_summaries_and_status_points_render_as_the_lines_they_replace() -> None:
    from stream.lines import all_lines

    rec = {"start_us": 10**12, "end_us": 10**12 + 5 * 10**6, "dist_km": 2.5, "harsh": 1}
    [line] = all_lines([summary_points("trips", "VIN 1", 10**12 + 5 * 10**6, rec)])
    assert line == summary_lines("trips", "VIN 1", 10**12 + 5 * 10**6, rec)
    status = Points.point("device_status", {"device": "car-1", "vin": "V1"}, 7, {"online": 1.0})
    assert all_lines([status]) == ["device_status,device=car-1,vin=V1 online=1.0 7"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.text("ab\u00e9,=", min_size=0, max_size=12), max_size=9), max_size=5),
    st.integers(1, 7),
    st.integers(1, 40),
)
def test_bodies_cut_blocks_at_record_bounds_within_both_limits(
    blocks: list[list[str]], max_records: int, max_bytes: int
) -> None:
    """Every record once, in order, whole; each body at most ``max_records`` records and
    ``max_bytes`` bytes unless it is one record longer than that; counts match."""
    made = [Block.of("g", recs) for recs in blocks]
    assert [b.records() for b in made] == [recs for recs in blocks]
    out = bodies(made, max_records, max_bytes)
    assert b"".join(body for body, _ in out) == b"".join(b.data for b in made)
    for body, n in out:
        assert 1 <= n <= max_records and body.count(b"\n") == n and body.endswith(b"\n")
        assert len(body) <= max_bytes or n == 1


def test_the_influx_sink_renders_blocks_as_its_lines_with_the_family_as_group() -> None:
    from stream.sinks.influx import InfluxV1Sink

    sink = InfluxV1Sink(CarpulseSettings().influx)
    tele = Points.of("telemetry", {"device": "d 1"}, ["x", "y"], [0, 1, 0], [5, 5, 6], [1, 2, 3])
    trips = summary_points("trips", "VIN1", 10**12, {"dist_km": 2.5})
    rendered = sink.render([tele, trips])
    assert [b.group for b in rendered.blocks] == ["telemetry", "trips"]
    assert rendered.records == [
        "telemetry,device=d\\ 1 x=1.0,y=2.0 5",
        "telemetry,device=d\\ 1 x=3.0 6",
        summary_lines("trips", "VIN1", 10**12, {"dist_km": 2.5}),
    ]
    assert [len(b) for b in rendered.blocks] == [2, 1]
    assert sink.blocks_of(rendered.records)[1].data == rendered.blocks[1].data
