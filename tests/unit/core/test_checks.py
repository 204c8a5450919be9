"""Field checks for untrusted input: int64, finite numbers, bounded strings and trees, DTC lists."""

from __future__ import annotations

import pytest

from core.checks import (
    MAX_DTCS,
    check_dtcs,
    check_tree,
    finite,
    int64,
    valid_dtcs,
)
from core.errors import WireError


@pytest.mark.parametrize(
    "value", [2**63, -(2**63) - 1, 2**64 - 1, 10**30, True, 1.0, "1", [1], None]
)
def test_int64_refuses_what_numpy_cannot_hold(value: object) -> None:
    with pytest.raises(WireError) as info:
        int64(value, "bad_seq", "seq")
    assert info.value.reason == "bad_seq" and len(str(info.value)) < 200
    assert int64(2**63 - 1, "r", "x") == 2**63 - 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400, "1.0", None, [1.0], False])
def test_finite_refuses_nan_inf_and_wrong_types(value: object) -> None:
    with pytest.raises(WireError):
        finite(value, "bad_value", "value")
    assert finite(10**30, "r", "x") == 1e30


def test_trees_are_bounded_in_depth_size_and_leaves() -> None:
    deep: list[object] = []
    for _ in range(10):
        deep = [deep]
    for bad in (deep, {"a": float("nan")}, {"a": 2**64 - 1}, list(range(2000)), {"a": b"x"},
                {"k" * 100: 1}, {"a": "x" * 5000}):  # fmt: skip
        with pytest.raises(WireError):
            check_tree(bad, "bad_data", "data")
    ok = {"a": [1, 2.5, None, True, "x", {"b": -(2**63)}]}
    assert check_tree(ok, "r", "data") is ok


def test_dtc_lists_need_the_pattern_and_are_capped() -> None:
    assert check_dtcs(["p0301", "P0301", "U0100"]) == ["P0301", "U0100"]
    for bad in (["P0301"] * (MAX_DTCS + 1), ["X0000"], ["P03011"], ["P0301\n"], [301], "P0301",
                None, [["P0301"]]):  # fmt: skip
        with pytest.raises(WireError) as info:
            check_dtcs(bad)
        assert info.value.reason == "bad_dtc"
    # read back from a topic or a table: the valid ones only, capped
    assert valid_dtcs(["P0301", 5, "bad", "c0035"]) == ["C0035", "P0301"]
    assert len(valid_dtcs([f"P{i:04X}" for i in range(1000)])) == MAX_DTCS
    assert valid_dtcs("P0301") == []
