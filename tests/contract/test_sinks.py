"""Every sink plug-in passes the same contract (python-can's back-to-back style), on real servers.

Each sink is built through the registry (``stream.sinks.make_sink``) from settings that name it,
writes columns (``Points``) and reads them back through its own query path: ``influx-v1`` against
Debian's ``influxd`` (1.x, InfluxQL), ``influx-v2`` against Debian's VictoriaMetrics (its
``/api/v2/write``; it has no Flux, so the sink reads through ``/api/v1/export``). Faults come
from ``tests.faultproxy`` in front of the real server. A new sink adds a ``SERVERS`` entry.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import CarpulseSettings
from core.errors import ConfigError, SinkError
from stream.sinks import SINKS, make_sink, sink_class
from stream.sinks.base import Points, Sink
from stream.sinks.writer import SinkWriter, pack, unpack
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000  # whole milliseconds: VictoriaMetrics stores milliseconds
HOSTILE_TAGS = [
    'say "hi"',  # quotes
    "a,b=c d",  # comma, equals, space
    "O'Brien",  # a single quote (InfluxQL string literal)
    "星期五 ümlaut",  # not ASCII
    "trailing space ",
]


@pytest.fixture(scope="module")
def influx_v1_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's influxd 1.x alone (no Kafka, no Mosquitto), as the local stack configures it."""
    from carpulse.stack import Stack, free_stack_settings

    stack = Stack(free_stack_settings(tmp_path_factory.mktemp("sink-v1")))
    stack.prepare()
    try:
        stack.start_service("influxdb")
        yield f"http://{stack.s.host}:{stack.s.influx_port}"
    finally:
        stack.down()


@pytest.fixture(scope="module")
def victoria_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.integration.test_influx_v2 import run_victoria

    with run_victoria(tmp_path_factory.mktemp("sink-v2")) as vm:
        yield vm.url


def _v1(url: str) -> dict[str, Any]:
    return {"api": "v1", "url": url, "database": f"c_{uuid.uuid4().hex[:8]}"}


def _v2(url: str) -> dict[str, Any]:
    return {"api": "v2", "url": url, "org": "carpulse", "bucket": "carpulse", "token": "x"}


# sink name -> (fixture giving the server's URL, [influx] settings for that URL, the relative
# precision the server stores values with: VictoriaMetrics keeps ~15 significant digits, and one
# decimal exponent per block, so a series mixing 1e300 with 1e21 stores the small ones as 0)
SERVERS: dict[str, tuple[str, Callable[[str], dict[str, Any]], float]] = {
    "influx-v1": ("influx_v1_url", _v1, 0.0),
    "influx-v2": ("victoria_url", _v2, 1e-14),
}


