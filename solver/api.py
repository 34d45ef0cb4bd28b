"""``solve(snapshot, method, mode) -> Plan``: the one entry point of the placement solver."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from solver import baselines
from solver.assigned_spread import assigned_spread
from solver.capacity import Ledger, placed_per_node_model, violations
from solver.modes import EvictionPolicy, evictions, prefer_mode2
from solver.plan import Plan, Rejection
from solver.problem import IntArray, Mode, Problem, build_problem, plan_actions, plan_instances, running_instances
from solver.snapshot import OBJECTIVES, Snapshot

METHODS = ("ipopt", "ipopt-pyomo", "ipopt-nl", "milp", "iterative", "nearest", "least-loaded")

Placement = tuple[IntArray, IntArray, list[str]]


def solve(
    snapshot: Snapshot,
    method: str = "ipopt",
    mode: Mode | str = Mode.MODE1,
    policy: EvictionPolicy | None = None,
    now_s: float | None = None,
    objective: str | None = None,
) -> Plan:
    """Place the snapshot's requests with ``method`` in ``mode``; ``now_s`` defaults to the snapshot's.

    ``objective``: "queue" (streams with rates, queueing delay; method ipopt), "queue-p99" (the same
    with the tail-aware load cap of solver.tail_cap) or "thesis"; None takes
    the snapshot's own ``objective``, else "thesis". Methods other than ipopt solve the thesis model.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    objective = objective or snapshot.objective or "thesis"
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective in ("queue", "queue-p99") and method == "ipopt":
        method = f"ipopt-{objective}"
    mode = Mode(mode)
    policy = policy or EvictionPolicy()
    now = now_s if now_s is not None else snapshot.now_s
    start = time.perf_counter()
    if mode is Mode.AUTO:
        one = _solve_in_mode(snapshot, method, Mode.MODE1, policy, now)
        two = _solve_in_mode(snapshot, method, Mode.MODE2, policy, now)
        pick_two, why = prefer_mode2(one.served, one.objective_ms, two.served, two.objective_ms, policy.auto_gain)
        chosen = two if pick_two else one
        plan = replace(chosen, note=f"auto chose mode {chosen.mode}: {why}")
    else:
        plan = _solve_in_mode(snapshot, method, mode, policy, now)
    return replace(plan, solve_ms=1000.0 * (time.perf_counter() - start))


def _solve_in_mode(snapshot: Snapshot, method: str, mode: Mode, policy: EvictionPolicy, now: float | None) -> Plan:
    running = running_instances(snapshot)
    kept = running - evictions(snapshot, policy, now) if mode is Mode.MODE1 else running
    problem = build_problem(snapshot, mode, current=kept)
    if method in ("ipopt-queue", "ipopt-queue-p99"):
        from solver.queue_plan import solve_queue

        return solve_queue(problem, tail=method == "ipopt-queue-p99")
    details: dict[str, Any] = {"classes": problem.n_classes}
    lower_bound: float | None = None
    status = "heuristic"
    if method in ("ipopt", "ipopt-pyomo", "ipopt-nl"):
        from solver.relaxation import solve_relaxation
        from solver.rounding import round_and_repair

        relax = solve_relaxation(problem, backend=method)
        counts, rejected, reasons = round_and_repair(problem, relax.y)
        status = relax.status
        lower_bound = relax.objective
        details.update(iterations=relax.iterations, pricing_rounds=relax.pricing_rounds, columns=relax.columns)
        if relax.rows is not None:
            details.update(rows=relax.rows, guided=relax.guided, estimate=relax.estimate)
    elif method == "milp":
        from solver.milp import solve_milp

        result = solve_milp(problem)
        counts, rejected, reasons = result.counts, result.rejected, [""] * problem.n_classes
        status = result.status
    else:
        counts, rejected, reasons = _BASELINES[method](problem)
    return _make_plan(problem, method, counts, rejected, reasons, status, lower_bound, details)


_BASELINES: dict[str, Callable[[Problem], Placement]] = {
    "iterative": baselines.iterative_search,
    "nearest": baselines.nearest_node,
    "least-loaded": baselines.least_loaded,
}


def _make_plan(
    p: Problem,
    method: str,
    counts: IntArray,
    rejected: IntArray,
    reasons: list[str],
    status: str,
    lower_bound: float | None,
    details: dict[str, Any],
) -> Plan:
    assignments: list[str | None] = [None] * p.n_requests
    rejections: list[Rejection] = []
    if any(rejected[c] and not reasons[c] for c in range(p.n_classes)):
        reasons = _explain_rejections(p, counts, rejected, reasons)
    by_cost = np.argsort(p.cost, axis=1, kind="stable")
    for c, members in enumerate(p.class_members):
        nodes = np.repeat(by_cost[c], counts[c, by_cost[c]]).tolist()
        for i, j in zip(members, nodes, strict=False):
            assignments[i] = p.node_ids[j]
        rejections += [Rejection(i, reasons[c]) for i in members[len(nodes) :]]
    placed = placed_per_node_model(p, counts)
    broken = violations(p, placed)
    target = np.maximum(p.free, placed) if p.mode is Mode.MODE1 else placed
    objective = float((counts * p.cost).sum())
    details = {**details, "spread": assigned_spread(p, counts)}  # the agent spreads by it (solver/assigned_spread.py)
    return Plan(
        status=status,
        method=method,
        mode=p.mode.value,
        objective_ms=objective,
        solve_ms=0.0,
        assignments=tuple(assignments),
        instances=plan_instances(p, target),
        rejected=tuple(sorted(rejections, key=lambda r: r.request)),
        actions=plan_actions(p, running_instances(p.snapshot), target),
        feasible=not broken,
        violations=tuple(broken),
        lower_bound_ms=lower_bound,
        details=details,
    )


def _explain_rejections(p: Problem, counts: IntArray, rejected: IntArray, reasons: list[str]) -> list[str]:
    """Reasons for rejections a method did not explain, from the capacity its placement leaves."""
    ledger = Ledger(p)
    for c in range(p.n_classes):
        for j in np.nonzero(counts[c])[0]:
            for _ in range(int(counts[c, j])):
                ledger.add(int(j), int(p.class_model[c]))
    return [
        reasons[c] or (ledger.rejection_reason(int(p.class_model[c])) if rejected[c] else "")
        for c in range(p.n_classes)
    ]
