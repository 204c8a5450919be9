"""Condition expressions: vectorised evaluation, and refusal of anything outside the whitelist."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from edge.expr import compile_expression


def test_the_issue_example_evaluates_per_row() -> None:
    e = compile_expression("Vehicle.Speed > 120 and Vehicle.Acceleration.Longitudinal < -8")
    assert e.signals == ("Vehicle.Speed", "Vehicle.Acceleration.Longitudinal")
    cols = {
        "Vehicle.Speed": np.array([130.0, 130.0, 100.0, np.nan]),
        "Vehicle.Acceleration.Longitudinal": np.array([-9.0, -1.0, -9.0, -9.0]),
    }
    assert e.evaluate(cols).tolist() == [True, False, False, False]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("abs(Vehicle.A.X) >= 2 or not Vehicle.A.Y", [True, False, True]),
        ("0 < Vehicle.A.X * 2 + 1 <= 5", [False, True, True]),
        ("max(Vehicle.A.X, Vehicle.A.Y) == 2", [False, False, True]),
        ("Vehicle.A.X % 2 != 0 and Vehicle.A.Y / 0 > 1", [False, True, False]),
    ],
)
def test_operators(text: str, want: list[bool]) -> None:
    cols = {"Vehicle.A.X": np.array([-3.0, 1.0, 2.0]), "Vehicle.A.Y": np.array([0.0, 1.0, 1.0])}
    assert compile_expression(text).evaluate(cols).tolist() == want


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("__import__('os').system('id')", "only calls of"),
        (
            "Vehicle.Speed.__class__ > 1",
            None,
        ),  # a dotted path, but not a known signal: fine to parse
        ("(lambda: 1)() > 0", "only calls of"),
        ("Vehicle.Speed[0] > 1", "Subscript is not allowed"),
        ("Vehicle.Speed > 'fast'", "only numbers"),
        ("Speed > 1", "not a signal path"),
        ("Vehicle.Speed ** 2 > 1", "only \\+ - \\* / %"),
        ("Vehicle.Speed in (1, 2)", "only < <= > >= == != are allowed"),
        ("[x for x in Vehicle.Speed]", "ListComp is not allowed"),
        ("1 > 0", "refers to no signal"),
        ("Vehicle.Speed >", "column"),
        ("", "empty"),
    ],
)
def test_refused_with_a_clear_reason(text: str, why: str | None) -> None:
    if why is None:
        compile_expression(text)
        return
    with pytest.raises(ConfigError, match=why):
        compile_expression(text, "campaign x")
