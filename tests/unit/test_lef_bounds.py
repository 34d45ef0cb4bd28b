"""review20c's findings on the endpoint rule ``lef`` (peerserve/dispatch.py), each fixed and checked here:

* M1: the summary's ``slots`` map is parsed only for ``lef`` (p2c, the default, never reads it), and the agent
  parses it once per summary (NodeAgent.last_placement's setter), not on each request;
* M2: the leader publishes a member's slots bounded as the plan bounds them (its cores, MAX_SLOTS), so a member
  reporting 1024 slots pulls no more traffic under lef than its cores allow (the reviewer's steer scenario);
* L1: the agent's own concurrency past MAX_SLOTS counts as MAX_SLOTS, not as no slots at all;
* L2: the audit's ``all_live`` column under ``--endpoint-rule lef`` really is lef;
* L3: the simulated agent under lef and the study's ``lef-any`` agree where a Mode 1 plan keeps idle instances.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import agent.decisions
import agent.node
import agent.serving.resolve
from agent.decisions import Candidate, rank_endpoints, spread_ranked
from agent.leader_round import Command, Gathered, Solved
from agent.node import NodeAgent, model_server_concurrency
from agent.peers import NoPeers
from agent.settings import Settings, validate
from bench.p99_audit import AllLive
from peerserve.dispatch import MAX_SLOTS, Finish, choose_endpoint, node_slots, reported_slots
from solver.agent_sim import AgentDispatch
from solver.dispatch_whatif import what_if
from tests.unit.test_leader_round import PLAN, gathering, report


class Counted:
    """node_slots with a count of its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, placement: Any) -> dict[str, float]:
        self.calls += 1
        return node_slots(placement)


def big_summary(nodes: int) -> dict[str, Any]:
    """A summary with a share for "a" and a slots entry for each of ``nodes`` nodes."""
    return {
        "spread": [{"model": "m", "rtt_ms": {"a": 1.0, "b": 2.0}, "shares": {"a": 0.5, "b": 0.5}}],
        "slots": {f"n{i}": 2.0 for i in range(nodes)} | {"a": 3.0, "b": 1.0},
    }


# -- M1 ---------------------------------------------------------------------------------------------------
def test_p2c_never_parses_the_summarys_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default rule reads shares, planned queues and idle counts only: 200 requests, no slots parse, and the
    same choices as with no ``slots`` in the summary at all."""
    counted = Counted()
    monkeypatch.setattr(agent.decisions, "node_slots", counted)
    cands = [Candidate("a", "a/0", "m", 1.0, 0, 2.0), Candidate("b", "b/0", "m", 1.0, 0, 2.0)]
    rtts = {"a": 1.0, "b": 2.0}
    ranked = rank_endpoints(cands, rtts)
    summary = big_summary(256)
    bare = {k: v for k, v in summary.items() if k != "slots"}
    for rule in ("p2c", "weighted"):
        for i in range(100):
            u, live = (i + 0.5) / 100, {"a/0": i % 3}
            got = spread_ranked(ranked, summary, "m", rtts, u, live, u, rule, ("me", 4.0))
            assert got == spread_ranked(ranked, bare, "m", rtts, u, live, u, rule, ("me", 4.0))
    assert counted.calls == 0


def test_lef_uses_the_slots_parsed_once_per_summary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The agent parses the summary's slots when the summary arrives (last_placement's setter), and the request
    path (resolve -> spread_ranked with the agent's ``placement_slots``) parses nothing: the same choice as a
    parse on the spot, one parse for any number of requests."""
    counted = Counted()
    monkeypatch.setattr(agent.node, "node_slots", counted)
    monkeypatch.setattr(agent.decisions, "node_slots", counted)
    node = NodeAgent(Settings(node_id="me", data_dir=str(tmp_path), discovery=False), peers=NoPeers())
    try:
        assert node.placement_slots == {}
        summary = big_summary(256)
        node.last_placement = summary
        assert counted.calls == 1 and node.placement_slots["a"] == 3.0 and len(node.placement_slots) == 258
        cands = [Candidate("a", "a/0", "m", 1.0, 0, 2.0), Candidate("b", "b/0", "m", 1.0, 0, 2.0)]
        rtts = {"a": 1.0, "b": 2.0}
        ranked = rank_endpoints(cands, rtts)
        own = ("me", node.concurrency)
        firsts = []
        for q in range(12):  # the request path, as resolve calls it: no parse
            live = {"a/0": q}
            firsts.append(spread_ranked(ranked, summary, "m", rtts, 0.5, live, 0.5, "lef", own, node.placement_slots))
        assert counted.calls == 1
        # a: 1 + (max(0, q + 1 - 3) / 3 + 1) x 2 against b's 2 + 2: a while q <= 3
        assert [f[0].candidate.node for f in firsts] == ["a"] * 4 + ["b"] * 8
        on_the_spot = [spread_ranked(ranked, summary, "m", rtts, 0.5, {"a/0": q}, 0.5, "lef", own) for q in range(12)]
        assert on_the_spot == firsts and counted.calls == 1 + 12
        node.last_placement = None
        assert node.placement_slots == {} and node.last_placement is None
    finally:
        node.store.close()
        node.metrics.close()


