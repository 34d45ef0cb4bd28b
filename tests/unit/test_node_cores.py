"""A node's cores are shared by its instances (issue 16, solver.node_cpu): the model, repair and the real solver."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import queue_fast, queue_repair, queue_warm
from solver.api import solve
from solver.hold import value_running
from solver.node_cpu import busy, effective_servers
from solver.problem import Mode, build_problem
from solver.queue_fast import objective_value, solve_nlp_fast
from solver.queue_model import N_MIN, QueueProblem, build_queue_problem, solve_nlp
from solver.queue_plan import mean_latency_ms
from solver.queue_repair import repair
from solver.simulate import thesis_instance
from solver.snapshot import Model, Node, Request, Snapshot
from solver.tail_cap import with_tail_cap
from tests.unit.test_solver_queue_placement import check, spread_violations

DATA = Path(__file__).parent / "data"
TOL = 1e-5  # both sides are Ipopt optima at its tolerance (as tests/unit/test_queue_fast.py)


def with_cores(snap: Snapshot, seed: int, choices: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> Snapshot:
    """``snap`` with a random core count on every node."""
    rng = np.random.default_rng(seed)
    nodes = tuple(dataclasses.replace(n, cores=float(rng.choice(choices))) for n in snap.nodes)
    return dataclasses.replace(snap, nodes=nodes)


def gap(q: QueueProblem) -> float:
    """Relative gap of the closed-form shortcut's objective over the reference NLP's."""
    ref = solve_nlp(q, compact=False)
    fast = solve_nlp_fast(q)
    assert ref.status == "optimal" and fast.status == "optimal"
    best = objective_value(q, ref.x, ref.r, ref.n, ref.servers)
    return (objective_value(q, fast.x, fast.r, fast.n, fast.servers) - best) / abs(best)


def site_lab(rate: float, cores: float | None, near_ms: float = 2.0, far_ms: float = 30.0) -> Snapshot:
    """Six sites next to n0 (``cores`` cores), 28 ms further from n1 and n2 (4 cores); one 10 ms model."""
    nodes = (
        Node("n0", 4096.0, 4096.0, 100.0, node_class="board", cores=cores),
        Node("n1", 4096.0, 4096.0, 100.0, node_class="board", cores=4.0),
        Node("n2", 4096.0, 4096.0, 100.0, node_class="board", cores=4.0),
    )
    model = Model("m", 100.0, 1.0, {"default": 100.0})
    ids = ("n0", "n1", "n2")
    reqs = tuple(
        Request(
            "m",
            {"n0": near_ms + s, "n1": far_ms + s, "n2": far_ms + 2 * s},
            dict.fromkeys(ids, 10.0),
            f"site{s}",
            rate / 6,
        )
        for s in range(6)
    )
    return Snapshot(nodes, (model,), reqs)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.integers(3, 30),
    nodes=st.integers(2, 10),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from([Mode.MODE1, Mode.MODE2]),
    tail=st.booleans(),
)
def test_shortcut_equals_the_reference_nlp_with_core_rows(
    requests: int, nodes: int, seed: int, mode: Mode, tail: bool
) -> None:
    """The closed forms (queue_fast) and the reference NLP agree with the core rows in, and both keep them."""
    q = build_queue_problem(build_problem(with_cores(thesis_instance(requests, nodes, seed), seed), mode))
    q = with_tail_cap(q) if tail else q
    assert abs(gap(q)) <= TOL
    fast = solve_nlp_fast(q)
    sliver = 10 * N_MIN * len(q.base.model_names)  # every pool keeps e >= N_MIN (solver.queue_model)
    assert np.all(busy(fast.lam, q.mu) <= q.rho_max * q.cores() * (1 + 1e-6) + sliver)
    assert np.all(fast.effective() <= fast.n + 1e-6)


def test_the_shortcut_without_the_core_recheck_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where cores bind, a shortcut that does not recheck the dropped rows breaks them: the gap check sees it."""
    q = build_queue_problem(build_problem(with_cores(thesis_instance(20, 6, 0), 0), Mode.MODE2))
    assert abs(gap(q)) <= TOL
    monkeypatch.setattr(queue_fast, "GREEDY_START", False)
    monkeypatch.setattr(queue_fast, "RECHECK", False)
    fast = solve_nlp_fast(q)
    assert np.any(fast.n.sum(axis=1) > q.cores() * 1.01)  # the closed form overfills a node's cores
    assert gap(q) < -TOL


