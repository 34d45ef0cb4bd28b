"""The warm relaxation's start where cores bind (issue 16 item 5, session 10): the column generation on budgets
inside the NLP's (``queue_warm.INNER``), Ipopt's bounds exact with a smaller barrier parameter
(``queue_warm.EXACT_BOUNDS``) and the first LP from a feasible basis (``queue_dual.FEASIBLE_BASIS``). Each one
keeps the reference NLP's optimum, saves the work it is for (counts, not times), and with it on the reference
check still catches a wrong optimum (the pricing switched off)."""

from __future__ import annotations

from typing import Any

import highspy
import numpy as np
import pytest

from solver import queue_dual, queue_fast, queue_warm
from solver.problem import Mode
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import N_MIN, QueueProblem
from tests.unit.test_queue_cgfast import _subproblems
from tests.unit.test_queue_start import instance, keeps_cores, relative_gap
from tests.unit.test_queue_warm import row_excess


@pytest.fixture(autouse=True)
def _kkt_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests hold Ipopt's warm path to its KKT point (the polish's fallback, solver.queue_warm.POLISH off);
    tests/unit/test_queue_polish.py holds the polish to its certificate."""
    monkeypatch.setattr(queue_warm, "POLISH", False)


TOL = 1e-6  # relative, as tests/unit/test_queue_warm.py
CORED = [
    (4, 0, 0.15, (1, 2), Mode.MODE1, False),
    (2, 5, 0.0, (1,), Mode.MODE2, True),
    (4, 3, 0.4, (2,), Mode.MODE1, True),
    (3, 1, 0.0, (1, 2), Mode.MODE2, False),
]


def _iterations(monkeypatch: pytest.MonkeyPatch, args: tuple[Any, ...]) -> tuple[int, int]:
    """Ipopt's iterations over the relaxation of ``instance(*args)`` and how many R(S) the warm path declined."""
    declined = 0
    real = queue_warm.solve_certified

    def counted(q: QueueProblem, allowed: Any) -> Any:
        nonlocal declined
        sol = real(q, allowed)
        declined += sol is None
        return sol

    monkeypatch.setattr(queue_fast, "solve_certified", counted)
    q = instance(*args)
    sol = solve_nlp_fast(q)
    assert relative_gap(q, sol) <= TOL and keeps_cores(q, sol)
    monkeypatch.setattr(queue_fast, "solve_certified", real)
    return sol.iterations, declined


@pytest.mark.parametrize("switch", ["INNER", "EXACT_BOUNDS"])
def test_each_switch_keeps_the_optimum_and_saves_iterations(monkeypatch: pytest.MonkeyPatch, switch: str) -> None:
    """Four cored thesis instances (1-2 cores, both modes, running instances): with every switch on the warm
    path answers each R(S) at the reference optimum in fewer Ipopt iterations in all than with ``switch`` off
    (also at the reference optimum: the answer is Ipopt's, certified by pricing, whatever the start)."""
    now = [_iterations(monkeypatch, args) for args in CORED]
    monkeypatch.setattr(queue_warm, switch, False)
    before = [_iterations(monkeypatch, args) for args in CORED]
    assert all(d == 0 for _, d in now + before)
    assert sum(i for i, _ in now) < sum(i for i, _ in before)


def test_the_inner_budgets_give_a_start_inside_the_nlps_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every R(S) of the cored instances: the column generation's point with every pool at n >= N_MIN keeps the
    NLP's memory, compute and core rows with ``INNER``, and breaks some by the pools' N_MIN slivers without it."""
    broken = []
    for inner in (True, False):
        for args in CORED[:2]:
            for q, allowed in _subproblems(monkeypatch, instance(*args)):
                found = queue_dual.prove_lp(q, allowed, queue_warm.GAP, queue_warm.EXACT_SLACK, inner)
                assert found is not None
                broken.append((inner, _excess(q, found.solution.n)))
    assert max(e for inner, e in broken if inner) <= 1e-12
    assert max(e for inner, e in broken if not inner) > 1e-7


def _excess(q: QueueProblem, n: np.ndarray) -> float:
    """The largest excess of n (each pool at least N_MIN) over the NLP's memory, compute and core budgets."""
    p = q.base
    n = np.maximum(n, N_MIN)
    new = np.maximum(n - p.free, 0.0)
    mem = new @ p.mem - (np.maximum(p.mem_budget, 0.0) + N_MIN * float(p.mem.sum()))
    comp = new @ p.comp - (np.maximum(p.comp_budget, 0.0) + N_MIN * float(p.comp.sum()))
    core = n.sum(axis=1) - queue_dual.core_capacity(q)
    return float(max(mem.max(), comp.max(), np.where(np.isfinite(core), core, -np.inf).max()))


