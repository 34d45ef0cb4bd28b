"""Per-sender token buckets (agent/rate_limit.py): burst, refill, independence of senders, the table's bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.rate_limit import SenderBuckets


def test_a_burst_then_the_rate() -> None:
    b = SenderBuckets(rate=10.0, burst=20)
    assert all(b.allow("m", 0.0) for _ in range(20))
    assert not b.allow("m", 0.0) and b.refused == 1
    assert b.allow("m", 0.1) and not b.allow("m", 0.1)  # 0.1 s at 10/s: one more
    assert all(b.allow("m", 10.0) for _ in range(20))  # refilled to the burst, no further


def test_senders_do_not_share_a_bucket() -> None:
    b = SenderBuckets(rate=1.0, burst=2)
    assert b.allow("a", 0.0) and b.allow("a", 0.0) and not b.allow("a", 0.0)
    assert b.allow("b", 0.0)


def test_the_table_is_bounded() -> None:
    b = SenderBuckets(rate=1.0, burst=1, max_senders=8)
    for i in range(100):
        b.allow(f"s{i}", 0.0)
    assert len(b) == 8


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        SenderBuckets(rate=0.0, burst=1)


@given(st.lists(st.floats(0.0, 0.5), min_size=1, max_size=300))
def test_never_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    b = SenderBuckets(rate=5.0, burst=10)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += b.allow("m", now)
    assert allowed <= 10 + 5.0 * now + 1e-9


def test_wait_says_when_a_token_is_back_without_spending_one() -> None:
    b = SenderBuckets(0.5, 1)
    assert b.wait("a", 0.0) == 0.0  # unknown: full
    assert b.allow("a", 0.0)
    assert b.wait("a", 0.0) == pytest.approx(2.0)
    assert b.wait("a", 1.5) == pytest.approx(0.5)
    assert b.wait("a", 1.5) == pytest.approx(0.5)  # asking spends nothing
    assert b.allow("a", 2.0)