def test_own_slots_are_bounded_by_cores_as_the_leader_bounds_them(tmp_path: Path) -> None:
    """instance_concurrency 8 on 2 cores: the leader publishes 2 slots for the node (reported_slots), and the
    node's own answers weigh its instance by the same 2, not 8. With 6 of its requests in flight locally (0.1 ms
    away, 10 ms service) and an idle peer 12 ms away: 2 slots finish at 0.1 + (5 / 2 + 1) x 10 = 35.1 against
    the peer's 22 (the peer); 8 slots would have said 10.1 (local)."""
    import asyncio

    settings = Settings(
        node_id="me", data_dir=str(tmp_path), discovery=False, cores=2.0, instance_concurrency=8.0,
        endpoint_rule="lef",
    )  # fmt: skip
    validate(settings)
    node = NodeAgent(settings, peers=NoPeers())
    try:
        report = node.node_report()
        assert node.concurrency == 8.0 and node.slots == 2.0
        assert node.slots == reported_slots(report["concurrency"], report["cores"])
        model = next(iter(node.catalogue.current.models))
        cands = [Candidate("me", "me/0", model, 10.0, 0, 10.0), Candidate("far", "far/0", model, 10.0, 0, 10.0)]
        node.candidates = lambda model=None: cands  # type: ignore[method-assign]
        rtts = {"me": 0.1, "far": 12.0}
        got = asyncio.run(node.resolve(model, "client-1", rtts, {"me/0": 6}))
        assert isinstance(got, agent.serving.resolve.Ranked)
        assert got.choices[0].candidate.node == "far"
        ranked = rank_endpoints(cands, rtts)
        unbounded = spread_ranked(ranked, None, model, rtts, 0.5, {"me/0": 6}, 0.5, "lef", ("me", node.concurrency))
        assert unbounded[0].candidate.node == "me"  # what the node said before
    finally:
        node.store.close()
        node.metrics.close()


# -- M2 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("concurrency", "cores", "want"),
    [
        (None, 4.0, None),  # nothing reported: left out (one slot)
        (math.nan, 4.0, None),
        (math.inf, 4.0, None),
        (2.0, 4.0, 2.0),  # an honest figure within its cores
        (1024.0, 1.0, 1.0),  # the lie of the steer scenario: no more than its cores
        (8.0, 2.0, 2.0),  # more than its cores, as the settings allow: the plan's bound (solver.node_cpu)
        (0.0, 4.0, 1.0),  # below one: one
        (3.0, 0.5, 1.0),  # under a core: one slot, as the plan counts it
        (1e12, None, MAX_SLOTS),  # no cores reported (no limit in the plan): MAX_SLOTS
        (1e12, 1e12, MAX_SLOTS),
        (5.0, 0.0, 5.0),  # cores 0 is "no limit" in the plan (solver.node_cpu.node_cores)
        (5.0, math.nan, 5.0),
    ],
)
def test_the_leader_bounds_a_members_slots_as_the_plan_does(
    concurrency: float | None, cores: float | None, want: float | None
) -> None:
    assert reported_slots(concurrency, cores) == want


