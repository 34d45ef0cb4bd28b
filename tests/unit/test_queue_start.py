"""The compact queue NLP's faster path (issue 16 item 5): solver.queue_start's feasible start, its Ipopt options
and the merged server variables keep the reference form's optimum, and the start keeps every row."""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import queue_model, queue_start, queue_warm
from solver.node_cpu import busy
from solver.problem import Mode, build_problem
from solver.queue_fast import objective_value, solve_nlp_fast
from solver.queue_model import QueueProblem, build_queue_problem, solve_nlp
from solver.simulate import thesis_instance
from solver.snapshot import Snapshot
from solver.tail_cap import with_tail_cap

TOL = 1e-6  # relative, on the NLP objective evaluated by one function for both solutions
SIZES = [(20, 10), (30, 10), (25, 5), (25, 15), (40, 10)]


@functools.cache
def instance(size: int, seed: int, running: float, cores: tuple[int, ...], mode: Mode, tail: bool) -> QueueProblem:
    """A thesis instance with instances running on a share of the nodes and 1-4 cores per node (some none).

    Built once per arguments (a QueueProblem is frozen and no solver writes to it: the tests only read it), so the
    fixed instances these modules share keep one reference optimum (``reference_value``)."""
    requests, nodes = SIZES[size]
    snap = thesis_instance(requests, nodes, seed)
    rng = random.Random(seed)
    new_nodes = tuple(
        dataclasses.replace(
            n,
            cores=None if cores[j % len(cores)] == 0 else float(cores[j % len(cores)]),
            instances={m.name: 1 for m in snap.models if rng.random() < running},
        )
        for j, n in enumerate(snap.nodes)
    )
    q = build_queue_problem(build_problem(dataclasses.replace(snap, nodes=new_nodes), mode))
    return with_tail_cap(q) if tail else q


cases = st.builds(
    instance,
    st.integers(0, len(SIZES) - 1),
    st.integers(0, 10_000),
    st.sampled_from([0.0, 0.15, 0.4]),
    st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple),
    st.sampled_from([Mode.MODE1, Mode.MODE2]),
    st.booleans(),
)


# The reference form's optimum per problem object (kept alive here, so an id is never reused): the reference solve is
# ~95 % of these modules' time (e.g. 9.4 of 9.8 s CPU in test_queue_lp_answer's property) and each module asked for
# it several times per problem. The reference form (queue_model compact=False, IPOPT_NLP) reads none of the switches
# the tests patch (CORE_ROWS, MERGE_SERVERS, FEASIBLE_START, DROP_IDLE_ROWS, UNUSED_POOLS, IPOPT_NLP_COMPACT and
# _idle_budget_rows are the compact form's; queue_warm's and queue_dual's the fast path's), so a second solve is the
# same Ipopt run: the value is the same bit for bit.
_REFERENCE: dict[int, tuple[QueueProblem, float]] = {}


def reference_value(q: QueueProblem) -> float:
    """The reference NLP's optimum (asserted optimal), by solver.queue_fast.objective_value, solved once per problem."""
    if id(q) not in _REFERENCE:
        ref = solve_nlp(q, compact=False)
        assert ref.status == "optimal"
        _REFERENCE[id(q)] = (q, objective_value(q, ref.x, ref.r, ref.n, ref.servers))
    kept, best = _REFERENCE[id(q)]
    assert kept is q
    return best


def relative_gap(q: QueueProblem, solution: queue_model.NlpSolution) -> float:
    """|objective - the reference NLP's| / |the reference's|, both by solver.queue_fast.objective_value."""
    best = reference_value(q)
    assert solution.status == "optimal"
    return abs(objective_value(q, solution.x, solution.r, solution.n, solution.servers) - best) / abs(best)


def keeps_cores(q: QueueProblem, solution: queue_model.NlpSolution) -> bool:
    """Whether every node's busy work stays within rho_max of its cores (as the reference's core rows)."""
    return bool(np.all(busy(solution.lam, q.mu) <= q.rho_max * q.cores() * (1 + 1e-6) + 1e-6))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(cases)
