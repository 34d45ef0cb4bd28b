"""The endpoint rule ``lef`` (peerserve/dispatch.py, issue 16 targets 2 and 5c): the least expected finish among
every ready endpoint of the model, on this agent's own requests in flight, the catalogue's service time and the
node's slots; the plan's shares where no endpoint has a service time. The pure rule, the agent's path to it
(agent/decisions.py, settings, catalogue), and the simulation's replay of it (solver/agent_sim.py) against the
dispatch study's ``lef-any`` on own counts (solver/dispatch_whatif.py)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalogue import ModelSpec
from agent.decisions import Candidate, rank_endpoints, spread_ranked
from agent.errors import ConfigError
from agent.settings import load_settings
from bench.p99_audit import LABS
from peerserve.dispatch import (
    MAX_SLOTS,
    RULES,
    Finish,
    choose_endpoint,
    expected_finish_ms,
    least_finish,
    node_slots,
    serving_mask,
)
from solver.agent_sim import AgentDispatch, event_sojourn_ms
from solver.api import solve
from solver.dispatch_whatif import what_if
from solver.workload import PLACEMENTS, Workload, _arrivals, lab_snapshot, simulate_plan

BAD = (math.nan, math.inf, -math.inf)


def brute(endpoints: list[tuple[str, str]], finish: list[Finish], live: dict[str, float], idle: dict[str, int]) -> Any:
    """The rule written out the slow way: every endpoint's finish, the invalid ones dropped, the first least."""
    mask = serving_mask(endpoints, idle)
    scored = []
    for e, ((_, url), f) in enumerate(zip(endpoints, finish, strict=True)):
        q = live.get(url, 0.0)
        ok = (
            mask[e]
            and f.service_ms is not None
            and 0 < f.service_ms < math.inf
            and 1 <= f.slots <= MAX_SLOTS
            and 0 <= f.rtt_ms < math.inf
            and math.isfinite(q)
        )
        if ok:
            assert f.service_ms is not None
            t = f.rtt_ms + (max(0.0, max(0.0, q) + 1 - f.slots) / f.slots + 1) * f.service_ms
            if math.isfinite(t):
                scored.append((t, e))
    return min(scored)[1] if scored else None


def test_expected_finish_counts_slots_and_the_wait() -> None:
    assert expected_finish_ms(2.0, 0.0, 3.0, 1) == 5.0
    assert expected_finish_ms(2.0, 3.0, 3.0, 1) == 14.0  # three ahead, then its own
    assert expected_finish_ms(2.0, 1.0, 3.0, 2) == 5.0  # a free slot: no wait
    assert expected_finish_ms(2.0, 3.0, 3.0, 2) == 8.0  # 2 busy, 1 waiting: (3 + 1 - 2) / 2 service times


def test_lef_leaves_the_nearer_instance_once_its_own_queue_makes_the_farther_finish_first() -> None:
    eps = [("a", "a1"), ("b", "b1")]
    fin = [Finish(1.0, 3.0, 1.0), Finish(4.0, 3.0, 1.0)]
    assert least_finish(eps, fin, {}) == 0  # 4 < 7
    assert least_finish(eps, fin, {"a1": 1}) == 0  # 7 = 7: a tie keeps the ranking
    assert least_finish(eps, fin, {"a1": 2}) == 1  # 10 > 7
    assert least_finish(eps, fin, {"a1": 2, "b1": 1}) == 0  # 10 = 10
    two = [Finish(1.0, 3.0, 2.0), Finish(4.0, 3.0, 1.0)]  # a has 2 slots: its second request waits for nothing
    assert least_finish(eps, two, {"a1": 1}) == 0
    assert least_finish(eps, two, {"a1": 2}) == 0  # 1 + 1.5 x 3 = 5.5 < 7
    assert least_finish(eps, two, {"a1": 3}) == 0  # 1 + (3 + 1 - 2) / 2 x 3 + 3 = 7 = 7: a tie
    assert least_finish(eps, two, {"a1": 4}) == 1  # 8.5 > 7


def test_lef_ties_go_to_the_ranking() -> None:
    eps = [("a", "a1"), ("a", "a2"), ("b", "b1")]
    fin = [Finish(2.0, 3.0, 1.0)] * 2 + [Finish(2.0, 3.0, 1.0)]
    assert least_finish(eps, fin, {}) == 0
    assert least_finish(eps, fin, {"a1": 1}) == 1
    assert least_finish(eps, fin, {"a1": 1, "a2": 1}) == 2
    assert least_finish(eps, fin, {"a1": 1, "a2": 1, "b1": 1}) == 0


