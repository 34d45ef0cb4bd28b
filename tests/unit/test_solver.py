"""The placement solver on hand-checkable instances, modes, baselines, aggregation and pricing."""

from __future__ import annotations

import pytest

from solver import EvictionPolicy, Mode
from solver.api import solve
from solver.problem import build_problem
from solver.relaxation import solve_relaxation
from solver.simulate import site_instance, thesis_instance
from tests.unit.conftest import make_snapshot, request

M = [{"name": "m", "mem_mb": 100, "compute": 1}]


def two_nodes(mem_a: float = 100, mem_b: float = 300, **a_extra: object) -> list[dict[str, object]]:
    return [
        {"id": "a", "mem_available_mb": mem_a, "mem_total_mb": max(mem_a, 100), "compute": 100, **a_extra},
        {"id": "b", "mem_available_mb": mem_b, "mem_total_mb": mem_b, "compute": 100},
    ]


KNOWN = make_snapshot(
    two_nodes(),
    M,
    [
        request("m", {"a": 10, "b": 20}),
        request("m", {"a": 10, "b": 30}),
        request("m", {"a": 50, "b": 40}),
    ],
)


@pytest.mark.parametrize("method", ["ipopt", "milp"])
@pytest.mark.parametrize("mode", ["1", "2"])
def test_known_optimum(method: str, mode: str) -> None:
    # Node a has room for one instance; the request that gains most from a (r1: 10 vs 30) gets it.
    plan = solve(KNOWN, method=method, mode=mode)
    assert plan.status == "optimal"
    assert plan.assignments == ("b", "a", "b")
    assert plan.objective_ms == pytest.approx(70.0)
    assert plan.feasible and not plan.rejected
    assert dict(plan.instances["a"]) == {"m": 1} and dict(plan.instances["b"]) == {"m": 2}
    assert {(a.op, a.node, a.count) for a in plan.actions} == {("start", "a", 1), ("start", "b", 2)}


def test_lower_bound_is_the_lp_optimum() -> None:
    plan = solve(KNOWN, method="ipopt")
    assert plan.lower_bound_ms == pytest.approx(70.0, abs=1e-4)


def test_unplaceable_request_is_rejected_with_reason_not_dropped() -> None:
    s = make_snapshot(
        [{"id": "a", "mem_available_mb": 100, "mem_total_mb": 100, "compute": 100}],
        [{"name": "big", "mem_mb": 60, "compute": 1}],
        [request("big", {"a": 1}), request("big", {"a": 2})],
    )
    for method in ("ipopt", "milp", "least-loaded"):
        plan = solve(s, method=method)
        assert plan.served == 1
        assert [r.request for r in plan.rejected] == [next(i for i, a in enumerate(plan.assignments) if a is None)]
        assert "'big'" in plan.rejected[0].reason and "60 MB" in plan.rejected[0].reason
        assert plan.feasible


def test_compute_binds() -> None:
    s = make_snapshot(
        [
            {"id": "a", "mem_available_mb": 1000, "mem_total_mb": 1000, "compute": 10},
            {"id": "b", "mem_available_mb": 1000, "mem_total_mb": 1000, "compute": 10},
        ],
        [{"name": "m", "mem_mb": 1, "compute": 6}],
        [request("m", {"a": 1, "b": 5}), request("m", {"a": 1, "b": 9})],
    )
    plan = solve(s, method="ipopt")
    assert plan.assignments == ("b", "a")
    assert plan.objective_ms == pytest.approx(6.0)


RUNNING = make_snapshot(
    [
        {
            "id": "a",
            "mem_available_mb": 0,
            "mem_total_mb": 300,
            "compute": 100,
            "instances": {"m": 1, "old": 2},
        },
        {"id": "b", "mem_available_mb": 300, "mem_total_mb": 300, "compute": 100},
    ],
    [{"name": "m", "mem_mb": 100, "compute": 1}, {"name": "old", "mem_mb": 100, "compute": 1}],
    [request("m", {"a": 1, "b": 10}), request("m", {"a": 1, "b": 10})],
)


def test_mode1_reuses_running_instances_and_never_stops() -> None:
    plan = solve(RUNNING, method="ipopt", mode="1")
    # a has no free memory but one running instance of m: one request reuses it, the other goes to b.
    assert sorted(plan.assignments, key=str) == ["a", "b"]
    assert all(a.op == "start" for a in plan.actions)
    assert {(a.node, a.model, a.count) for a in plan.actions} == {("b", "m", 1)}
    assert dict(plan.instances["a"]) == {"m": 1, "old": 2}


def test_mode2_follows_the_solver_strictly() -> None:
    plan = solve(RUNNING, method="ipopt", mode="2")
    # With total memory, both requests fit on a once the unused "old" instances are stopped.
    assert plan.assignments == ("a", "a")
    assert {(a.op, a.node, a.model, a.count) for a in plan.actions} == {
        ("stop", "a", "old", 2),
        ("start", "a", "m", 1),
    }
    assert dict(plan.instances["a"]) == {"m": 2}