def test_the_compact_form_and_the_shortcut_reach_the_reference_optimum(q: QueueProblem) -> None:
    """Random thesis instances, both modes, running instances, 1-4 cores per node, with and without the tail
    cap: the compact NLP (feasible start, its options, n as the servers) and solver.queue_fast's shortcut
    equal the reference form's optimum within 1e-6 relative and keep every node's cores (the shortcut's R(S) at
    Ipopt's KKT point: the polish, within its own certificate, is tests/unit/test_queue_polish.py's)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(queue_warm, "POLISH", False)
        _reaches_the_reference(q)


def _reaches_the_reference(q: QueueProblem) -> None:
    compact = solve_nlp(q)
    assert relative_gap(q, compact) <= TOL
    assert keeps_cores(q, compact)
    fast = solve_nlp_fast(q)
    assert relative_gap(q, fast) <= TOL
    assert keeps_cores(q, fast)


def test_the_check_fails_without_the_compact_forms_core_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the compact form's core rows switched off (the rows the merged servers rewrote) the same checks
    see the solution overfill cores, below the reference's objective."""
    q = instance(4, 0, 0.15, (1, 2), Mode.MODE1, False)
    monkeypatch.setattr(queue_model, "CORE_ROWS", False)
    broken = solve_nlp(q)
    assert not keeps_cores(q, broken)
    assert relative_gap(q, broken) > 100 * TOL


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(cases)
def test_the_start_keeps_every_row_and_bound(q: QueueProblem) -> None:
    """The start is inside every variable bound and keeps every linear row (assignment and pool balance to
    rounding, throughput, link, memory, compute and cores strictly or within their slack)."""
    assert start_violation(q) <= 1e-9


def test_the_row_check_fails_when_the_start_overfills_its_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the start's pools filled past their throughput row (FILL 1.5) the same check sees it."""
    q = instance(4, 0, 0.15, (1, 2), Mode.MODE1, False)
    assert start_violation(q) <= 1e-9
    monkeypatch.setattr(queue_start, "FILL", 1.5)
    monkeypatch.setattr(queue_start, "MIN_SERVERS", 1.0)  # every pool full enough to reach its row
    assert start_violation(q) > 1e-3


def start_violation(q: QueueProblem) -> float:
    """The largest violation of a row or bound at solver.queue_start's point, in the compact form."""
    lay = queue_model._Layout(q)
    rows, cols, vals, cl, cu = queue_model._jacobian(q, lay)
    x = queue_start.feasible_start(q, lay)
    g = np.bincount(rows, weights=vals * x[cols], minlength=len(cl))
    lb = np.zeros(lay.size)
    lb[lay.n0 : lay.n0 + lay.P] = queue_model.N_MIN
    ub = np.full(lay.size, np.inf)
    ub[: lay.r0] = q.rate[lay.cc]
    ub[lay.r0 : lay.lam0] = q.rate
    scale = 1.0 + np.abs(np.where(np.isfinite(cu), cu, 0.0))
    return float(
        max(
            np.max(np.maximum(cl - g, 0.0) / scale, initial=0.0),
            np.max(np.maximum(g - cu, 0.0) / scale, initial=0.0),
            np.max(np.maximum(lb - x, 0.0), initial=0.0),
            np.max(np.maximum(x - ub, 0.0), initial=0.0),
        )
    )


def test_the_start_saves_iterations_where_cores_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    """40 x 10 with 1 core per node (every node's core row binds): fewer Ipopt iterations than from the plain
    start (an iteration count, not a time), the same optimum."""
    snap = thesis_instance(40, 10, 0)
    snap = dataclasses.replace(snap, nodes=tuple(dataclasses.replace(n, cores=1.0) for n in snap.nodes))
    q = build_queue_problem(build_problem(snap, Mode.MODE1))
    fast = solve_nlp(q)
    monkeypatch.setattr(queue_model, "FEASIBLE_START", False)
    monkeypatch.setattr(queue_model, "MERGE_SERVERS", False)
    plain = solve_nlp(q)
    assert fast.iterations < 0.8 * plain.iterations
    assert fast.value == pytest.approx(plain.value, rel=TOL)


def test_an_empty_snapshot_starts_anywhere() -> None:
    """No streams: the start is the zero-rate point and the NLP answers at once."""
    snap = thesis_instance(5, 3, 0)
    q = build_queue_problem(build_problem(Snapshot(snap.nodes, snap.models, ()), Mode.MODE2))
    assert solve_nlp(q).status == "optimal"


