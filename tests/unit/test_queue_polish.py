"""R(S) by Ipopt's polish, certified by the column generation's bound (solver.queue_warm.POLISH, issue 16 target 5):
Ipopt takes POLISH_ITER Newton steps on the NLP from the LP's point and stops where the Lagrangian bound at the
NLP's budgets puts its point within POLISH_GAP of R(S)'s optimum; every row kept; else Ipopt goes on to its KKT
point, where the answer is as before (the reference optimum within 1e-6)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings

from solver import queue_warm
from solver.problem import Mode
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import NlpSolution, QueueProblem, _breaks_rows
from tests.unit.test_queue_start import cases, instance, keeps_cores, relative_gap  # (its reference: once a problem)
from tests.unit.test_queue_warm import row_excess, warm_answers

CORED = instance(4, 0, 0.0, (2,), Mode.MODE2, False)  # 25 x 10, 2 cores per node
ONE_CORE = instance(4, 3, 0.4, (1,), Mode.MODE1, True)  # Mode 1, instances running, 1 core, the tail cap


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_the_polished_answer_is_within_its_certificate(q: QueueProblem) -> None:
    """Random thesis instances, both modes, running instances, 1-4 cores per node or none, tail cap or not: the
    relaxation with the polish is within POLISH_GAP of the reference NLP's optimum, keeps every node's cores and
    every row of the compact NLP, and the warm path answered every R(S)."""
    with pytest.MonkeyPatch.context() as mp:  # per example (hypothesis runs them all in one test call)
        assert queue_warm.POLISH
        seen = warm_answers(mp)
        sol = solve_nlp_fast(q)
        assert relative_gap(q, sol) <= queue_warm.POLISH_GAP
        assert keeps_cores(q, sol)
        assert row_excess(q, sol) <= 1e-8
        assert all(s is not None for s in seen)


@pytest.mark.parametrize("q", [CORED, ONE_CORE], ids=["2 cores", "1 core, running, tail cap"])
def test_ipopt_polishes_every_cored_relaxation_in_one_step(monkeypatch: pytest.MonkeyPatch, q: QueueProblem) -> None:
    """Where cores bind: every R(S) is Ipopt's point after one iteration (its callbacks count the start too: 2),
    fewer than its KKT point takes, and the answer is within the reference's 1e-6 that the KKT point meets."""
    seen = warm_answers(monkeypatch)
    sol = solve_nlp_fast(q)
    assert seen and all(s is not None and s.iterations == queue_warm.POLISH_ITER + 1 for s in seen)
    assert relative_gap(q, sol) <= queue_warm.POLISH_GAP
    monkeypatch.setattr(queue_warm, "POLISH", False)
    full = warm_answers(monkeypatch)
    kkt = solve_nlp_fast(q)
    assert all(s is not None and s.iterations > queue_warm.POLISH_ITER + 1 for s in full)
    assert relative_gap(q, kkt) <= 1e-6


