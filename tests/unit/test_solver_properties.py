"""Property tests: rounding + repair never breaks a constraint and never loses a request."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import Mode, Snapshot
from solver.api import solve
from solver.capacity import placed_per_node_model, violations
from solver.problem import build_problem
from solver.rounding import round_and_repair


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    n_nodes = draw(st.integers(1, 4))
    n_models = draw(st.integers(1, 3))
    n_req = draw(st.integers(0, 9))
    money = st.floats(0, 400, allow_nan=False)
    models = [
        {
            "name": f"m{k}",
            "mem_mb": draw(st.sampled_from([0, 10, 50, 100, 150])),
            "compute": draw(st.integers(0, 40)),
        }
        for k in range(n_models)
    ]
    nodes: list[dict[str, Any]] = []
    for j in range(n_nodes):
        total = draw(money)
        nodes.append(
            {
                "id": f"n{j}",
                "mem_total_mb": total,
                "mem_available_mb": draw(st.floats(0, total)) if total else 0.0,
                "compute": draw(st.integers(0, 100)),
                "instances": {m["name"]: draw(st.integers(0, 2)) for m in models},
            }
        )
    cost = st.floats(0, 100, allow_nan=False)
    requests = [
        {
            "model": draw(st.sampled_from(models))["name"],
            "rtt_ms": {n["id"]: draw(cost) for n in nodes},
            "exec_ms": {n["id"]: draw(st.sampled_from([1.0, 5.0])) for n in nodes},
        }
        for _ in range(n_req)
    ]
    return Snapshot.from_dict({"nodes": nodes, "models": models, "requests": requests})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(), st.sampled_from([Mode.MODE1, Mode.MODE2]), st.data())
def test_rounding_keeps_capacity_and_every_request(snapshot: Snapshot, mode: Mode, data: st.DataObject) -> None:
    p = build_problem(snapshot, mode)
    # Any fractional input at all, not only LP optima: the repair must cope with anything.
    raw = data.draw(st.lists(st.floats(0, 3), min_size=p.n_classes * p.n_nodes, max_size=p.n_classes * p.n_nodes))
    y = np.array(raw, dtype=float).reshape(p.n_classes, p.n_nodes)
    counts, rejected, reasons = round_and_repair(p, y)
    assert (counts >= 0).all() and (rejected >= 0).all()
    assert ((counts.sum(axis=1) + rejected) == p.class_count).all()
    assert violations(p, placed_per_node_model(p, counts)) == []
    for c in np.nonzero(rejected)[0]:
        assert reasons[c]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(), st.sampled_from(["1", "2"]))
def test_ipopt_plan_is_feasible_complete_and_no_better_than_milp(snapshot: Snapshot, mode: str) -> None:
    plan = solve(snapshot, method="ipopt", mode=mode)
    assert plan.feasible, plan.violations
    rejected = {r.request for r in plan.rejected}
    assert len(plan.assignments) == len(snapshot.requests)
    for i, node in enumerate(plan.assignments):
        assert (node is None) == (i in rejected)
    exact = solve(snapshot, method="milp", mode=mode)
    assert exact.served >= plan.served
    if exact.served == plan.served:
        assert plan.objective_ms >= exact.objective_ms - 1e-6 * max(1.0, exact.objective_ms)
