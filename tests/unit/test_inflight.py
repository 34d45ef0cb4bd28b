"""The proxy's in-flight table (agent/serving/inflight.py): counts per upstream, bounded, stale requests dropped."""

from __future__ import annotations

from agent.serving.inflight import InFlight


def test_counts_follow_begin_and_end_and_end_is_idempotent() -> None:
    table = InFlight()
    a1, a2 = table.begin("http://a", 0.0), table.begin("http://a", 0.1)
    b1 = table.begin("http://b", 0.2)
    assert table.counts(1.0) == {"http://a": 2, "http://b": 1}
    table.end(a1)
    table.end(a1)
    table.end(None)
    assert table.counts(1.0) == {"http://a": 1, "http://b": 1}
    table.end(a2)
    table.end(b1)
    assert table.counts(1.0) == {} and len(table) == 0


def test_the_table_is_bounded_and_a_full_table_counts_nothing_more() -> None:
    table = InFlight(max_tracked=3, stale_s=60.0)
    tokens = [table.begin(f"http://s{i % 2}", 0.0) for i in range(5)]
    assert tokens[3] is None and tokens[4] is None and table.dropped == 2
    assert len(table) == 3 and sum(table.counts(1.0).values()) == 3
    table.end(tokens[0])
    assert table.begin("http://s9", 2.0) is not None and len(table) == 3


def test_a_request_open_past_the_stale_limit_stops_counting() -> None:
    table = InFlight(max_tracked=2, stale_s=10.0)
    table.begin("http://a", 0.0)
    table.begin("http://a", 5.0)
    assert table.counts(9.0) == {"http://a": 2}
    assert table.counts(12.0) == {"http://a": 1}  # the first leaked: it no longer pins the endpoint as busy
    assert table.begin("http://b", 16.0) is not None  # a full table makes room by pruning what went stale
    assert table.counts(16.0) == {"http://b": 1}