def summary_slots(*reports: tuple[str, float | None, float | None]) -> dict[str, float]:
    """The ``slots`` a leader's round summary publishes for members reporting (node, concurrency, cores)."""
    m = gathering()
    for k, (node, concurrency, cores) in enumerate(reports):
        r = dataclasses.replace(report(node), cores=cores, concurrency=concurrency)
        m.step(Gathered(100.3 + k / 10, 1, node, r, ()))
    out = m.step(Solved(101.0, 1, PLAN, requests=0))
    assert isinstance(out[0], Command)
    return dict(out[0].summary.get("slots", {}))


def steer(rule: str, slots: dict[str, float]) -> tuple[dict[str, int], float]:
    """review20c's steer2: one agent, Poisson arrivals at 150 req/s, two nodes that each really serve one request
    at a time in 10 ms (RTT 1 and 2 ms); the plan gives "liar" no share. Requests per node and the p99 (ms)."""
    cands = [Candidate("honest", "h/0", "m", 10.0, 0, 10.0), Candidate("liar", "l/0", "m", 10.0, 0, 10.0)]
    rtts = {"honest": 1.0, "liar": 2.0}
    placement = {
        "spread": [{"model": "m", "rtt_ms": rtts, "shares": {"honest": 1.0}}],
        "planned_queue": {"honest": {"m": 1.0}},
        "slots": slots,
    }
    parsed = node_slots(placement)
    rng = random.Random(3)
    t, free_at, sent = 0.0, {"honest": 0.0, "liar": 0.0}, {"honest": 0, "liar": 0}
    done: list[tuple[float, str]] = []
    live: dict[str, int] = {}
    sojourn = []
    ranked = rank_endpoints(cands, rtts)
    for _ in range(6000):
        t += rng.expovariate(150.0) * 1000
        while done and done[0][0] <= t:
            live[heapq.heappop(done)[1]] -= 1
        first = spread_ranked(ranked, placement, "m", rtts, rng.random(), live, rng.random(), rule, ("me", 1.0), parsed)
        n, u = first[0].candidate.node, first[0].candidate.url
        start = max(t + rtts[n] / 2, free_at[n])
        free_at[n] = start + 10.0
        end = free_at[n] + rtts[n] / 2
        heapq.heappush(done, (end, u))
        live[u] = live.get(u, 0) + 1
        sent[n] += 1
        sojourn.append(end - t)
    return sent, float(np.percentile(sojourn, 99))


def test_a_member_that_reports_1024_slots_pulls_no_more_traffic_than_its_cores_allow() -> None:
    """The steer scenario through the leader: the liar reports concurrency 1024 on 1 core. The summary the
    leader publishes gives it 1 slot, so lef sends it exactly what it sends an honest 1-slot node; the raw
    figure (the summary before the fix) would have pulled far more to it and multiplied the p99."""
    slots = summary_slots(("a", 1.0, 1.0), ("b", 1024.0, 1.0))
    assert slots == {"a": 1.0, "b": 1.0}
    as_published = steer("lef", {"honest": slots["a"], "liar": slots["b"]})
    honest = steer("lef", {"honest": 1.0, "liar": 1.0})
    raw = steer("lef", {"honest": 1.0, "liar": 1024.0})
    assert as_published == honest
    assert raw[0]["liar"] > 1.2 * honest[0]["liar"] and raw[1] > 2 * honest[1], (raw, honest)
    # reporting more cores as well is a lie the plan itself already believes (docs/security.md): bounded by MAX_SLOTS
    assert summary_slots(("a", 1.0, 1.0), ("b", 1e12, 1e12)) == {"a": 1.0, "b": MAX_SLOTS}


