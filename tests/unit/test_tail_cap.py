"""The tail-aware load cap (solver.tail_cap, objective queue-p99): p99 bound per pool, lifted before rejecting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from solver.api import solve
from solver.problem import Mode, build_problem
from solver.queue_model import build_queue_problem
from solver.snapshot import Model, Node, Request, Snapshot
from solver.tail_cap import LN100, TAIL_FRACTION, tail_caps
from solver.workload import Workload, lab_snapshot


def far_sites(rate: float) -> Snapshot:
    """60 clients 40-45 ms from three nodes of one class (a 300 req/s model): the tail cap fits the bound."""
    rng = np.random.default_rng(3)
    ids = ("n1", "n2", "n3")
    nodes = tuple(Node(i, 2048.0, 2048.0, 100.0) for i in ids)
    model = Model("m", 300.0, 1.0, {"default": 300.0})
    reqs = tuple(
        Request(
            "m", {i: float(rng.uniform(40.0, 45.0)) for i in ids}, dict.fromkeys(ids, 1000.0 / 300.0), f"c{c}", rate
        )
        for c in range(60)
    )
    return Snapshot(nodes, (model,), reqs)


def over_cap(snap: Snapshot, objective: str) -> list[str]:
    """Nodes whose per-instance load exceeds the tail cap (the invariant queue-p99 keeps where it keeps the cap)."""
    q = build_queue_problem(build_problem(snap, Mode.MODE2))
    caps = tail_caps(q, TAIL_FRACTION)
    plan = solve(snap, mode="2", objective=objective)
    assert plan.feasible and not plan.rejected
    total = sum(float(r.rate or 0.0) for r in snap.requests)
    bound = math.ceil(total / (q.rho_max * float(q.mu[:, 0].max())) - 1e-9) + 1  # one node class here
    assert sum(sum(m.values()) for m in plan.instances.values()) <= bound
    out = []
    for j, node in enumerate(q.base.node_ids):
        n = plan.instances.get(node, {}).get("m", 0)
        lam = sum(float(r.rate or 0.0) * s.get(node, 0.0) for r, s in zip(snap.requests, plan.shares, strict=True))
        if n and lam / (n * q.mu[j, 0]) > caps[j, 0] + 1e-6:
            out.append(f"{node}: load {lam / (n * q.mu[j, 0]):.3f} over cap {caps[j, 0]:.3f}")
    return out


def test_cap_meets_the_p99_bound_exactly_where_memory_allows() -> None:
    snap, _ = lab_snapshot(Workload(rate=1.0))  # 60 req/s: the tail bound fits in memory, no lift
    q = build_queue_problem(build_problem(snap, Mode.MODE2))
    caps = tail_caps(q, TAIL_FRACTION)
    cheapest = q.base.cost.min(axis=0)[:, None]
    excess = LN100 * q.service_ms * (1.0 / (1.0 - caps) - 1.0)  # M/M/1 p99 sojourn over the unloaded one
    np.testing.assert_allclose(excess, TAIL_FRACTION * cheapest, rtol=1e-9)


def test_plans_keep_the_cap_where_it_fits_the_instance_bound_and_the_check_fails_without_it() -> None:
    snap = far_sites(2.5)  # 150 req/s: need 1 at rho_max, the bound allows 2, the tail cap needs 2
    plan = solve(snap, mode="2", objective="queue-p99")
    assert plan.details["tail_cap"] == "kept"
    assert over_cap(snap, "queue-p99") == []
    assert over_cap(snap, "queue"), "the checker must see hot instances when the tail cap is switched off"


@pytest.mark.parametrize("rate", [1.0, 2.0, 5.0, 12.0])
def test_where_the_cap_would_break_the_bound_the_plain_plan_is_used(rate: float) -> None:
    snap, _ = lab_snapshot(Workload(rate=rate))  # sites 1-20 ms away: the tail cap needs more than need + 1
    plan = solve(snap, mode="2", objective="queue-p99")
    plain = solve(snap, mode="2", objective="queue")
    assert plan.details["tail_cap"] == "gave way to the instance bound"
    assert plan.instances == plain.instances and plan.shares == plain.shares


@pytest.mark.parametrize(("rate", "lifted"), [(5.0, False), (12.0, True)])
def test_cap_is_lifted_instead_of_rejecting_when_memory_runs_out(rate: float, lifted: bool) -> None:
    snap, _ = lab_snapshot(Workload(rate=rate))  # 720 req/s: the tail bound would need about 40 instances
    q = build_queue_problem(build_problem(snap, Mode.MODE2))
    caps = tail_caps(q, TAIL_FRACTION)
    plan = solve(snap, mode="2", objective="queue-p99")
    assert plan.feasible and not plan.rejected
    assert sum(sum(m.values()) for m in plan.instances.values()) <= 18  # 3 nodes x 6 instances of 300 MB
    assert (float(caps.min()) > 0.1) is lifted  # the pure tail bound is about 0.07 here