def test_an_uncertified_polish_goes_on_to_the_kkt_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate no point meets (POLISH_GAP -1): Ipopt goes on from its stopped point to its KKT point on the
    same R(S) (not the cold path), and the answer is the reference optimum within 1e-6 as without the polish."""
    monkeypatch.setattr(queue_warm, "POLISH_GAP", -1.0)
    seen = warm_answers(monkeypatch)
    sol = solve_nlp_fast(CORED)
    assert seen and all(s is not None and s.iterations > queue_warm.POLISH_ITER + 1 for s in seen)
    assert relative_gap(CORED, sol) <= 1e-6


def test_the_certificate_catches_a_polish_far_from_the_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    """The column generation stopped at a 20 % gap: one Ipopt step from its point is not certified (the bound is
    ~that far below), so Ipopt goes on and the answer is at the optimum; the check switched off (POLISH_GAP 1) takes
    the stopped point, which sits above the reference by more than POLISH_GAP."""
    monkeypatch.setattr(queue_warm, "GAP", 0.2)
    monkeypatch.setattr(queue_warm, "POLISH_GAP", 1.0)
    assert relative_gap(CORED, solve_nlp_fast(CORED)) > 1e-4
    monkeypatch.setattr(queue_warm, "POLISH_GAP", 1e-4)
    seen = warm_answers(monkeypatch)
    sol = solve_nlp_fast(CORED)
    assert any(s is not None and s.iterations > queue_warm.POLISH_ITER + 1 for s in seen)
    assert relative_gap(CORED, sol) <= 1e-6


def test_a_stopped_iterate_that_breaks_a_row_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """No excess allowed (POLISH_ROWS -1): every stopped iterate counts as breaking a row, none is taken, and Ipopt
    goes on to its KKT point."""
    monkeypatch.setattr(queue_warm, "POLISH_ROWS", -1.0)
    seen = warm_answers(monkeypatch)
    sol = solve_nlp_fast(CORED)
    assert seen and all(s is not None and s.iterations > queue_warm.POLISH_ITER + 1 for s in seen)
    assert relative_gap(CORED, sol) <= 1e-6


def _rows(g: list[float], cl: list[float], cu: list[float]) -> bool:
    """``_breaks_rows`` at POLISH_ROWS on rows that read one variable each (row i: x_i), so g is the point."""
    m = len(g)
    full = (np.arange(m), np.arange(m), np.ones(m), np.array(cl), np.array(cu))
    return _breaks_rows(full, np.array(g), queue_warm.POLISH_ROWS)


def test_the_row_check_flags_a_row_broken_beyond_its_tolerance() -> None:
    """Relative to max(1, the row's bound): a row broken by 2e-8 is flagged, by 5e-9 not (the reviewer's worst
    stopped iterate), on either side and at a bound below 1 (absolute); an infinite bound is no bound; a NaN in the
    point, or an infinite row value against a finite bound, counts as broken (a NaN excess compared False before)."""
    inf = math.inf
    assert _rows([1e3 * (1 + 2e-8)], [-inf], [1e3]) and not _rows([1e3 * (1 + 5e-9)], [-inf], [1e3])
    assert _rows([-5.0 * (1 + 2e-8)], [-5.0], [inf]) and not _rows([-5.0 * (1 + 5e-9)], [-5.0], [inf])
    assert _rows([0.5 + 2e-8], [0.5], [0.5]) and not _rows([0.5 + 5e-9], [0.5], [0.5])
    assert not _rows([1e300, -1e300, -inf], [-inf, -inf, -inf], [inf, inf, 0.0])
    assert _rows([0.0, math.nan], [-inf, -inf], [1.0, 1.0]) and _rows([inf], [-inf], [1.0])
    assert not _rows([], [], [])


def test_the_certificate_needs_a_finite_bound_and_value() -> None:
    """``_within_gap``: within POLISH_GAP relative to max(1, |value|); a bound of +inf (value - inf = -inf) or a NaN
    on either side certifies nothing."""
    gap = queue_warm.POLISH_GAP
    assert queue_warm._within_gap(100.0, 100.0 * (1 - 0.5 * gap)) and not queue_warm._within_gap(
        100.0, 100.0 * (1 - 2 * gap)
    )
    assert queue_warm._within_gap(0.1, 0.1 - 0.5 * gap) and not queue_warm._within_gap(0.1, 0.1 - 2 * gap)
    for value, lower in ((1.0, math.inf), (1.0, math.nan), (math.nan, 1.0), (math.inf, math.inf), (-math.inf, 0.0)):
        assert not queue_warm._within_gap(value, lower)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
@example(instance(2, 4, 0.4, (1, 2, 0), Mode.MODE1, False))  # the LP's own budgets' bound: 6.4e-7 above the KKT value
def test_the_certificate_bound_is_below_each_relaxations_kkt_value(q: QueueProblem) -> None:
    """Soundness of ``_certified`` on every R(S) it is asked about: its lower bound is at most that R(S)'s KKT value
    (POLISH off), read through the decision: a point POLISH_GAP (relative to max(1, |value|)) plus 1e-9 above the
    KKT value is never certified. The bound at the column generation's own budgets (not the NLP's) lies above it."""
    asked: list[tuple[Any, ...]] = []
    real = queue_warm._certified

    def kept(q: QueueProblem, allowed: Any, proof: Any, sol: NlpSolution) -> bool:
        asked.append((q, allowed, proof, sol))
        return bool(real(q, allowed, proof, sol))

    gap = queue_warm.POLISH_GAP
    with pytest.MonkeyPatch.context() as mp:  # per example (hypothesis runs them all in one test call)
        mp.setattr(queue_warm, "_certified", kept)
        solve_nlp_fast(q)
        mp.setattr(queue_warm, "POLISH", False)
        for rs, allowed, proof, sol in asked:
            kkt = queue_warm.solve_certified(rs, allowed)
            assert kkt is not None and kkt.status == "optimal"
            above = kkt.value + 1e-9 * max(1.0, abs(kkt.value))  # value - gap * max(1, value) lands here
            value = above / (1.0 - gap) if above / (1.0 - gap) >= 1.0 else above + gap
            assert not real(rs, allowed, proof, dataclasses.replace(sol, value=value))