def test_lef_ignores_the_plans_shares_but_not_its_idle_instances() -> None:
    """Every ready endpoint is a candidate, a node without a share too; the plan's ``idle_running`` ones (the
    last of their node's in rank order, kept without traffic) are not, whatever their finish."""
    eps = [("a", "a1"), ("a", "a2"), ("b", "b1")]
    fin = [Finish(1.0, 3.0, 1.0), Finish(1.0, 3.0, 1.0), Finish(9.0, 3.0, 1.0)]
    shares = {"a": 1.0}
    live = {"a1": 3}
    assert choose_endpoint(eps, shares, {}, live, (0.5, 0.5), "lef", None, fin) == 1
    assert choose_endpoint(eps, shares, {}, live, (0.5, 0.5), "lef", {"a": 1}, fin) == 2  # a2 idle: b1 (12 < 13)
    assert choose_endpoint(eps, shares, {}, {"a1": 2}, (0.5, 0.5), "lef", {"a": 1}, fin) == 0  # 10 < 12
    assert serving_mask(eps, {"a": 1}) == [True, False, True]
    assert serving_mask(eps, {"a": 5, "b": 0, "zz": 3}) == [False, False, True]  # every one of a idle: none serves
    assert serving_mask(eps, {"a": -2}) == [True, True, True]
    # every candidate idle: the shares decide as p2c would (a's share over its one serving endpoint, max(1, ...))
    assert choose_endpoint(eps, shares, {}, {}, (0.5, 0.5), "lef", {"a": 2, "b": 1}, fin) == choose_endpoint(
        eps, shares, {}, {}, (0.5, 0.5), "p2c", {"a": 2, "b": 1}
    )


def test_without_a_service_time_the_plans_shares_decide_as_under_p2c() -> None:
    eps = [("a", "a1"), ("b", "b1"), ("c", "c1")]
    shares = {"a": 0.2, "b": 0.5, "c": 0.3}
    planned = {"a": 1.0, "b": 0.0, "c": 2.0}
    live = {"a1": 1, "b1": 4}
    none = [Finish(1.0, None, 1.0)] * 3
    for u, u2 in itertools.product([i / 20 + 0.025 for i in range(20)], repeat=2):
        p2c = choose_endpoint(eps, shares, planned, live, (u, u2), "p2c")
        assert choose_endpoint(eps, shares, planned, live, (u, u2), "lef", None, none) == p2c
        assert choose_endpoint(eps, shares, planned, live, (u, u2), "lef") == p2c  # no inputs at all
    # no plan either: no choice, the ranking stands
    assert choose_endpoint(eps, {}, None, live, (0.5, 0.5), "lef", None, none) is None
    # one endpoint with a service time is enough: lef over it alone
    some = [Finish(1.0, None, 1.0), Finish(50.0, 3.0, 1.0), Finish(1.0, 0.0, 1.0)]  # 0 ms: no figure
    assert choose_endpoint(eps, shares, planned, live, (0.01, 0.01), "lef", None, some) == 1


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", ["rtt_ms", "service_ms", "slots", "queue"])
def test_nan_and_inf_inputs_are_never_chosen(field: str, bad: float) -> None:
    eps = [("a", "a1"), ("b", "b1")]
    good = Finish(30.0, 3.0, 1.0)
    a = Finish(0.0, 1.0, 1.0)  # far better than b, but for the bad input
    live: dict[str, float] = {}
    if field == "queue":
        live = {"a1": bad}
    else:
        a = dataclasses.replace(a, **{field: bad})
    assert least_finish(eps, [a, good], live) == 1
    assert least_finish(eps[:1], [a], live) is None
    # nothing usable left: the shares rule
    assert choose_endpoint(eps[:1], {"a": 1.0}, None, {}, (0.5, 0.5), "lef", None, [a]) == 0


def test_out_of_range_inputs_are_never_chosen_and_a_mismatch_is_an_error() -> None:
    eps = [("a", "a1"), ("b", "b1")]
    good = Finish(30.0, 3.0, 1.0)
    for a in (Finish(-1.0, 1.0, 1.0), Finish(0.0, -1.0, 1.0), Finish(0.0, 1.0, 0.5), Finish(0.0, 1.0, MAX_SLOTS * 2)):
        assert least_finish(eps, [a, good], {}) == 1, a
    assert least_finish(eps, [Finish(0.0, 1.0, 1.0), good], {"a1": -5}) == 0  # a negative count reads 0
    with pytest.raises(ValueError, match="2 finish inputs for 1 endpoints"):
        least_finish(eps[:1], [good, good], {})
    with pytest.raises(ValueError, match="unknown endpoint rule"):
        choose_endpoint(eps, {}, None, {}, (0.5, 0.5), "LEF")


