"""Counts given to ``bench`` and ``eval`` commands: refused by argparse before a run starts."""

from __future__ import annotations

import argparse
import importlib

import pytest

from core.argtypes import count


@pytest.mark.parametrize(
    ("text", "minimum", "maximum", "want"),
    [
        ("1", 1, None, 1),
        ("0", 0, None, 0),
        ("+7", 1, None, 7),
        (" 12 ", 1, 20, 12),
        ("20", 1, 20, 20),
    ],
)
def test_a_count_in_range_is_taken(text: str, minimum: int, maximum: int | None, want: int) -> None:
    assert count(minimum, maximum)(text) == want


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0", "0 is below 1"),
        ("-3", "-3 is below 1"),
        ("21", "21 is above 20"),
        ("abc", "is not a whole number"),
        ("1.5", "is not a whole number"),
        ("nan", "is not a whole number"),
        ("", "is not a whole number"),
        ("9" * 5000, "has too many digits"),  # beyond int()'s digit limit
        ("1" + "0" * 30, "is above 20"),  # beyond int64: still a plain refusal
        ("-" + "9" * 4000, "is below 1"),  # within int()'s limit, but not echoed whole
    ],
)
def test_a_count_out_of_range_or_not_a_number_is_refused(text: str, why: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=why) as err:
        count(1, 20)(text)
    assert len(str(err.value)) < 120  # a huge argument is not echoed whole


# Every entry point that took a count as a plain int, with the option that used to crash at 0
# (a median of no runs, a division by no rounds) or print NaN into its JSON.
ENTRIES = [
    ("carpulse.evals.plates:main", ["--repeats", "0"], "--repeats"),
    ("carpulse.bench.kernels:bench_kernels", ["--slots", "0"], "--slots"),
    ("carpulse.bench.kernels:bench_kernels", ["--samples", "-5"], "--samples"),
    ("carpulse.bench.kernels:bench_kernels", ["--samples", "10", "--slots", "64"], "--samples 10"),
    ("carpulse.bench.kernels:bench_kernels", ["--repeat", "0"], "--repeat"),
    ("carpulse.bench.maintenance:bench_maintenance", ["--slots", "0"], "--slots"),
    ("carpulse.bench.obd:bench_obd", ["--rounds", "0"], "--rounds"),
    ("carpulse.bench.edge:bench_edge", ["--runs", "0"], "--runs"),
    ("carpulse.bench.edge:bench_edge", ["--cold-runs", "-1"], "--cold-runs"),
    ("carpulse.bench.edge_memory:bench_edge_memory", ["--runs", "0"], "--runs"),
    ("carpulse.bench.canread:bench_canread", ["--repeat", "0"], "--repeat"),
    ("carpulse.bench.decode:bench_decode", ["--repeat", "0"], "--repeat"),
    ("carpulse.bench.crm:bench_crm", ["--evals", "0"], "--evals"),
    ("carpulse.bench:bench_wire", ["--batch-samples", "0"], "--batch-samples"),
    ("carpulse.bench.e2e:bench_e2e", ["--vehicles", "0"], "--vehicles"),
    ("carpulse.bench.e2e:bench_e2e", ["--crm-events", "-1"], "--crm-events"),
    ("carpulse.bench.e2e:bench_e2e", ["--runs", "0"], "--runs"),
    ("carpulse.bench.envelope:bench_envelope", ["--batch-samples", "3"], "--batch-samples"),
    ("carpulse.bench.envelope:bench_envelope", ["--rounds", "0"], "--rounds"),
    ("carpulse.bench.edge_queue:bench_edge_queue", ["--pairs", "0"], "--pairs"),
    ("carpulse.evals.faults:main", ["--signals", "0"], "--signals"),
]


@pytest.mark.parametrize(("entry", "argv", "option"), ENTRIES)
def test_a_zero_or_negative_count_stops_before_the_run(
    entry: str, argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, name = entry.split(":")
    fn = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit) as stop:
        fn(argv)
    assert stop.value.code == 2
    assert option in capsys.readouterr().err