# -- L1 ---------------------------------------------------------------------------------------------------
def test_own_concurrency_past_the_bound_counts_as_the_bound() -> None:
    """Settings allow cores=2000 with instance_concurrency 0 (its cores): 2000 slots. lef counts MAX_SLOTS of
    them and so still serves locally: an idle local instance 0.1 ms away beats a peer 12 ms away with 50 in
    flight, and the local one takes requests until MAX_SLOTS of this agent's are in flight there."""
    s = Settings(node_id="me", cores=2000.0, instance_concurrency=0.0)
    validate(s)
    own = ("me", model_server_concurrency(s))
    assert own[1] == 2000.0
    cands = [Candidate("me", "me/0", "m", 10.0, 0, 10.0), Candidate("far", "far/0", "m", 10.0, 0, 10.0)]
    rtts = {"me": 0.1, "far": 12.0}
    ranked = rank_endpoints(cands, rtts)
    assert spread_ranked(ranked, None, "m", rtts, 0.5, {"far/0": 50}, 0.5, "lef", own)[0].candidate.node == "me"
    # far idle from here on (finish 12 + 10 = 22); local with q in flight: 0.1 + (max(0, q + 1 - 1024) / 1024 + 1) x 10
    at_bound = {"me/0": MAX_SLOTS - 1}  # no wait: 10.1
    assert spread_ranked(ranked, None, "m", rtts, 0.5, at_bound, 0.5, "lef", own)[0].candidate.node == "me"
    past = {"me/0": MAX_SLOTS + 300}  # a wait of 301/1024 services: 13.04
    assert spread_ranked(ranked, None, "m", rtts, 0.5, past, 0.5, "lef", own)[0].candidate.node == "me"
    far_wins = {"me/0": MAX_SLOTS * 3}  # a wait of just over 2 services: 30.1
    assert spread_ranked(ranked, None, "m", rtts, 0.5, far_wins, 0.5, "lef", own)[0].candidate.node == "far"


# -- L2 ---------------------------------------------------------------------------------------------------
def test_the_audits_all_live_column_under_lef_is_lef() -> None:
    """AllLive (bench/p99_audit.py) counts every agent's requests in flight; under lef it must weigh them by
    lef's finish, not fall back to p2c for want of its inputs: with the plan's only share on a (5 in flight),
    lef takes b, p2c a."""
    details = {"spread": [{"model": "m", "rtt_ms": {"a": 1.0, "b": 2.0}, "shares": {"a": 1.0}}]}
    args = (details, ["a", "b"], [1, 1], np.array([[1.0, 2.0]]), np.zeros(1, np.int64), 10.0, np.full(1, 0.1))
    eps = [("a", "a/00000"), ("b", "b/00000")]
    picks = {}
    for rule in ("lef", "p2c"):
        d = AllLive(*args, endpoint_rule=rule)
        d.live[1] = {"a/00000": 5}  # another agent's requests: only the all-live view counts them
        picks[rule] = d.pick(eps, 0, 0, 0)
    assert picks == {"lef": 1, "p2c": 0}
    fin = [Finish(1.0, 10.0, 1.0), Finish(2.0, 10.0, 1.0)]
    assert picks["lef"] == choose_endpoint(eps, {"a": 1.0}, {}, {"a/00000": 5}, (0.1, 0.0), "lef", {}, fin)


# -- L3 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("idle", [{"n1": {"m": 1}}, {"n1": {"m": 1}, "n2": {"m": 1}}, {"n2": {"m": 2}}, {}])
def test_the_simulated_agent_and_the_studys_lef_any_agree_with_idle_instances(idle: dict[str, Any]) -> None:
    """Mode 1 keeps instances running without traffic (``idle_running``): the agent's lef never chooses them,
    and the study's ``lef-any`` (its twin) neither, request by request over queues that build up."""
    details = {
        "spread": [{"model": "m", "rtt_ms": {"n1": 1.0, "n2": 4.0}, "shares": {"n2": 1.0}}],
        "idle_running": idle,
    }
    n = 40
    args = (details, ["n1", "n2"], [1, 2], np.array([[1.0, 4.0]]), np.zeros(n, np.int64), 10.0, np.full(n, 0.5))
    sim = AgentDispatch(*args, endpoint_rule="lef")
    study = what_if("lef-any", "own", 0.0, 1)(*args)
    chosen = []
    for i in range(n):  # nothing completes: each request adds to the queue of the one chosen
        a, b = sim.choose(i, 0.0), study.choose(i, 0.0)
        assert sim.endpoints[a] == study.endpoints[b], (i, sim.endpoints[a], study.endpoints[b])
        chosen.append(sim.endpoints[a][1])
    idle_urls = {"n1": ["n1/00000"], "n2": ["n2/00000", "n2/00001"]}
    for node, m in idle.items():
        assert not set(idle_urls[node][len(idle_urls[node]) - min(m["m"], len(idle_urls[node])) :]) & set(chosen)
