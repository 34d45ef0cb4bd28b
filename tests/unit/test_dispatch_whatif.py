"""solver/dispatch_whatif.py: the what-if endpoint choices see what they claim and choose as they claim
(bench/dispatch_study.py's table of issue 16's p99 clause rests on them)."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from bench.dispatch_study import cell, parse_info
from bench.p99_audit import AllLive
from peerserve.dispatch import expected_finish_ms
from solver.agent_sim import AgentDispatch
from solver.api import solve
from solver.dispatch_whatif import WhatIfDispatch, what_if
from solver.workload import Workload, _arrivals, lab_snapshot, simulate_plan

SMALL = Workload(clients=12, sites=3, rate=20.0, duration_s=6.0)

# two nodes, one instance each; every site's plan shares 0.5 / 0.5; the client nearer n1
DETAILS = {"spread": [{"model": "m", "rtt_ms": {"n1": 1.0, "n2": 5.0}, "shares": {"n1": 0.5, "n2": 0.5}}]}


def dispatch(cls: type[WhatIfDispatch], n: int = 8, clients: int = 1) -> WhatIfDispatch:
    rtt = np.tile([1.0, 5.0], (clients, 1))
    return cls(DETAILS, ["n1", "n2"], [1, 1], rtt, np.zeros(n, dtype=np.int64), 3.0, np.full(n, 0.1), np.full(n, 0.9))


def test_expected_finish_waits_for_a_slot_behind_the_queue() -> None:
    assert expected_finish_ms(2.0, 0.0, 3.0, 1) == 5.0
    assert expected_finish_ms(2.0, 3.0, 3.0, 1) == 14.0  # three ahead, then its own
    assert expected_finish_ms(2.0, 1.0, 3.0, 2) == 5.0  # a free slot
    assert expected_finish_ms(2.0, 3.0, 3.0, 2) == 8.0  # 2 slots busy, 1 waiting: 2 departures, 1 service time


def test_unknown_rules_information_and_periods_are_refused() -> None:
    for args in (("fastest", "own"), ("p2c", "psychic"), ("p2c", "own", -1.0), ("p2c", "own", 0.0, 0)):
        with pytest.raises(ValueError):
            what_if(*args)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_info("psychic:1")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_info("gossip:soon")
    assert parse_info("gossip:0.1") == ("gossip", 0.1) and parse_info("own") == ("own", 0.0)


@pytest.mark.parametrize("w", [SMALL, dataclasses.replace(SMALL, rate=8.0, cores=2.0, concurrency=2, throughput=50.0)])
def test_p2c_on_own_counts_is_todays_agent_and_exact_gossip_is_every_agents_count(w: Workload) -> None:
    """The what-ifs reproduce the simulation's agent and the audit's all_live bit for bit; with no delay the
    server's report and the gossip see the same exact queue."""
    snap, rtt = lab_snapshot(w)
    arrivals = _arrivals(w)
    plan = solve(snap, method="ipopt", mode="2", objective="queue-p99")

    def run(cls: type[AgentDispatch]) -> float:
        return simulate_plan("q", plan, w, rtt, arrivals, cls).p99_ms

    assert run(what_if("p2c", "own")) == run(AgentDispatch)
    assert run(what_if("p2c", "gossip")) == run(AllLive) == run(what_if("p2c", "server"))


def test_gossip_sees_its_own_exactly_and_the_others_as_of_the_last_round() -> None:
    d = dispatch(what_if("jsq", "gossip", 0.5), clients=3)
    d.live = [{"n1/00000": 2}, {"n1/00000": 1, "n2/00000": 4}, {}]
    d._round(0.0)
    d.live[1]["n1/00000"] = 7  # after the round: agent 0 does not see it yet
    d.live[0]["n2/00000"] = 1  # its own: seen at once
    assert d.view(0) == {"n1/00000": 3, "n2/00000": 5}
    d._round(0.4)  # no round due before 0.5
    assert d.view(0)["n1/00000"] == 3
    d._round(0.5)
    assert d.view(0) == {"n1/00000": 9, "n2/00000": 5}
    assert d.rounds == 2 and d.next_round == 1.0


