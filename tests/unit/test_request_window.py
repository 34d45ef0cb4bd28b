"""The leader's request window (agent/request_window.py): age and count bounds, junk stamps, fairness between nodes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.placement import RequestRecord
from agent.request_window import RequestWindow, fair_cap


def rec(ts: float, client: str = "c") -> RequestRecord:
    return RequestRecord(ts, "m", client, {"a": 1.0}, "a", 2.0, 200)


def test_implausible_stamps_take_no_room_on_arrival() -> None:
    w = RequestWindow(max_records=3, window_s=10.0, max_ahead_s=60.0)
    junk = [rec(float("nan")), rec(1e12), rec(float("inf")), rec(-1.0), rec(89.0)]
    assert w.add("liar", junk, now=100.0) == 0 and len(w) == 0
    assert w.add("a", [rec(95.0), rec(99.0), rec(159.0)], now=100.0) == 3
    assert [r.ts for r in w.records()] == [95.0, 99.0, 159.0] and {r.logged_by for r in w.records()} == {"a"}


def test_a_flooding_node_cannot_push_the_others_records_out() -> None:
    w = RequestWindow(max_records=100, window_s=600.0, max_ahead_s=60.0)
    w.add("a", [rec(90.0 + i / 100, "ca") for i in range(30)], now=100.0)
    w.add("b", [rec(90.0 + i / 100, "cb") for i in range(10)], now=100.0)
    for _ in range(20):  # the flood: page after page
        w.add("flood", [rec(99.0, "x")] * 5000, now=100.0)
    by_node = {n: sum(r.logged_by == n for r in w.records()) for n in ("a", "b", "flood")}
    assert by_node == {"a": 30, "b": 10, "flood": 60} and len(w) == 100  # the flood keeps the rest of the room


def test_past_the_bound_the_largest_lose_their_oldest_down_to_an_equal_share() -> None:
    w = RequestWindow(max_records=9, window_s=600.0, max_ahead_s=60.0)
    w.add("a", [rec(float(t)) for t in range(10)], now=100.0)
    assert [r.ts for r in w.records()] == [float(t) for t in range(1, 10)]  # alone: the newest nine
    w.add("b", [rec(50.0), rec(51.0)], now=100.0)
    assert [r.ts for r in w.records() if r.logged_by == "a"] == [float(t) for t in range(3, 10)]
    assert len(w) == 9


def test_expiry_drops_what_the_clock_moved_past() -> None:
    w = RequestWindow(max_records=10, window_s=10.0, max_ahead_s=60.0)
    w.add("a", [rec(95.0), rec(99.0)], now=100.0)
    w.add("b", [rec(96.0)], now=100.0)
    w.expire(now=106.5)
    assert [r.ts for r in w.records()] == [99.0] and len(w) == 1
    w.expire(now=200.0)
    assert w.records() == () and len(w) == 0


@given(st.lists(st.integers(0, 500), max_size=12), st.integers(0, 2000))
def test_the_fair_cap_is_the_largest_that_fits(lengths: list[int], total: int) -> None:
    lengths.sort()
    cap = fair_cap(lengths, total)
    assert sum(min(n, cap) for n in lengths) <= total
    if lengths and cap < lengths[-1]:
        assert sum(min(n, cap + 1) for n in lengths) > total  # one more each would not fit


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 300)), max_size=40), st.integers(1, 200))
def test_the_window_never_holds_more_than_its_bound(pages: list[tuple[str, int]], bound: int) -> None:
    w = RequestWindow(max_records=bound, window_s=600.0, max_ahead_s=60.0)
    for node, n in pages:
        w.add(node, [rec(99.0)] * n, now=100.0)
        assert len(w) == len(w.records()) <= bound


def test_more_logging_nodes_than_records_still_fill_the_window() -> None:
    w = RequestWindow(max_records=10, window_s=600.0, max_ahead_s=60.0)
    for i in range(20):
        w.add(f"n{i}", [rec(99.0)], now=100.0)
        assert len(w) == len(w.records()) == min(i + 1, 10)