def test_fast_step_computation_keeps_ipopts_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """fast_step_computation (no residual check of each step) changes the work per iteration, not the path:
    the same iteration count and the same optimum as with the check, at 2 cores per node with instances running."""
    assert queue_model.IPOPT_NLP_COMPACT["fast_step_computation"] == "yes"
    assert all(retry["fast_step_computation"] == "no" for retry in queue_model.IPOPT_NLP_RETRIES)  # checked again
    q = instance(4, 3, 0.15, (2,), Mode.MODE1, False)
    fast = solve_nlp(q)
    checked = {k: v for k, v in queue_model.IPOPT_NLP_COMPACT.items() if k != "fast_step_computation"}
    monkeypatch.setattr(queue_model, "IPOPT_NLP_COMPACT", checked)
    slow = solve_nlp(q)
    assert fast.iterations == slow.iterations > 0
    assert fast.value == pytest.approx(slow.value, rel=1e-12)


def test_idle_budget_rows_are_left_out_and_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    """40 x 10, 4 cores per node, instances running: the memory and compute rows the core rows keep from
    binding are left out (fewer rows, the reference optimum); leaving out every memory and compute row
    instead (the bound check switched off) misses it."""
    q = instance(4, 0, 0.15, (4,), Mode.MODE1, False)
    lay = queue_model._Layout(q)
    left_out = len(queue_model._dropped_rows(q, lay))
    monkeypatch.setattr(queue_model, "DROP_IDLE_ROWS", False)
    assert len(queue_model._dropped_rows(q, lay)) < left_out
    monkeypatch.setattr(queue_model, "DROP_IDLE_ROWS", True)
    assert relative_gap(q, solve_nlp(q)) <= TOL
    monkeypatch.setattr(queue_model, "_idle_budget_rows", lambda q, lay, _: np.arange(2 * lay.J))
    assert relative_gap(q, solve_nlp(q)) > 100 * TOL


def _one_column_each(q: QueueProblem) -> np.ndarray:
    """Each stream's cheapest column only (as a first lazy round with one candidate): most pools unreached."""
    p = q.base
    return np.arange(p.n_classes) * p.n_nodes + np.argmin(p.cost, axis=1)


def test_unused_pools_leave_the_nlp_with_the_same_optimum_and_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    """40 x 10 at 2 cores, one column per stream: the pools no column reaches lose their lam, n and two rows;
    the optimum and the assignment and pool rows' multipliers (what pricing reads) are the same as with
    them kept; fixing a reached pool the same way (the reach check switched off for it) misses the optimum."""
    q = instance(4, 1, 0.0, (2,), Mode.MODE2, False)
    cols = _one_column_each(q)
    lay = queue_model._Layout(q, cols)
    assert lay.unused.any()
    left_out = len(queue_model._dropped_rows(q, lay))
    sol, mult = queue_model.solve_restricted(q, cols)
    monkeypatch.setattr(queue_model, "UNUSED_POOLS", False)
    kept_pools = queue_model._Layout(q, cols)
    assert left_out == len(queue_model._dropped_rows(q, kept_pools)) + 2 * int(lay.unused.sum())
    ref, ref_mult = queue_model.solve_restricted(q, cols)
    assert sol.value == pytest.approx(ref.value, rel=TOL)
    head = q.base.n_classes + lay.P  # the assignment and pool rows
    np.testing.assert_allclose(mult[:head], ref_mult[:head], atol=1e-4 * float(np.abs(ref_mult[:head]).max()))
    monkeypatch.setattr(queue_model, "UNUSED_POOLS", True)
    layout = queue_model._Layout
    busiest = int(np.argmax(ref.lam.ravel()))

    def wrong(*args: object, **kwargs: object) -> queue_model._Layout:
        out = layout(*args, **kwargs)  # type: ignore[arg-type]
        out.unused[busiest] = out.pinned[busiest] = True
        return out

    monkeypatch.setattr(queue_model, "_Layout", wrong)
    broken = queue_model.solve_restricted(q, cols)[0].value  # that pool's streams now wait nowhere
    assert abs(broken - ref.value) > 100 * TOL * ref.value
