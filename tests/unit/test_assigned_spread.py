"""Thesis-model plans publish their assignments as per-site shares, and the agent spreads by them (issue 16)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from agent.decisions import Candidate, rank_endpoints, spread_ranked
from agent.leader_round import Command, Solved
from agent.solver_worker import solve_request
from peerserve.dispatch import MAX_SPREAD_SITES
from solver.api import solve
from solver.snapshot import Model, Node, Request, Snapshot
from tests.unit.test_leader_round import solving

NODES = (Node("a", 4096.0, 4096.0, 100.0), Node("b", 4096.0, 4096.0, 100.0))
MODEL = Model("m", 100.0, 1.0, {"default": 500.0})


def two_sites(clients: int = 20) -> Snapshot:
    """Half the clients near a, half near b; one instance per client stream (the thesis's model)."""
    reqs = tuple(
        Request("m", {"a": 2.0, "b": 9.0} if c % 2 else {"a": 9.0, "b": 2.0}, {"a": 1.0, "b": 1.0}, f"c{c}")
        for c in range(clients)
    )
    return Snapshot(NODES, (MODEL,), reqs, objective="thesis")


@pytest.mark.parametrize(("method", "objective"), [("ipopt", "thesis"), ("least-loaded", "thesis"), ("nearest", None)])
def test_a_thesis_model_plan_publishes_its_assignments_as_shares(method: str, objective: str | None) -> None:
    snap = two_sites()
    plan = solve(snap, method=method, mode="2", objective=objective)
    spread = plan.details["spread"]
    assert len(spread) == 2  # two sites: two classes
    for site in spread:
        members = [i for i, r in enumerate(snap.requests) if dict(r.rtt_ms) == site["rtt_ms"]]
        got = Counter(plan.assignments[i] for i in members if plan.assignments[i] is not None)
        assert site["shares"] == {n: round(k / sum(got.values()), 6) for n, k in got.items()}
        assert site["model"] == "m" and sum(site["shares"].values()) == pytest.approx(1.0)


def test_the_published_sites_are_bounded_largest_rate_first() -> None:
    reqs = tuple(
        Request("m", {"a": float(i), "b": 300.0 - i}, {"a": 1.0, "b": 1.0}, f"c{i}", rate=1.0 + i) for i in range(200)
    )
    plan = solve(Snapshot(NODES, (MODEL,), reqs), method="least-loaded", mode="2", objective="thesis")
    spread = plan.details["spread"]
    assert len(spread) == MAX_SPREAD_SITES
    placed = sorted((i for i, n in enumerate(plan.assignments) if n is not None), reverse=True)  # rate 1 + i
    assert len(placed) > MAX_SPREAD_SITES and [s["rtt_ms"]["a"] for s in spread] == placed[:MAX_SPREAD_SITES]
    rejected = replace(two_sites(), nodes=(Node("a", 50.0, 50.0, 100.0), Node("b", 50.0, 50.0, 100.0)))
    assert solve(rejected, method="least-loaded", mode="2").details["spread"] == []  # nothing placed


def test_the_leader_hands_the_shares_to_every_agent_and_the_agent_spreads_over_the_plans_instances() -> None:
    """The worker's reply (real Ipopt) -> the leader's round summary -> the endpoint choice of an agent."""
    reply = solve_request({"snapshot": two_sites().to_dict(), "method": "ipopt", "mode": "2"})
    plan = reply["plan"]
    assert plan["instances"] == {"a": {"m": 10}, "b": {"m": 10}}
    m = solving()
    out = m.step(Solved(101.0, 1, plan, requests=20))
    assert all(isinstance(c, Command) for c in out)
    summary = out[0].summary  # type: ignore[union-attr]
    assert summary["spread"] == plan["details"]["spread"]
    cands = [Candidate(n, f"http://{n}/{i}", "m", 1.0, 0.0) for n in "ab" for i in range(10)]
    rtts = {"a": 9.0, "b": 2.0}
    rng = np.random.default_rng(1)
    firsts = Counter(
        spread_ranked(rank_endpoints(cands, rtts), summary, "m", rtts, rng.random(), {}, rng.random())[0].candidate.url
        for _ in range(2000)
    )
    assert set(firsts) == {f"http://b/{i}" for i in range(10)}  # the plan's node, all of its instances
    assert min(firsts.values()) > 120  # about 200 each