class Harness:
    """One sink of the parametrised kind, on the real server or a fault proxy in front of it."""

    def __init__(
        self,
        name: str,
        server_url: str,
        settings_for: Callable[[str], dict[str, Any]],
        rel: float,
    ) -> None:
        self.name = name
        self.rel = rel
        self.server_url = server_url
        self.settings_for = settings_for
        self.influx = settings_for(server_url)
        self.device = f"{name}-{uuid.uuid4().hex[:8]}"

    def settings(self, url: str | None = None) -> CarpulseSettings:
        influx = {**self.influx, "url": url or self.server_url, "timeout_s": 2.0}
        influx.update({"batch_lines": 50, "max_retries": 4})
        return CarpulseSettings.model_validate({"stream": {"sink": self.name}, "influx": influx})

    def sink(self, url: str | None = None) -> Sink:
        return make_sink(self.settings(url))

    def run(self, fn: Callable[[Sink], Any], url: str | None = None) -> Any:
        sink = self.sink(url)

        async def go() -> Any:
            await sink.start()
            try:
                return await fn(sink)
            finally:
                await sink.close()

        return asyncio.run(go())

    def read(self, tags: dict[str, str] | None = None) -> list[tuple[int, str, float]]:
        async def q(sink: Sink) -> list[tuple[int, str, float]]:
            return await sink.read("telemetry", tags or {"device": self.device})

        return self.run(q)  # type: ignore[no-any-return]

    def points(self, n: int, **tags: str) -> Points:
        names = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
        ts = T0 + np.repeat(np.arange(n // 2 + 1), 2)[:n] * 1000
        value = np.round(np.linspace(-1000.5, 1000.5, n), 3)
        return Points.of(
            "telemetry", {"device": self.device, **tags}, names, np.arange(n) % 2, ts, value
        )


def rows_of(p: Points) -> list[tuple[int, str, float]]:
    return sorted(
        (int(t), str(p.names[int(s)]), float(v))
        for s, t, v in zip(p.sig, p.ts_us, p.value, strict=True)
    )


class Sends:
    """A Kafka ``send`` stand-in that keeps what it was given (dead letters, parked records)."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, dict[str, bytes]]] = []

    async def __call__(self, value: bytes, headers: dict[str, bytes]) -> None:
        self.got.append((value, headers))


@pytest.fixture(params=sorted(SERVERS))
def harness(request: pytest.FixtureRequest) -> Harness:
    fixture, settings_for, rel = SERVERS[request.param]
    return Harness(request.param, request.getfixturevalue(fixture), settings_for, rel)


class TestSinkContract:
    def test_the_registry_builds_it_from_its_name(self, harness: Harness) -> None:
        sink = harness.sink()
        assert isinstance(sink, Sink) and type(sink) is sink_class(harness.name)
        assert sink.name == harness.name and sink.record_format and harness.name in SINKS

    def test_columns_are_stored_and_read_back_exactly(self, harness: Harness) -> None:
        p = harness.points(400)
        big = Points.of(
            "telemetry",
            {"device": harness.device},
            ["Vehicle.Big", "Vehicle.Huge"],
            [0, 0, 1],
            [T0 + 1_000_000, T0 + 2_000_000, T0 + 3_000_000],
            [2**70, -(2**65) - 1, 1e300],  # ints beyond int64 are floats, as every value is
        )

        async def write(sink: Sink) -> int:
            rendered = sink.render([p, big])
            assert not rendered.refused
            return (await sink.write(rendered.records)).written

        assert harness.run(write) == 200 + 3  # one record per timestamp
        got, want = harness.read(), sorted(rows_of(p) + rows_of(big))
        assert [r[:2] for r in got] == [r[:2] for r in want]
        assert [r[2] for r in got] == pytest.approx([r[2] for r in want], rel=harness.rel, abs=0)

    def test_hostile_values_are_refused_with_reasons_and_the_rest_is_written(
        self, harness: Harness
    ) -> None:
        d = {"device": harness.device}
        ok = Points.of("telemetry", d, ["Vehicle.Speed"], [0, 0], [T0, T0 + 1000], [1.5, 2.5])
        values = Points.of(
            "telemetry", d, ["Vehicle.Speed"], [0] * 4,
            [T0 + 2000, T0 + 3000, T0 + 4000, T0 + 5000], [np.nan, np.inf, -np.inf, 3.5],
        )  # fmt: skip
        lo, hi = sink_class(harness.name).ts_range_us
        times = Points.of("telemetry", d, ["Vehicle.Speed"], [0, 0], [hi + 1, lo - 1], [1.0, 2.0])
        newline = Points.of("telemetry", {**d, "x": "a\nb"}, ["Vehicle.Speed"], [0], [T0], [9.0])
        huge = Points.of("telemetry", {**d, "x": "y" * 10_000}, ["Vehicle.Speed"], [0], [T0], [9.0])
        # InfluxDB 1.x reads an escaped backslash back as two, 2.x as one: no sink takes one
        backslash = Points.of("telemetry", {**d, "x": "a\\b"}, ["Vehicle.Speed"], [0], [T0], [9.0])
        names = ["Vehicle.Speed", "evil\nname x=1", "a\\b"]
        bad_names = Points.of("telemetry", d, names, [0, 1, 2], [T0 + 6000] * 3, [4.5, 5.5, 6.5])
        with pytest.raises(SinkError, match="not numeric"):
            Points.of("telemetry", d, ["Vehicle.Speed"], [0], [2**70], [1.0])  # beyond int64
        with pytest.raises(SinkError, match="not numeric"):
            Points.of("telemetry", d, ["Vehicle.Speed"], [0], [T0], ["1.0; DROP"])
        dead, parked = Sends(), Sends()

        async def deliver(sink: Sink) -> SinkWriter:
            writer = SinkWriter(sink, dead, parked)
            await writer.deliver([ok, values, times, newline, huge, backslash, bad_names])
            return writer

        writer = harness.run(deliver)
        reasons = {h["reason"].decode(): json.loads(v) for v, h in dead.got}
        assert sorted(reasons) == ["bad_field", "bad_tag", "non_finite", "out_of_range"]
        assert reasons["non_finite"]["count"] == 3 and reasons["out_of_range"]["count"] == 2
        assert reasons["bad_field"]["count"] == 2
        assert writer.counters.refused_rows == 3 + 2 + 3 + 2 and not parked.got
        assert writer.counters.reasons == {
            "bad_tag": 3, "non_finite": 1, "out_of_range": 1, "bad_field": 1,
        }  # fmt: skip
        assert harness.read() == [
            (T0, "Vehicle.Speed", 1.5),
            (T0 + 1000, "Vehicle.Speed", 2.5),
            (T0 + 5000, "Vehicle.Speed", 3.5),
            (T0 + 6000, "Vehicle.Speed", 4.5),
        ]

    @pytest.mark.parametrize("tag", HOSTILE_TAGS)
    def test_hostile_tag_values_are_escaped_and_read_back_under_the_same_value(
        self, harness: Harness, tag: str
    ) -> None:
        p = harness.points(6, vin=tag)

        async def write(sink: Sink) -> int:
            return (await sink.write(sink.render([p]).records)).written

        assert harness.run(write) == 3
        assert harness.read({"device": harness.device, "vin": tag}) == rows_of(p)

    def test_transient_failures_are_retried_and_nothing_is_lost(self, harness: Harness) -> None:
        p = harness.points(300)  # 150 records: 3 requests of 50
        with FaultProxy(harness.server_url, ["503", "429", "ok", "503"], retry_after="0.05") as px:

            async def write(sink: Sink) -> tuple[int, int]:
                result = await sink.write(sink.render([p]).records)
                return result.written, sink.retries

            assert harness.run(write, px.url) == (150, 3)
        assert harness.read() == rows_of(p)

    def test_refused_records_are_reported_and_the_rest_is_written(self, harness: Harness) -> None:
        good = harness.points(40)
        bad = harness.points(2, vin="refuse-me")
        dead, parked = Sends(), Sends()
        with FaultProxy(harness.server_url, refuse="refuse-me") as px:

            async def deliver(sink: Sink) -> SinkWriter:
                writer = SinkWriter(sink, dead, parked)
                await writer.deliver([good, bad])
                return writer

            writer = harness.run(deliver, px.url)
        [(value, headers)] = dead.got
        assert headers["reason"] == sink_class(harness.name).reject_reason.encode()
        assert b"HTTP 400" in headers["detail"] and b"refuse-me" in value
        assert writer.counters.rejected == 1 and writer.counters.written == 20 and not parked.got
        assert harness.read() == rows_of(good)

    def test_an_outage_parks_records_that_replay_later_also_those_parked_before_formats(
        self, harness: Harness
    ) -> None:
        first, second = harness.points(20), harness.points(20)
        second = Points(
            second.measurement, second.tags, second.names, second.sig,
            second.ts_us + 10_000_000, second.value,
        )  # fmt: skip
        dead, parked = Sends(), Sends()
        with FaultProxy(harness.server_url) as px:
            px.go_down()

            async def outage(sink: Sink) -> None:
                writer = SinkWriter(sink, dead, parked)
                await writer.deliver([first])

            harness.run(outage, px.url)
        [(value, headers)] = parked.got
        assert headers["format"] == sink_class(harness.name).record_format.encode()
        # a record parked by a worker of before the format header: line protocol, no header
        old_value = pack(harness.sink().render([second]).records)[0]
        old_headers = {"attempt": b"1", "first_failed_us": b"1700000000000000"}

        async def no_sleep(_s: float) -> None: ...

        async def replay(sink: Sink) -> list[int]:
            writer = SinkWriter(sink, dead, parked)
            return [
                await writer.replay(value, no_sleep, headers),
                await writer.replay(old_value, no_sleep, old_headers),
            ]

        assert harness.run(replay) == [10, 10] and not dead.got
        assert len(unpack(value)) == 10
        assert harness.read() == sorted(rows_of(first) + rows_of(second))


def test_a_bad_sink_name_is_a_config_error_that_lists_the_known_sinks() -> None:
    settings = CarpulseSettings.model_validate({"stream": {"sink": "timescale"}})
    with pytest.raises(ConfigError, match="known: influx-v1, influx-v2"):
        make_sink(settings)
    with pytest.raises(ValueError, match="sink"):
        CarpulseSettings.model_validate({"stream": {"sink": "Influx V1; rm"}})


def test_the_old_settings_still_select_the_influx_sinks(tmp_path: Path) -> None:
    v2 = CarpulseSettings.model_validate({"influx": {"api": "v2"}})
    assert make_sink(CarpulseSettings()).name == "influx-v1" and make_sink(v2).name == "influx-v2"