def test_the_feasible_basis_gives_the_same_lp_in_fewer_simplex_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every R(S) of two cored instances: the first LP from the feasible basis has the slack basis's optimal
    value (within HiGHS's tolerances) and takes fewer simplex iterations in all."""
    counts = {True: 0, False: 0}
    for args in CORED[:2]:
        for q, allowed in _subproblems(monkeypatch, instance(*args)):
            values = {}
            for basis in (True, False):
                lp = queue_dual._Lp(q, allowed, highspy)
                lp.budgets_inner()
                queue_dual._start_levels(q, lp)
                if basis:
                    lp.feasible_basis()
                assert lp.solve() is not None
                values[basis] = lp.h.getInfo().objective_function_value
                counts[basis] += lp.h.getInfo().simplex_iteration_count
            assert values[True] == pytest.approx(values[False], rel=1e-9, abs=1e-9)
    assert counts[True] < counts[False]


def test_with_the_new_start_the_check_still_catches_a_wrong_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every switch on, the warm answer from the columns with rate only (pricing off) is off the reference
    optimum by more than the tolerance: the equality checks above would see a wrong start's wrong answer."""
    q = instance(4, 0, 0.15, (1, 2), Mode.MODE1, False)
    assert queue_warm.INNER and queue_warm.EXACT_BOUNDS and queue_dual.FEASIBLE_BASIS and queue_dual.CAP_LEVEL
    assert relative_gap(q, solve_nlp_fast(q)) <= TOL
    monkeypatch.setattr(queue_warm, "PRICE", False)
    monkeypatch.setattr(queue_warm, "SLIVERS", False)
    assert relative_gap(q, solve_nlp_fast(q)) > TOL


def test_the_warm_answer_keeps_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ipopt's bounds are exact on the warm path: its answer keeps the compact NLP's rows over every column."""
    for args in CORED:
        q = instance(*args)
        assert row_excess(q, solve_nlp_fast(q)) <= 1e-7


def test_the_options_bench_switches_and_restores_the_start() -> None:
    """bench/queue_warm_options.py's ``session9`` row (the three switches off) takes more iterations than the
    defaults on two cored relaxations, and the switches are back on after it."""
    from bench import queue_warm_options as bench

    qs = bench.problems()[10:12]  # two with 2 cores per node
    now, before = bench.measure(qs, {}), bench.measure(qs, {"session9": True})
    assert now["declined"] == 0 and before["declined"] == 0
    assert now["mean"] < before["mean"]
    assert queue_warm.INNER and queue_warm.EXACT_BOUNDS and queue_dual.FEASIBLE_BASIS and queue_dual.CAP_LEVEL


def test_the_cap_level_saves_lp_solves_at_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thesis instances at 1 core per node (every pool whose core row binds runs at its load cap): with the
    first LP's load column at the cap the column generation proves each R(S) in fewer LP solves in all than
    without, and the relaxation is the reference optimum either way."""
    solves = {True: 0, False: 0}
    real = queue_dual._Lp.solve

    def counted(self: Any) -> Any:
        solves[queue_dual.CAP_LEVEL] += 1
        return real(self)

    monkeypatch.setattr(queue_dual._Lp, "solve", counted)
    for cap in (True, False):
        monkeypatch.setattr(queue_dual, "CAP_LEVEL", cap)
        for args in [(4, 0, 0.0, (1,), Mode.MODE1, False), (4, 2, 0.0, (1,), Mode.MODE2, False)]:
            q = instance(*args)
            sol = solve_nlp_fast(q)
            assert relative_gap(q, sol) <= TOL
    assert 0 < solves[True] < solves[False]
