"""Exact dedupe on (device, boot_id, seq): resends dropped, late-but-new kept, state round-trips."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.dedupe import MAX_BOOTS, WINDOW, DeviceSeen


def test_resend_after_edge_crash_is_dropped_exactly() -> None:
    d = DeviceSeen()
    assert [d.check("b1", q) for q in range(10)] == ["new"] * 10
    assert [d.check("b1", q) for q in range(5, 10)] == ["duplicate"] * 5
    assert d.check("b1", 10) == "new"
    assert d.check("b2", 0) == "new"  # a new boot starts its own numbering


def test_late_message_inside_the_window_is_new_once() -> None:
    d = DeviceSeen()
    for q in (0, 1, 3, 4):
        d.check("b", q)
    assert d.check("b", 2) == "new"
    assert d.check("b", 2) == "duplicate"


def test_older_than_the_window_is_stale_not_silently_new() -> None:
    d = DeviceSeen()
    d.check("b", WINDOW + 10)
    assert d.check("b", 5) == "stale"


def test_only_recent_boots_are_kept() -> None:
    d = DeviceSeen()
    for b in range(MAX_BOOTS + 3):
        d.check(f"boot{b}", 0)
    assert len(d.boots) == MAX_BOOTS and "boot0" not in d.boots


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 300)), max_size=300))
def test_matches_a_plain_set_inside_the_window(msgs: list[tuple[str, int]]) -> None:
    d = DeviceSeen()
    seen: set[tuple[str, int]] = set()
    for i, (boot, seq) in enumerate(msgs):
        want = "duplicate" if (boot, seq) in seen else "new"
        assert d.check(boot, seq) == want
        seen.add((boot, seq))
        if i % 37 == 0:  # the table round-trip in between must not change any verdict
            d = DeviceSeen.from_bytes(d.to_bytes())


def test_the_table_value_is_compact_and_the_json_form_still_loads() -> None:
    d = DeviceSeen()
    for q in range(3 * WINDOW):
        d.check("b1", q)
    d.check("b2", 7)
    raw = d.to_bytes()
    assert len(raw) < 2 * (WINDOW // 8 + 64)  # a bitmap per boot, not thousands of numbers
    back = DeviceSeen.from_bytes(raw)
    assert back.check("b1", 3 * WINDOW - 5) == "duplicate" and back.check("b2", 7) == "duplicate"
    assert back.check("b2", 6) == "new" and back.check("b1", 5) == "stale"
    old = b'{"b1":[10,[8,10]],"b2":[3,[3]]}'  # written by earlier versions
    d = DeviceSeen.from_bytes(old)
    assert [d.check("b1", q) for q in (8, 9, 10)] == ["duplicate", "new", "duplicate"]
    assert list(d.boots) == ["b1", "b2"]
