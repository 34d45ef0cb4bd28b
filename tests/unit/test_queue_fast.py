"""The closed-form shortcut of the queue NLP (solver.queue_fast) reaches the reference NLP's optimum (issue 16)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from solver import queue_dual, queue_fast
from solver.problem import Mode, build_problem
from solver.queue_fast import free_pool_terms, objective_value, solve_nlp_fast
from solver.queue_model import QueueProblem, build_queue_problem, solve_nlp
from solver.queueing import PoolDelay
from solver.simulate import thesis_instance
from solver.snapshot import Snapshot
from solver.tail_cap import with_tail_cap


def _with_running(snap: Snapshot, seed: int) -> Snapshot:
    """The snapshot with a few instances already running (Mode 1 reuses them: pools with free > 0)."""
    rng = np.random.default_rng(seed)
    nodes = []
    for node in snap.nodes:
        running = {m.name: 1 for m in snap.models if rng.random() < 0.15}
        nodes.append(dataclasses.replace(node, instances=running))
    return dataclasses.replace(snap, nodes=tuple(nodes))


# Both sides are Ipopt optima at its tolerance: hypothesis found a 1.03e-6 gap on a correct shortcut. A
# broken one is off by percents (recheck off: -4 %, reused pools' columns pruned: +9 %).
TOL = 1e-5


def _gap(q: QueueProblem) -> float:
    """Relative gap of the shortcut's objective over the reference NLP's, both evaluated the same way."""
    ref = solve_nlp(q, compact=False)
    fast = solve_nlp_fast(q)
    assert ref.status == "optimal" and fast.status == "optimal"
    np.testing.assert_allclose(fast.x.sum(axis=1) + fast.r, q.rate, rtol=1e-6, atol=1e-6)
    best = objective_value(q, ref.x, ref.r, ref.n, ref.servers)
    return (objective_value(q, fast.x, fast.r, fast.n, fast.servers) - best) / abs(best)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# a random run found the reference form ending at Ipopt status 3 (search direction too small) here: now retried
@example(requests=34, nodes=5, seed=233, mode=Mode.MODE2, running=True, tail=True, cores=True)
@given(
    requests=st.integers(3, 40),
    nodes=st.integers(2, 14),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from([Mode.MODE1, Mode.MODE2]),
    running=st.booleans(),
    tail=st.booleans(),
    cores=st.booleans(),
)
def test_shortcut_optimum_equals_the_reference_nlps(
    requests: int, nodes: int, seed: int, mode: Mode, running: bool, tail: bool, cores: bool
) -> None:
    snap = thesis_instance(requests, nodes, seed)
    if running:
        snap = _with_running(snap, seed)
    if cores:  # the nodes' cores shared by their instances (solver.node_cpu): the core rows in both forms
        rng = np.random.default_rng(seed)
        snap = dataclasses.replace(
            snap, nodes=tuple(dataclasses.replace(n, cores=float(rng.choice([0.5, 1, 2, 4]))) for n in snap.nodes)
        )
    q = build_queue_problem(build_problem(snap, mode))
    q = with_tail_cap(q) if tail else q
    assert abs(_gap(q)) <= TOL


def test_the_pool_cost_is_the_best_instance_count_of_the_delay() -> None:
    """w and t* against a brute-force minimum over n of D(lam, n) - lam s + beta n, with and without a cap."""
    q = build_queue_problem(build_problem(thesis_instance(6, 3, 0), Mode.MODE2))
    for cap in (None, np.full(q.mu.shape, 0.3)):
        qq = dataclasses.replace(q, load_cap=cap)
        w, t_best = free_pool_terms(qq)
        mu, lam = float(q.mu[0, 0]), 2.5
        d = PoolDelay(mu, q.rho_max)
        ns = np.linspace(lam / (qq.cap()[0, 0] * mu), 50 * lam / mu, 200_001)
        brute = d.value(lam, ns) - lam * 1000.0 / mu + q.instance_cost * ns
        assert math.isclose(float(brute.min()), lam * float(w[0, 0]), rel_tol=1e-6)
        assert math.isclose(float(ns[np.argmin(brute)]), lam / float(t_best[0, 0]), rel_tol=1e-3)


def test_an_uncongested_cluster_needs_no_ipopt() -> None:
    q = build_queue_problem(build_problem(thesis_instance(25, 20, 0), Mode.MODE2))
    fast = solve_nlp_fast(q)
    assert fast.iterations == 0 and fast.columns == 0 and not fast.fallback
    assert abs(_gap(q)) <= TOL


def test_a_congested_cluster_solves_ipopt_on_its_full_nodes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ipopt's path for R(S) (column generation, solver.queue_dual, proves it here first; switched off)."""
    monkeypatch.setattr(queue_dual, "ENABLED", False)
    q = build_queue_problem(build_problem(thesis_instance(40, 10, 1), Mode.MODE1))
    fast = solve_nlp_fast(q)
    assert 0 < fast.columns < q.base.n_classes * q.base.n_nodes and fast.iterations > 0
    assert abs(_gap(q)) <= TOL