def test_huge_in_flight_counts_stay_finite_or_drop_out() -> None:
    eps = [("a", "a1"), ("b", "b1")]
    fin = [Finish(1.0, 3.0, 1.0), Finish(2.0, 3.0, 1.0)]
    assert least_finish(eps, fin, {"a1": 10**9}) == 1
    assert least_finish(eps, fin, {"a1": 10**9, "b1": 10**9 + 1}) == 0
    assert least_finish(eps, fin, {"a1": 1e308, "b1": 1e308}) is None  # both overflow to inf: neither
    assert least_finish(eps, fin, {"a1": 1e308}) == 1
    assert least_finish(eps, fin, {"a1": 1e300, "b1": 1e300}) == 0  # both 3e300 in floats: a tie
    assert least_finish(eps, fin, {"a1": 10**400}) == 1  # an int past any float: not a count, never chosen
    assert least_finish(eps, fin, {"a1": 10**400, "b1": 10**400}) is None


finish_values = st.builds(
    Finish,
    st.one_of(st.floats(min_value=-5, max_value=200), st.sampled_from(BAD)),
    st.one_of(st.none(), st.floats(min_value=-1, max_value=100), st.sampled_from(BAD)),
    st.one_of(st.integers(0, 8).map(float), st.floats(min_value=0, max_value=2000), st.sampled_from(BAD)),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), finish_values, st.one_of(st.integers(-2, 20), st.sampled_from(BAD))),
        max_size=8,
    ),
    st.dictionaries(st.sampled_from("abcd"), st.integers(-1, 4), max_size=4),
)
def test_lef_is_the_least_valid_finish_first_of_equals(rows: list[Any], idle: dict[str, int]) -> None:
    eps = [(node, f"{node}{i}") for i, (node, _, _) in enumerate(rows)]
    fin = [f for _, f, _ in rows]
    live = {url: float(q) for (_, url), (_, _, q) in zip(eps, rows, strict=True)}
    got = least_finish(eps, fin, live, idle)
    assert got == brute(eps, fin, live, idle)
    if got is not None:
        f = fin[got]
        assert f.service_ms is not None and math.isfinite(f.rtt_ms) and math.isfinite(f.service_ms)
        assert math.isfinite(live[eps[got][1]]) and 1 <= f.slots <= MAX_SLOTS


def test_the_summarys_slots_are_read_within_bounds() -> None:
    raw = {"slots": {"a": 2, "b": 1.5, "c": 0, "d": True, "e": "4", "f": 1e9, "g": math.nan, "h": 1024}}
    assert node_slots(raw) == {"a": 2.0, "b": 1.5, "h": 1024.0}
    assert node_slots(None) == {} and node_slots({"slots": [1, 2]}) == {} and node_slots({}) == {}


# -- the agent's path ---------------------------------------------------------------------------------------------


def test_the_setting_accepts_lef_and_refuses_what_it_does_not_know() -> None:
    assert "lef" in RULES
    assert load_settings(None, overrides={"endpoint_rule": "lef"}).endpoint_rule == "lef"
    with pytest.raises(ConfigError, match="choose p2c, weighted, lef"):
        load_settings(None, overrides={"endpoint_rule": "least"})


def test_the_catalogues_service_time_is_the_placements() -> None:
    spec = ModelSpec("m", "img", "", "", 1, 10.0, 1.0, {"default": 3.0, "nano": 12.0}, throughput_rps={"orin": 500.0})
    assert spec.service_ms("orin") == 2.0  # 1000 / the declared throughput
    assert spec.service_ms("nano") == 12.0  # exec_ms where no throughput is declared
    assert spec.service_ms("other") == 3.0  # the default class's
    assert ModelSpec("m", "img", "", "", 1, 10.0, 1.0, {}).service_ms("x") is None
    assert ModelSpec("m", "img", "", "", 1, 10.0, 1.0, {"default": 0.0}).service_ms("x") is None


def cand(node: str, url: str, measured: float, service: float | None) -> Candidate:
    return Candidate(node, url, "m", measured, 10.0, service)


