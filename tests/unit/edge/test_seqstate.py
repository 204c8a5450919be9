"""Sequence numbers rise across restarts: a gap after a restart, never a repeat."""

from __future__ import annotations

from pathlib import Path

from edge.seqstate import BLOCK, SequenceCounter


def test_numbers_rise_across_restarts_with_a_gap_never_a_repeat(tmp_path: Path) -> None:
    a = SequenceCounter(tmp_path, "car-1")
    first = [a.next() for _ in range(BLOCK + 3)]
    assert first == list(range(BLOCK + 3))
    b = SequenceCounter(tmp_path, "car-1")  # a restart (or kill -9) after those numbers
    nxt = b.next()
    assert nxt == 2 * BLOCK > first[-1]
    assert b.boot_id != a.boot_id
    assert (tmp_path / "car-1.seq").read_text() == str(3 * BLOCK)
    assert not (tmp_path / "car-1.tmp").exists()