@pytest.mark.parametrize("switch", ["RECHECK", "GREEDY_START"])
def test_the_recheck_switched_off_breaks_the_optimum(monkeypatch: pytest.MonkeyPatch, switch: str) -> None:
    """Without the recheck of the dropped rows (and without the greedy start that hides it) the result
    overfills a node: it leaves the NLP's feasible set and the equality check fails."""
    q = build_queue_problem(build_problem(thesis_instance(40, 10, 1), Mode.MODE1))
    monkeypatch.setattr(queue_fast, "RECHECK", False)
    monkeypatch.setattr(queue_fast, "GREEDY_START", switch == "RECHECK")
    fast = solve_nlp_fast(q)
    if switch == "GREEDY_START":
        assert queue_fast._overfilled(q, fast.n).any()
        assert abs(_gap(q)) > TOL, "the equality check must fail when the recheck is switched off"
    else:
        assert abs(_gap(q)) <= TOL  # the greedy start alone happens to cover this instance


def test_pruning_keeps_the_optimum_and_fails_without_the_reuse_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """R(S) leaves out columns whose cost + w is not below the stream's outside option; a pool that reuses
    running instances can be cheaper than w, so its columns must stay (the check fails when they do not)."""
    q = build_queue_problem(build_problem(_with_running(thesis_instance(10, 5, 0), 0), Mode.MODE1))
    assert (q.base.free > 0).any()
    pruned = solve_nlp_fast(q).columns
    assert abs(_gap(q)) <= TOL
    monkeypatch.setattr(queue_fast, "PRUNE", False)
    assert solve_nlp_fast(q).columns > pruned and abs(_gap(q)) <= TOL
    monkeypatch.setattr(queue_fast, "PRUNE", True)
    monkeypatch.setattr(queue_fast, "KEEP_REUSE", False)
    assert _gap(q) > TOL, "the equality check must fail when reused pools' columns are pruned"


def _s_sizes(q: QueueProblem, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The node count of every R(S) the shortcut hands on (solver.queue_fast._solve_sub's problems)."""
    sizes: list[int] = []
    solve_sub = queue_fast._solve_sub

    def spy(sub: QueueProblem, allowed: np.ndarray) -> object:
        sizes.append(sub.base.n_nodes)
        return solve_sub(sub, allowed)

    monkeypatch.setattr(queue_fast, "_solve_sub", spy)
    solve_nlp_fast(q)
    return sizes


def test_nodes_whose_reused_pools_fill_stay_out_of_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """25 x 10, Mode 1, instances running: the nodes whose reused pools the closed form fills past free * t*
    stay out of S (10 nodes -> 5), and the optimum is the reference NLP's."""
    q = build_queue_problem(build_problem(_with_running(thesis_instance(25, 10, 3), 3), Mode.MODE1))
    monkeypatch.setattr(queue_fast, "LINEAR_REUSE", False)
    whole = _s_sizes(q, monkeypatch)
    monkeypatch.setattr(queue_fast, "LINEAR_REUSE", True)
    smaller = _s_sizes(q, monkeypatch)
    assert sum(smaller) < sum(whole)
    assert abs(_gap(q)) <= TOL


def test_the_reused_pool_check_fails_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reused pool taken as linear (REUSE_MARGIN -1): the recheck of pools left short of free * t* brings
    their nodes back into S and the optimum holds; with that check switched off the equality check fails."""
    q = build_queue_problem(build_problem(_with_running(thesis_instance(20, 10, 0), 0), Mode.MODE1))
    monkeypatch.setattr(queue_fast, "REUSE_MARGIN", -1.0)
    assert abs(_gap(q)) <= TOL
    monkeypatch.setattr(queue_fast, "_short_of_reuse", lambda q, *_: np.zeros(q.base.n_nodes, dtype=bool))
    assert abs(_gap(q)) > TOL, "the equality check must fail when reused pools left short stay outside S"
