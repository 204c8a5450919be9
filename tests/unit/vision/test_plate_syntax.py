"""Plate syntax: every GA 36-2018 kind (plus armed police and emergency), near misses, normalisation."""

from __future__ import annotations

import pytest

from models.plates.syntax import KIND_COLOUR, KINDS, is_valid, kind_of, normalise, plate_kind

# One valid plate per kind, and near misses that a misread (or a wrong rule) would produce.
VALID = {
    "ordinary": ["皖A195K9", "京EA5331", "苏E9E0A5", "川A8H458"],
    "new-energy-small": ["沪AF71017", "京AD12345", "粤BDA1234"],
    "new-energy-large": ["粤B12345D", "沪A00001F"],
    "trailer": ["鲁B1234挂"],
    "coach": ["苏E1A23学"],
    "police": ["鄂F8888警"],
    "consulate": ["沪A1234领"],
    "test": ["浙A0001试"],
    "oversize": ["冀B1234超"],
    "hong-kong": ["粤Z1234港", "粤ZA123港"],
    "macau": ["粤Z5678澳"],
    "embassy": ["使014578"],
    "emergency": ["京X1234应急"],
    "emergency-motorcycle": ["应急川123A"],
    "armed-police": ["WJ京1234消", "WJ粤12345", "WJ0112345", "WJ川1234边"],
}
NEAR_MISS = {
    "ordinary": ["A195K9", "皖1195K9", "皖AI95K9", "皖A1O5K9", "皖A195K", "皖A195K99", "X皖195K9"],
    "new-energy-small": ["沪AX71017", "沪AF7101A", "沪AFI1017"],
    "new-energy-large": ["沪A7101X7", "沪A1234AD", "沪A12345DD"],
    "trailer": ["鲁B12345挂", "鲁B123挂", "鲁1A123挂"],
    "coach": ["苏E1A2学3", "学E1A234"],
    "police": ["皖AA警123", "鄂F888警"],
    "consulate": ["沪A12345领", "领A1234沪"],
    "test": ["浙A001试"],
    "oversize": ["冀B1234超超"],
    "hong-kong": ["京A1234港", "粤B1234港", "粤Z12345港"],
    "macau": ["沪Z5678澳", "粤Z567澳"],
    "embassy": ["使01457", "使01457A", "使0145789", "014578使"],
    "emergency": ["京X123应急", "京X1234应", "京XA234应急", "京X1234急应"],
    "emergency-motorcycle": ["应急川1234", "急应川123A"],
    "armed-police": ["WJ京123消", "WJ京1234挂", "W京12345", "JW京12345", "WJ京A2345", "WJ112345"],
}


@pytest.mark.parametrize(("kind", "text"), [(k, t) for k, ts in VALID.items() for t in ts])
def test_each_kind_is_recognised(kind: str, text: str) -> None:
    assert is_valid(text)
    assert kind_of(text) == kind


@pytest.mark.parametrize(("kind", "text"), [(k, t) for k, ts in NEAR_MISS.items() for t in ts])
def test_near_misses_are_rejected(kind: str, text: str) -> None:
    assert not is_valid(text), (kind, kind_of(text))


def test_every_kind_has_a_colour_and_tests() -> None:
    kinds = [k for k, _, _ in KINDS]
    assert set(kinds) == set(VALID) == set(NEAR_MISS)
    assert set(KIND_COLOUR.values()) <= {"blue", "yellow", "green", "white", "black"}
    assert KIND_COLOUR["consulate"] == "black" and KIND_COLOUR["police"] == "white"


def test_empty_and_hostile_text() -> None:
    for text in ("", "京", "应急", "WJ", "\x00" * 7, "京A12345" * 100):
        assert not is_valid(text)


def test_normalise_drops_separators_and_folds_i_o() -> None:
    assert normalise("皖A·0L727") == "皖A0L727"
    assert normalise("皖a·ol727") == "皖A0L727"  # O -> 0 (plates never use O)
    assert normalise("川A 8H458") == "川A8H458"
    assert normalise("粤B-I2345") == "粤B12345"
    assert normalise("使014·578") == "使014578"


def test_plate_kind() -> None:
    assert plate_kind("沪AF71017") == "new-energy"
    assert plate_kind("粤B12345D") == "new-energy"
    assert plate_kind("鄂F8888警") == "special"
    assert plate_kind("WJ京1234消") == "special"
    assert plate_kind("皖A195K9") == "standard"