def test_mode1_evicts_idle_instances_by_policy() -> None:
    s = make_snapshot(
        [
            {
                "id": "a",
                "mem_available_mb": 0,
                "mem_total_mb": 300,
                "compute": 100,
                "instances": {"m": 1, "old": 2},
                "usage": {
                    "old": {"requests": 5, "last_request_s": 0, "provisioned_s": 0},
                    "m": {"requests": 9, "last_request_s": 990, "provisioned_s": 0},
                },
            },
            {"id": "b", "mem_available_mb": 300, "mem_total_mb": 300, "compute": 100},
        ],
        RUNNING.to_dict()["models"],
        RUNNING.to_dict()["requests"],
        now_s=1000,
    )
    plan = solve(s, method="ipopt", mode="1", policy=EvictionPolicy(idle_s=600))
    assert ("stop", "a", "old", 2) in {(a.op, a.node, a.model, a.count) for a in plan.actions}
    assert plan.assignments == ("a", "a")  # the freed memory is used in the same round
    kept = solve(s, method="ipopt", mode="1", policy=EvictionPolicy(idle_s=5000))
    assert all(a.op == "start" for a in kept.actions)


def test_auto_takes_mode2_when_it_serves_more() -> None:
    s = make_snapshot(
        [{"id": "a", "mem_available_mb": 0, "mem_total_mb": 200, "compute": 100, "instances": {"old": 2}}],
        [{"name": "m", "mem_mb": 100, "compute": 1}, {"name": "old", "mem_mb": 100, "compute": 1}],
        [request("m", {"a": 1})],
    )
    plan = solve(s, method="ipopt", mode="auto")
    assert plan.mode == "2" and plan.served == 1
    assert "auto chose mode 2" in plan.note and "serves 1 more" in plan.note


def test_auto_keeps_mode1_when_gain_is_small() -> None:
    plan = solve(RUNNING, method="ipopt", mode="auto", policy=EvictionPolicy(auto_gain=0.9))
    assert plan.mode == "1" and "mode 1" in plan.note


def test_iterative_search_puts_everything_on_one_node_and_reports_infeasible() -> None:
    plan = solve(KNOWN, method="iterative", mode="1")
    # Per-node sums: a = 70, b = 90, so everything goes on a, which has room for one instance.
    assert plan.assignments == ("a", "a", "a")
    assert not plan.feasible and any("memory" in v for v in plan.violations)


def test_nearest_and_least_loaded() -> None:
    nearest = solve(KNOWN, method="nearest")
    assert nearest.assignments == ("a", "a", "b") and not nearest.feasible
    loaded = solve(KNOWN, method="least-loaded")
    assert loaded.feasible and loaded.served == 3


def test_ipopt_backends_agree() -> None:
    s = thesis_instance(12, 5, seed=3)
    direct = solve(s, method="ipopt", mode="2")
    via_nl = solve(s, method="ipopt-nl", mode="2")
    assert direct.lower_bound_ms == pytest.approx(via_nl.lower_bound_ms, rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_aggregated_classes_reach_the_per_request_optimum(seed: int) -> None:
    s = site_instance(40, 6, sites=3, seed=seed, models=2)
    classes = build_problem(s, Mode.MODE2)
    single = build_problem(s, Mode.MODE2, aggregate=False)
    assert classes.n_classes < single.n_classes == 40
    assert solve_relaxation(classes).objective == pytest.approx(solve_relaxation(single).objective, rel=1e-6)
    from solver.milp import solve_milp

    a, b = solve_milp(classes), solve_milp(single)
    assert float((a.counts * classes.cost).sum()) == pytest.approx(float((b.counts * single.cost).sum()))


def test_pricing_recovers_the_full_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    s = thesis_instance(30, 12, seed=1)
    p = build_problem(s, Mode.MODE1)
    full = solve_relaxation(p)
    import solver.relaxation as rel

    monkeypatch.setattr(rel, "FULL_COLUMNS_LIMIT", 0)
    monkeypatch.setattr(rel, "CANDIDATES", 2)
    priced = solve_relaxation(p)
    assert priced.columns < p.n_classes * p.n_nodes
    assert priced.objective == pytest.approx(full.objective, rel=1e-5)


def test_ipopt_close_to_milp_on_thesis_instances() -> None:
    gaps = []
    for seed in range(5):
        s = thesis_instance(25, 10, seed)
        ip, mi = solve(s, method="ipopt"), solve(s, method="milp")
        assert ip.feasible and mi.feasible
        assert ip.lower_bound_ms is not None and ip.lower_bound_ms <= mi.objective_ms + 1e-6
        if ip.served == mi.served:
            assert ip.objective_ms >= mi.objective_ms - 1e-6
            gaps.append(ip.objective_ms / mi.objective_ms - 1)
    assert gaps and sum(gaps) / len(gaps) < 0.03


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        solve(KNOWN, method="simplex")