def test_without_cores_the_model_is_unchanged() -> None:
    """No node with cores: no e variables, the same optimum as before (servers None)."""
    q = build_queue_problem(build_problem(thesis_instance(15, 5, 3), Mode.MODE2))
    assert not np.isfinite(q.cores()).any()
    ref = solve_nlp(q, compact=False)
    assert ref.servers is None
    np.testing.assert_allclose(ref.effective(), ref.n)


@pytest.mark.parametrize("rate", [20.0, 60.0, 120.0, 180.0, 300.0, 450.0])
def test_more_load_never_puts_more_instances_on_a_node_than_its_cores_serve(rate: float) -> None:
    """n0 has 2 cores and the cheapest RTT: the real solver runs at most 2 instances there at any load, and
    keeps its busy work under 0.9 x 2 cores; the rest goes to n1 and n2."""
    for objective in ("queue", "queue-p99"):
        plan = solve(site_lab(rate, 2.0), objective=objective, mode="2")
        assert plan.feasible and not plan.rejected
        assert plan.instances.get("n0", {}).get("m", 0) <= 2
        served_n0 = sum(s.get("n0", 0.0) * rate / 6 for s in plan.shares)
        assert served_n0 <= 0.9 * 2 * 100.0 * (1 + 1e-6)
        total = sum(c.get("m", 0) for c in plan.instances.values())
        assert total <= -(-rate // 90) + 1  # the instance bound: need at rho_max + one spare


def test_without_the_core_limit_the_old_model_stacks_instances_on_the_near_node() -> None:
    """The same lab with no core count on n0 (the old model): at 450 req/s it asks n0 for more than 2
    instances, which the check above rejects."""
    plan = solve(site_lab(450.0, None), objective="queue", mode="2")
    assert plan.instances["n0"]["m"] > 2


def test_saturated_node_regression_case() -> None:
    """tests/unit/data/queue_cores_saturated.json: 2-core n0 under 450 req/s keeps 2 instances."""
    snap = Snapshot.from_dict(json.loads((DATA / "queue_cores_saturated.json").read_text()))
    assert snap.to_dict() == site_lab(450.0, 2.0).to_dict()
    plan = solve(snap, objective="queue", mode="2")
    assert plan.instances["n0"]["m"] == 2


@st.composite
def cored_instances(draw: st.DrawFn) -> Snapshot:
    """Random small clusters with core counts (some nodes without), one to three models, rates up to 300."""
    n_nodes, n_models = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    nodes = tuple(
        Node(f"n{j}", 2048.0, 2048.0, 100.0, {}, {}, "default", draw(st.sampled_from([None, 0.5, 1.0, 2.0, 4.0])))
        for j in range(n_nodes)
    )
    models = tuple(Model(f"m{k}", 100.0, 1.0, {"default": draw(st.floats(20.0, 400.0))}) for k in range(n_models))
    reqs = tuple(
        Request(
            f"m{draw(st.integers(0, n_models - 1))}",
            {n.id: draw(st.floats(0.5, 100.0)) for n in nodes},
            {n.id: 2.0 for n in nodes},
            f"c{i}",
            draw(st.floats(0.5, 300.0)),
        )
        for i in range(draw(st.integers(1, 8)))
    )
    return Snapshot(nodes, models, reqs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(cored_instances(), st.sampled_from([Mode.MODE1, Mode.MODE2]))
def test_repaired_placements_keep_every_nodes_busy_work_under_its_cores(snap: Snapshot, mode: Mode) -> None:
    q = build_queue_problem(build_problem(snap, mode))
    nlp = solve_nlp_fast(q)
    pools = repair(q, nlp.x, nlp.r, nlp.n)  # counts seeded from the relaxation's (solver.queue_seed)
    check(pools)  # memory, compute, load caps, rates conserved, the spread bound (tests/unit/test_instance_bound.py)
    assert np.all(busy(pools.lam(), q.mu) <= q.rho_max * q.cores() * (1 + 1e-6) + 1e-6)
    np.testing.assert_allclose(pools.x.sum(axis=1) + pools.rejected, q.rate, rtol=1e-6, atol=1e-6)
    plan = solve(snap, objective="queue", mode=mode.value)
    assert plan.feasible


def test_effective_servers_share_the_cores_equally_per_instance() -> None:
    """3 + 1 instances on a 2-core node: half a core each; a node with a core per instance keeps its counts."""
    counts = np.array([[3, 1], [1, 1], [0, 0]])
    e = effective_servers(counts, np.array([2.0, np.inf, 1.0]))
    np.testing.assert_allclose(e, [[1.5, 0.5], [1, 1], [0, 0]])


def test_the_running_placement_is_valued_with_the_cores_it_really_has() -> None:
    """Five instances on 2-core n0 under 300 req/s: as independent servers (no cores) they look fine, held to
    their cores they are overloaded, a hard fact the leader acts on at once, and valued far slower."""
    held = {"n0": {"m": 5}}
    blind = value_running(site_lab(300.0, None), held)
    real = value_running(site_lab(300.0, 2.0), held)
    assert blind.overloaded == () and real.overloaded == ("n0/m",)
    assert real.objective_ms > 2 * blind.objective_ms
    fits = value_running(site_lab(150.0, 2.0), {"n0": {"m": 2}})  # within its cores: the same as before
    assert fits.objective_ms == pytest.approx(value_running(site_lab(150.0, None), {"n0": {"m": 2}}).objective_ms)


def test_the_plans_objective_counts_instances_beyond_the_cores_as_shared() -> None:
    """mean_latency_ms on an integer placement: 4 instances on a 1-core node are one server between them."""
    snap = site_lab(60.0, 1.0)
    q = build_queue_problem(build_problem(snap, Mode.MODE2))
    x = np.zeros((q.base.n_classes, 3))
    x[:, 0] = q.rate  # everything on n0
    pools = repair(q, x, np.zeros(q.base.n_classes))
    one = mean_latency_ms(q, pools)
    pools.cap[0, 0] = 60.0 / 4 + 1e-6  # four instances for the same 60 req/s
    assert pools.counts()[0, 0] == 4
    assert mean_latency_ms(q, pools) == pytest.approx(one)  # still one core's worth of service


def test_the_tail_cap_fits_the_rate_into_what_the_cores_serve() -> None:
    """Three 1-core nodes, 250 req/s of a 100 req/s model: the p99 cap is lifted to what three cores carry
    (one instance each, nothing rejected); counted without cores it would plan for instances that add nothing."""
    nodes = tuple(Node(f"n{j}", 4096.0, 4096.0, 100.0, cores=1.0) for j in range(3))
    cost = {"n0": 40.0, "n1": 60.0, "n2": 80.0}
    reqs = tuple(
        Request("m", {n: v + s for n, v in cost.items()}, dict.fromkeys(cost, 10.0), f"s{s}", 250 / 4) for s in range(4)
    )
    snap = Snapshot(nodes, (Model("m", 100.0, 1.0, {"default": 100.0}),), reqs)
    plan = solve(snap, objective="queue-p99", mode="2")
    assert plan.details["tail_cap"] == "kept" and plan.details["rejected_rps"] < 1e-3
    assert {n: c.get("m", 0) for n, c in plan.instances.items()} == {"n0": 1, "n1": 1, "n2": 1}


def test_two_models_on_saturated_half_cores_keep_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three half-core nodes; m1 (24 req/s) fills their cores, m0 (2 req/s) is split over all three: gathering
    m0 into fewer pools needs m1's rate moved off the receiving node first (solver.queue_cores); without
    that step m0 runs 3 instances where the bound allows 2. Found by hypothesis
    (tests/unit/data/queue_cores_bound_shared.json)."""
    data = json.loads((DATA / "queue_cores_bound_shared.json").read_text())
    snap = Snapshot.from_dict(data["snap"])
    q = build_queue_problem(build_problem(snap, Mode(data["mode"])))
    for warm in (True, False):  # the found case is the cold relaxation's point (solver.queue_warm's differs)
        monkeypatch.setattr(queue_warm, "ENABLED", warm)
        nlp = solve_nlp_fast(q)
        pools = repair(q, nlp.x, nlp.r, nlp.n)
        check(pools)
        assert np.all(busy(pools.lam(), q.mu) <= q.rho_max * q.cores() * (1 + 1e-6) + 1e-6)
    monkeypatch.setattr(queue_repair, "_gather_with_room", lambda *_: False)
    monkeypatch.setattr(queue_repair, "_swap_with_room", lambda *_: False)  # which also keeps it now
    monkeypatch.setattr(queue_repair, "SHED_BY_REJECTING", False)  # so does rejecting (solver.queue_reject)
    assert spread_violations(repair(q, nlp.x, nlp.r, nlp.n)) == ["m0 on class default: 3 instances > 1 needed + 1"]


def test_without_repairs_core_checks_the_busy_work_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a core serving a 20 req/s model (9 req/s at 0.9) asked for 10 req/s: the relaxation rejects 1 req/s;
    repair places rejected rate only where the cores take it. With its core checks switched off it puts the
    rest on the same node, and the busy-work check above catches it (found by hypothesis)."""
    node = Node("n0", 2048.0, 2048.0, 100.0, cores=0.5)
    reqs = tuple(Request("m0", {"n0": 1.0}, {"n0": 2.0}, f"c{i}", r) for i, r in enumerate((1.0, 1.0, 8.0)))
    snap = Snapshot((node,), (Model("m0", 100.0, 1.0, {"default": 20.0}),), reqs)
    q = build_queue_problem(build_problem(snap, Mode.MODE2))
    nlp = solve_nlp_fast(q)

    def over(pools: Any) -> bool:
        return bool(np.any(busy(pools.lam(), q.mu) > q.rho_max * q.cores() * (1 + 1e-6) + 1e-6))

    kept = repair(q, nlp.x, nlp.r, nlp.n)
    assert not over(kept) and kept.rejected.sum() == pytest.approx(1.0, abs=1e-5)
    monkeypatch.setattr(queue_repair, "core_room", lambda lam, *_: np.full(lam.shape[0], np.inf))
    monkeypatch.setattr(queue_repair, "over_cores", lambda lam, *_: np.zeros(lam.shape[0], dtype=bool))
    assert over(repair(q, nlp.x, nlp.r, nlp.n))


def test_reported_cores_are_bounded_at_the_edge_and_in_the_snapshot() -> None:
    """A peer's 1e-300 cores divided by zero in repair: the agent drops an out-of-range report (no limit
    assumed), the snapshot refuses it, and the two bounds agree."""
    from agent import placement
    from solver import snapshot
    from solver.errors import SnapshotError

    assert (placement.MIN_CORES, placement.MAX_CORES) == (snapshot.MIN_CORES, snapshot.MAX_CORES)
    base = {"node_id": "n", "mem_available_mb": 1000, "mem_total_mb": 2000, "compute": 4, "instances": []}
    for bad in (1e-300, 0, -1, 1e9, float("nan")):
        assert placement.parse_node_report({**base, "cores": bad}, {"models": {}}).cores is None
    assert placement.parse_node_report({**base, "cores": 2}, {"models": {}}).cores == 2.0
    snap = {"nodes": [{"id": "n", "mem_available_mb": 100.0, "mem_total_mb": 200.0, "compute": 1.0, "cores": 1e-300}],
            "models": [], "requests": []}  # fmt: skip
    with pytest.raises(SnapshotError):
        snapshot.Snapshot.from_dict(snap)