def test_the_agent_weighs_the_catalogue_not_the_measured_time_and_slots_by_node() -> None:
    """The measured server time includes the wait: a node whose server looked slow (40 ms measured) is still
    chosen by lef when its catalogue service time and queue say it finishes first; p2c without a plan keeps
    the ranking (by the measured time)."""
    cs = [cand("a", "a1", 40.0, 3.0), cand("b", "b1", 3.0, 3.0)]
    rtts = {"a": 1.0, "b": 5.0}
    ranked = rank_endpoints(cs, rtts)
    assert [c.candidate.url for c in ranked] == ["b1", "a1"]
    lef = spread_ranked(ranked, None, "m", rtts, 0.5, {}, 0.5, "lef")
    assert [c.candidate.url for c in lef] == ["a1", "b1"]  # 1 + 3 < 5 + 3
    assert [c.candidate.url for c in spread_ranked(ranked, None, "m", rtts, 0.5, {}, 0.5, "p2c")] == ["b1", "a1"]
    assert spread_ranked(ranked, None, "m", rtts, 0.5, {"a1": 1}, 0.5, "lef")[0].candidate.url == "a1"  # 7 < 8
    assert spread_ranked(ranked, None, "m", rtts, 0.5, {"a1": 2}, 0.5, "lef")[0].candidate.url == "b1"  # 10 > 8
    # with 2 slots on a (the leader's summary): 1 + (2 + 1 - 2) / 2 x 3 + 3 = 5.5 < 8
    summary = {"slots": {"a": 2}}
    assert spread_ranked(ranked, summary, "m", rtts, 0.5, {"a1": 2}, 0.5, "lef")[0].candidate.url == "a1"
    # this node's own figure over the summary's: one slot, 10 > 8
    got = spread_ranked(ranked, summary, "m", rtts, 0.5, {"a1": 2}, 0.5, "lef", ("a", 1.0))
    assert got[0].candidate.url == "b1"


def test_an_unmeasured_rtt_is_the_rankings_default() -> None:
    """A node the client reported no RTT to counts the ranking's UNKNOWN_RTT_MS (a LAN hop), in lef as in the
    ranking: here it beats a measured 5 ms until its queue says otherwise."""
    cs = [cand("a", "a1", 3.0, 3.0), cand("b", "b1", 3.0, 3.0)]
    rtts = {"b": 5.0}
    ranked = rank_endpoints(cs, rtts)
    assert ranked[0].candidate.url == "a1" and not ranked[0].rtt_measured
    assert spread_ranked(ranked, None, "m", rtts, 0.5, {}, 0.5, "lef")[0].candidate.url == "a1"
    assert spread_ranked(ranked, None, "m", rtts, 0.5, {"a1": 2}, 0.5, "lef")[0].candidate.url == "b1"


def test_candidates_without_a_service_time_fall_back_to_the_plan() -> None:
    cs = [cand("a", "a1", 3.0, None), cand("b", "b1", 3.0, None)]
    rtts = {"a": 1.0, "b": 5.0}
    ranked = rank_endpoints(cs, rtts)
    plan = {"spread": [{"model": "m", "rtt_ms": {"a": 1.0, "b": 5.0}, "shares": {"b": 1.0}}]}
    for u in (0.1, 0.5, 0.9):
        assert spread_ranked(ranked, plan, "m", rtts, u, {}, u, "lef")[0].candidate.url == "b1"
    assert spread_ranked(ranked, None, "m", rtts, 0.5, {"a1": 9}, 0.5, "lef") == ranked


# -- the simulation --------------------------------------------------------------------------------------------------


def lab_cells() -> list[tuple[str, Workload]]:
    out = []
    for lab, (base, services, rates) in LABS.items():
        for service in services:
            w = dataclasses.replace(base, service=service, rate=rates[1], duration_s=6.0)
            out.append((f"{lab}-{service}", w))
    return out


@pytest.mark.parametrize(("name", "w"), lab_cells(), ids=[n for n, _ in lab_cells()])
def test_the_simulated_agent_under_lef_is_the_studys_lef_any_on_own_counts_bit_for_bit(name: str, w: Workload) -> None:
    """solver/agent_sim.py replays the agent's lef (peerserve.dispatch.least_finish through choose_endpoint);
    solver/dispatch_whatif.py's ``lef-any`` on own counts is the study's own loop. Same latencies, every one."""
    snap, rtt = lab_snapshot(w)
    arrivals = _arrivals(w)
    plan = solve(snap, method=PLACEMENTS["queue-p99"][0], mode="2", objective="queue-p99")
    slots = max(1, w.concurrency)
    agent = simulate_plan("queue-p99", plan, dataclasses.replace(w, endpoint_rule="lef"), rtt, arrivals)
    study = simulate_plan("queue-p99", plan, w, rtt, arrivals, what_if("lef-any", "own", 0.0, slots))
    p2c = simulate_plan("queue-p99", plan, w, rtt, arrivals)
    assert agent == study
    assert agent != p2c  # the rule changed something