def test_the_servers_report_counts_every_agent_plus_what_this_one_sent_since() -> None:
    d = dispatch(what_if("jsq", "server", 1.0), clients=2)
    d.live = [{"n1/00000": 2}, {"n2/00000": 1}]
    d._round(0.0)
    d.live = [{}, {}]  # every one left since the report: the report still says so
    assert d.view(0) == {"n1/00000": 2, "n2/00000": 1}
    k = d.choose(0, 0.2)  # n2's 1 < n1's 2: jsq sends it to n2, which this agent adds
    assert d.endpoints[k][1] == "n2/00000"
    assert d.view(0) == {"n1/00000": 2, "n2/00000": 2}


def test_each_rule_picks_as_documented() -> None:

    def urls(d: AgentDispatch, n: int) -> list[str]:
        return [d.endpoints[d.choose(i, 0.0)][1] for i in range(n)]

    jsq = dispatch(what_if("jsq", "own"))
    assert urls(jsq, 4) == ["n1/00000", "n2/00000", "n1/00000", "n2/00000"]  # ties to the better ranked
    lef = dispatch(what_if("lef", "own"))  # n1: 1 + 3 (q + 1); n2: 5 + 3: two on n1 before one on n2
    assert urls(lef, 4) == ["n1/00000", "n1/00000", "n2/00000", "n1/00000"]
    p2c_lef = dispatch(what_if("p2c-lef", "own"))  # draws 0.1 -> n1, 0.9 -> n2: the lower finish of those two
    assert urls(p2c_lef, 3) == ["n1/00000", "n1/00000", "n2/00000"]
    only_n2 = {"spread": [{"model": "m", "rtt_ms": {"n1": 1.0, "n2": 5.0}, "shares": {"n2": 1.0}}]}
    for rule, want in (("lef", "n2/00000"), ("lef-any", "n1/00000")):  # lef-any leaves the plan's instances
        one = what_if(rule, "own")(
            only_n2, ["n1", "n2"], [1, 1], np.array([[1.0, 5.0]]), np.zeros(1, int), 3.0, np.zeros(1)
        )
        assert urls(one, 1) == [want]


def test_the_study_reports_todays_ratio_and_each_what_if() -> None:
    row = cell(SMALL, ["p2c", "lef"], [("own", 0.0), ("gossip", 0.1)], same_rule=True)
    assert set(row["ratios"]) == {"p2c own:0", "p2c gossip:0.1", "lef own:0", "lef gossip:0.1"}
    assert row["ratios"]["p2c own:0"]["vs_today"] == row["today_ratio"]  # today's rule: today's figure
    assert all(v["p99_ms"] > 0 and v["vs_same"] > 0 for v in row["ratios"].values())


def test_a_reply_carries_the_servers_queue_as_the_response_leaves_it() -> None:
    d = dispatch(what_if("jsq", "reply"), clients=2)
    first = d.choose(0, 0.0)  # nothing known: n1 (ties to the better ranked)
    d.live[1]["n1/00000"] = 3  # another agent's requests there, unknown to agent 0 so far
    assert d.view(0) == {"n1/00000": 1}
    d.choose(1, 0.0)  # jsq on {n1: 1}: n2
    d.done(0, first, 0.01, 10.0)  # the reply from n1 says 3 left there (the other agent's)
    assert d.view(0) == {"n1/00000": 3, "n2/00000": 1}


def test_p2c_lef_any_draws_its_second_choice_among_every_instance() -> None:
    only_n2 = {"spread": [{"model": "m", "rtt_ms": {"n1": 1.0, "n2": 5.0}, "shares": {"n2": 1.0}}]}
    rtt, client = np.array([[1.0, 5.0]]), np.zeros(2, int)
    # request 0: second draw 0.1 falls on n1 (nearer, idle): taken; request 1: 0.9 on n2, the plan's, as the first
    d = what_if("p2c-lef-any", "own")(
        only_n2, ["n1", "n2"], [1, 1], rtt, client, 3.0, np.zeros(2), np.array([0.1, 0.9])
    )
    assert [d.endpoints[d.choose(i, 0.0)][1] for i in range(2)] == ["n1/00000", "n2/00000"]
    plain = what_if("p2c-lef", "own")(
        only_n2, ["n1", "n2"], [1, 1], rtt, client, 3.0, np.zeros(2), np.array([0.1, 0.9])
    )
    assert [plain.endpoints[plain.choose(i, 0.0)][1] for i in range(2)] == ["n2/00000", "n2/00000"]
