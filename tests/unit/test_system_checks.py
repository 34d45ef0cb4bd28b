"""The system tier's invariant checkers catch what they are for (fed observations that break the property)."""

from __future__ import annotations

from tests.system.boards import failures_outside, leader_conflicts


def test_two_leaders_in_one_term_are_caught() -> None:
    clean = [("board-0", 1, "board-2"), ("board-1", 1, "board-2"), ("board-0", 2, "board-1"), ("board-1", None, None)]
    assert leader_conflicts(clean) == {}
    split = [*clean, ("board-2", 2, "board-2")]  # fencing switched off: board-2 also claims term 2
    assert leader_conflicts(split) == {2: {"board-1", "board-2"}}


def test_failures_outside_the_detection_window_are_caught() -> None:
    window = [(10.0, 13.0)]
    assert failures_outside([10.5, 12.9], window) == []
    assert failures_outside([10.5, 13.5, 2.0], window) == [13.5, 2.0]