def test_entry_agents_that_see_only_their_own_requests_do_not_all_pile_on_the_nearest_instance() -> None:
    """Three entry agents (sites nearest n2, n3, n4, which run nothing), one instance on n1 and one on n5; every
    site is 1 ms from n1 and 4 ms from n5, and the plan sends everything to n1. 150 req/s against 100 req/s an
    instance: the plan's way (p2c follows it) overloads n1. Under lef each agent leaves n1 once its OWN requests
    there make n5 finish first: both keep short queues, though no agent sees another's requests."""
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    rtt = np.array([[1.0, 0.5, 9.0, 9.0, 4.0], [1.0, 9.0, 0.5, 9.0, 4.0], [1.0, 9.0, 9.0, 0.5, 4.0]])
    rng = np.random.default_rng(7)
    n = 9000
    t = np.sort(rng.uniform(0.0, 60.0, n))
    client = rng.integers(0, 3, n)
    work = rng.exponential(0.010, n)
    plan = {
        "spread": [
            {"model": "m", "rtt_ms": dict(zip(nodes, row.tolist(), strict=True)), "shares": {"n1": 1.0}} for row in rtt
        ]
    }
    started = [1, 0, 0, 0, 1]
    node_of = np.array([0, 1])  # instance 0 on n1, instance 1 on n5 (event_sojourn_ms's nodes: just the two)
    cores = np.full(2, np.inf)
    out = {}
    for rule in ("p2c", "lef"):
        d = AgentDispatch(plan, nodes, started, rtt, client, 10.0, rng.random(n), rng.random(n), endpoint_rule=rule)
        where, sojourn = event_sojourn_ms(t, work, d, node_of, cores)
        assert len(set(d.agent)) == 3  # three entry agents, each counting only its own
        out[rule] = (Counter(where.tolist()), float(np.percentile(sojourn, 99)))
    assert out["p2c"][0] == {0: n}  # the plan's way: all on n1, a queue growing all minute
    counts, p99 = out["lef"]
    assert 0.35 < counts[0] / n < 0.8 and 0.2 < counts[1] / n < 0.65, counts
    assert p99 < 0.05 * out["p2c"][1], (p99, out["p2c"][1])
    assert p99 < 150.0  # 10 ms service: a short queue, not a minute's backlog


def test_simulate_workload_takes_the_rule_and_refuses_an_unknown_one() -> None:
    assert Workload(endpoint_rule="lef").check() is None
    assert "endpoint rule must be one of p2c, weighted, lef" in (Workload(endpoint_rule="x").check() or "")
    with pytest.raises(ValueError, match="slot counts"):
        AgentDispatch({}, ["n1"], [1], np.zeros((1, 1)), np.zeros(0, np.int64), 1.0, np.zeros(0), slots=[1.0, 2.0])


def test_the_agent_under_lef_leaves_the_plans_idle_running_instances_alone() -> None:
    """Mode 1 past the instance bound keeps instances running without traffic (``idle_running``); lef chooses
    among every other ready instance, a node without a share included, and never the idle ones, however
    short their queue: the plan still decides which instances serve (here a1 serves, a2 is idle)."""
    cs = [cand("a", "a1", 3.0, 3.0), cand("a", "a2", 3.0, 3.0), cand("b", "b1", 3.0, 3.0)]
    rtts = {"a": 1.0, "b": 20.0}
    ranked = rank_endpoints(cs, rtts)
    plan = {
        "spread": [{"model": "m", "rtt_ms": {"a": 1.0, "b": 20.0}, "shares": {"a": 1.0}}],
        "idle_running": {"a": {"m": 1}},
    }
    firsts = Counter(
        spread_ranked(ranked, plan, "m", rtts, u, {"a1": q}, u, "lef")[0].candidate.url
        for q in range(12)
        for u in (0.1, 0.9)
    )
    assert firsts["a2"] == 0
    assert firsts["a1"] == 2 * 7 and firsts["b1"] == 2 * 5  # a1 while 1 + (q + 1) x 3 <= 23: q <= 6
    without = {k: v for k, v in plan.items() if k != "idle_running"}
    assert spread_ranked(ranked, without, "m", rtts, 0.5, {"a1": 1}, 0.5, "lef")[0].candidate.url == "a2"
