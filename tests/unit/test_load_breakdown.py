"""The load bench's per-request breakdown (bench/load_breakdown.py) and its Server-Timing parser."""

from __future__ import annotations

import pytest

from bench.load_breakdown import STAGES, breakdown, format_breakdown, stages
from bench.load_gen import Sample, parse_server_timing


def sample(latency: float, at: float = 0.0, node: str = "node0", site: int = 0, late: float = 0.0) -> Sample:
    """A request whose server took 0.5 ms (0.2 of it the model), the agent 2 ms more, the site RTT 1 ms."""
    agent = latency - 1.0 - 3.0  # the client side took 3 ms
    timing = {"agent": agent, "upstream": agent - 2.0, "server": 0.5, "exec": 0.2, "agent-gc": 0.0, "server-gc": 0.1}
    return Sample(at, 1000.0 + at, latency, 1.0, late, True, "", site, node, timing)


def test_server_timing_entries_are_read_and_junk_is_skipped() -> None:
    assert parse_server_timing("server;dur=1.5, exec;dur=0.25, agent;dur=3;desc=x, upstream;dur=2") == {
        "server": 1.5,
        "exec": 0.25,
        "agent": 3.0,
        "upstream": 2.0,
    }
    assert parse_server_timing("") == {}
    assert parse_server_timing("cache, ;dur=4, x;dur=abc, y;desc=1") == {}


def test_the_stages_add_up_to_the_latency() -> None:
    x = sample(40.0, late=7.0)
    st = stages(x)
    assert st is not None
    want = {"late": 7.0, "client": 3.0, "agent": 2.0, "transit": 34.0 - 0.5, "server": 0.3, "exec": 0.2, "rtt": 1.0,
            "gc": 0.1}  # fmt: skip
    assert st == pytest.approx(want)
    assert sum(v for k, v in st.items() if k not in ("late", "gc")) == pytest.approx(x.latency_ms)
    assert stages(Sample(0.0, 0.0, 5.0, 1.0, 0.0, True, "", 0, "node0", {"server": 1.0})) is None


def test_the_slow_one_percent_is_found_and_described() -> None:
    fast = [sample(10.0, at=float(i % 30), node="node0", site=0) for i in range(990)]
    slow = [sample(300.0 + i, at=12.5, node="node1", site=0, late=50.0) for i in range(10)]
    b = breakdown([*fast, *slow], {0: "node0"}, leader="node0", rounds=[1012.8, 1020.0])
    assert b is not None
    assert b.requests == 1000 and b.tail_requests == 10
    assert b.tail_by_node == {"node1": 10} and b.tail_off_site == 10
    assert b.tail_via_leader == 10 and b.via_leader_share == 1.0  # site 0 goes through node0's agent, the leader
    assert b.tail_near_round == 10  # all ended 0.3 s before the round at 1012.8 finished its solve
    assert b.near_round_share == pytest.approx((10 + 4 * 33) / 1000)  # the fast ones at seconds 12, 13, 19, 20
    assert (b.tail_seconds, b.tail_max_in_second) == (1, 10)  # one burst, not spread out
    assert b.tail_mean["transit"] > 250 and b.tail_mean["client"] == pytest.approx(3.0)
    assert b.p50["transit"] == pytest.approx(10.0 - 4.0 - 2.0 - 0.5)  # the fast ones' exchange, less the server
    assert b.scheduled_p99_ms > b.tail_from_ms  # the generator was late for the slow ones: the schedule's p99 is higher
    lines = format_breakdown("queue-p99", b)
    assert lines[1].split() == ["stage", *STAGES] and "10 requests in 1 distinct seconds" in lines[-1]


def test_failed_and_untimed_requests_are_left_out() -> None:
    failed = Sample(0.0, 0.0, 5.0, 1.0, 0.0, False, "HTTP 502", 0, "", {})
    assert breakdown([failed], {0: "node0"}) is None
    b = breakdown([failed, sample(10.0)], {0: "node0"})
    assert b is not None and b.requests == 1
