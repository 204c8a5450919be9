"""Voting over frames and the per-plate dedupe window."""

from __future__ import annotations

from models.plates.vote import DedupeWindow, PlateVoter, Reading


def test_one_misread_frame_is_outvoted() -> None:
    v = PlateVoter(min_votes=2, gap_s=1.0)
    assert v.add(Reading("皖A195K9", 0.9, 0.0, "a")) == []
    assert v.add(Reading("皖A196K9", 0.6, 0.1, "b")) == []  # one character off: same car
    assert v.add(Reading("皖A195K9", 0.95, 0.2, "c")) == []
    done = v.flush(5.0)
    assert len(done) == 1
    c = done[0]
    assert c.text == "皖A195K9" and c.votes == 3 and c.crop_sha256 == "c"
    assert 0 < c.confidence < 0.95


def test_a_single_sighting_is_not_enough_with_min_votes_two() -> None:
    v = PlateVoter(min_votes=2, gap_s=1.0)
    v.add(Reading("京EA5331", 0.99, 0.0))
    assert v.flush(2.0) == [] and v.discarded == 1


def test_two_cars_make_two_groups() -> None:
    v = PlateVoter(min_votes=1, gap_s=1.0)
    v.add(Reading("京EA5331", 0.9, 0.0))
    v.add(Reading("沪AF71017", 0.9, 0.1))
    assert sorted(c.text for c in v.flush(None)) == ["京EA5331", "沪AF71017"]


def test_dedupe_window() -> None:
    d = DedupeWindow(window_s=60)
    assert d.allow("皖A195K9", 0)
    assert not d.allow("皖A195K9", 30)
    assert not d.allow("皖A195K9", 80)  # still idling at the gate: the window slides
    assert d.allow("皖A195K9", 200)
    assert d.allow("京EA5331", 200)
    assert d.suppressed == 2
