"""Plate syntax: provinces, I/O exclusion, new-energy and special plates; normalisation."""

from __future__ import annotations

import pytest

from models.plates.syntax import is_valid, normalise, plate_kind


@pytest.mark.parametrize(
    "text",
    ["皖A195K9", "京EA5331", "沪AF71017", "粤B12345D", "鄂F8888警", "苏E9E0A5", "川A8H458"],
)
def test_valid_plates(text: str) -> None:
    assert is_valid(text)


@pytest.mark.parametrize(
    "text",
    [
        "A195K9",  # no province
        "皖1195K9",  # second character must be a letter
        "皖AI95K9",  # I is never issued
        "皖A1O5K9",  # nor O
        "皖A195K",  # too short
        "皖A195K99",  # 6 serial characters only for new-energy plates
        "沪AX71017",  # new-energy plate must start with D/F (small) or end with D/F (large)
        "沪A7101X7",
        "皖AA警123",  # the special suffix goes last
        "X皖195K9",
        "",
    ],
)
def test_invalid_plates(text: str) -> None:
    assert not is_valid(text)


def test_normalise_drops_separators_and_folds_i_o() -> None:
    assert normalise("皖A·0L727") == "皖A0L727"
    assert normalise("皖a·ol727") == "皖A0L727"  # O -> 0 (plates never use O)
    assert normalise("川A 8H458") == "川A8H458"
    assert normalise("粤B-I2345") == "粤B12345"


def test_plate_kind() -> None:
    assert plate_kind("沪AF71017") == "new-energy"
    assert plate_kind("鄂F8888警") == "special"
    assert plate_kind("皖A195K9") == "standard"
