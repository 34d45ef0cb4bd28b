"""The warm path's cheaper column generation (issue 16 item 5): load columns added in one HiGHS call give the
same LP, a loose gap still ends at the reference optimum (Ipopt and the pricing certify it) with fewer LP
solves, and the bench's switch to the tight column generation restores what it changed."""

from __future__ import annotations

from typing import Any

import highspy
import numpy as np
import pytest

from solver import queue_dual, queue_fast, queue_warm
from solver.problem import Mode
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem
from tests.unit.test_queue_start import instance, relative_gap

TOL = 1e-6  # relative, as tests/unit/test_queue_warm.py


def _subproblems(monkeypatch: pytest.MonkeyPatch, q: QueueProblem) -> list[tuple[QueueProblem, Any]]:
    """The R(S) problems (sub-problem, allowed columns) the fast path hands the warm path for ``q``."""
    seen: list[tuple[QueueProblem, Any]] = []
    real = queue_warm.solve_certified

    def kept(sub: QueueProblem, allowed: Any) -> Any:
        seen.append((sub, allowed))
        return real(sub, allowed)

    monkeypatch.setattr(queue_fast, "solve_certified", kept)
    solve_nlp_fast(q)
    monkeypatch.setattr(queue_fast, "solve_certified", real)
    return seen


def _solved(q: QueueProblem, allowed: Any, batched: bool) -> tuple[Any, ...]:
    """The column generation's first LP with its starting loads added in one call (``batched``) or one by one."""
    lp = queue_dual._Lp(q, allowed, highspy)
    nothing = np.zeros(q.base.n_nodes)
    price = queue_dual._price(q, nothing, nothing, np.full(q.mu.shape, q.instance_cost), nothing)
    loads = [queue_dual.best_load(q, f * price)[0] for f in (1.0, *queue_dual.START_LADDER)]
    if batched:
        lp.add_levels(loads)
    else:
        for t in loads:
            lp.add_level(t)
    solved = lp.solve()
    assert solved is not None
    return solved


def test_load_columns_added_in_one_call_give_the_same_lp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every R(S) of a Mode 1 instance with running instances and cores: the LP with all its starting loads
    added in one HiGHS call has the same optimum (point and row prices) as with one call per load."""
    subs = _subproblems(monkeypatch, instance(4, 0, 0.15, (1, 2), Mode.MODE1, False))
    assert subs
    for q, allowed in subs:
        one, each = _solved(q, allowed, True), _solved(q, allowed, False)
        for a, b in zip(one[:3], each[:3], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
        for a, b in zip(one[3], each[3], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gap", [1e-2, 1e-4])
@pytest.mark.parametrize(
    "args",
    [(4, 0, 0.15, (1, 2), Mode.MODE1, False), (2, 5, 0.0, (1,), Mode.MODE2, True), (4, 3, 0.4, (2,), Mode.MODE1, True)],
)
def test_a_loose_column_generation_still_ends_at_the_reference_optimum(
    monkeypatch: pytest.MonkeyPatch, gap: float, args: tuple[Any, ...]
) -> None:
    """The warm start proven only to ``gap``: the relaxation is still the reference NLP's optimum within 1e-6
    (Ipopt's point, certified by pricing), every R(S) answered by the warm path."""
    q = instance(*args)
    monkeypatch.setattr(queue_warm, "GAP", gap)
    subs = _subproblems(monkeypatch, q)
    assert subs and all(queue_warm.solve_certified(s, a) is not None for s, a in subs)
    assert relative_gap(q, solve_nlp_fast(q)) <= TOL


def test_the_loose_gap_needs_fewer_lp_solves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two of bench/queue_warm_options.py's relaxations (2 cores per node): proven to queue_warm.GAP, their
    column generation needs fewer LP solves than proven to 1e-8."""
    from bench.queue_warm_options import problems

    subs = [sub for q in problems()[10:12] for sub in _subproblems(monkeypatch, q)]
    assert subs
    loose = [queue_dual.prove_lp(s, a, queue_warm.GAP, queue_warm.EXACT_SLACK) for s, a in subs]
    tight = [queue_dual.prove_lp(s, a, 1e-8, queue_warm.EXACT_SLACK) for s, a in subs]
    assert all(p is not None for p in loose + tight)
    assert sum(p.solution.rounds for p in loose if p) < sum(p.solution.rounds for p in tight if p)


def test_the_benchs_tight_switch_restores_the_defaults() -> None:
    """bench/queue_bench.py --tight-cg: on, the column generation runs to 1e-8 with HiGHS's default simplex;
    off again, the defaults are back."""
    from bench import queue_bench

    gap, options = queue_warm.GAP, dict(queue_dual.HIGHS_OPTIONS)
    queue_bench.tight_cg(True)
    assert queue_warm.GAP == 1e-8 and "simplex_strategy" not in queue_dual.HIGHS_OPTIONS
    queue_bench.tight_cg(False)
    assert gap == queue_warm.GAP and options == queue_dual.HIGHS_OPTIONS


def test_the_options_bench_sets_and_restores_the_gap() -> None:
    """bench/queue_warm_options.py's ``gap`` change: the warm path answers at 1e-8 as at the default, and the
    default gap is back afterwards."""
    from bench import queue_warm_options as bench

    qs = bench.problems()[10:11]
    gap = queue_warm.GAP
    tight = bench.measure(qs, {"gap": 1e-8})
    assert tight["declined"] == 0 and tight["median"] > 0
    assert gap == queue_warm.GAP
