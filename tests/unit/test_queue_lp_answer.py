"""R(S) answered by the column generation's point where its own bound certifies it (solver.queue_warm.LP_ANSWER,
issue 16 item 5): within ANSWER_GAP of the reference NLP's optimum, every row kept, no Ipopt; an unchecked
certificate is caught."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from solver import queue_warm
from solver.problem import Mode
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem
from tests.unit.test_queue_start import cases, instance, keeps_cores, relative_gap
from tests.unit.test_queue_warm import row_excess, warm_answers

CORED = instance(4, 0, 0.0, (2,), Mode.MODE2, False)  # 25 x 10, 2 cores per node


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_the_certified_answer_is_the_reference_optimum(q: QueueProblem) -> None:
    """Random thesis instances, both modes, running instances, 1-4 cores per node or none, tail cap or not: with the
    LP's answer the relaxation is within ANSWER_GAP of the reference NLP's optimum, keeps every node's cores and
    every row of the compact NLP."""
    with pytest.MonkeyPatch.context() as mp:  # per example (hypothesis runs them all in one test call)
        mp.setattr(queue_warm, "LP_ANSWER", True)
        sol = solve_nlp_fast(q)
        assert relative_gap(q, sol) <= queue_warm.ANSWER_GAP
        assert keeps_cores(q, sol)
        assert row_excess(q, sol) <= 1e-9


def test_cored_relaxations_are_answered_without_ipopt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where cores bind (2 per node): every R(S) is the LP's certified point (no Ipopt
    iteration), within ANSWER_GAP of the reference, and the warm Ipopt's answer is within 1e-6 of it."""
    monkeypatch.setattr(queue_warm, "LP_ANSWER", True)
    seen = warm_answers(monkeypatch)
    sol = solve_nlp_fast(CORED)
    assert seen and all(s is not None and s.iterations == 0 for s in seen)
    assert sol.iterations == 0 and relative_gap(CORED, sol) <= queue_warm.ANSWER_GAP
    monkeypatch.setattr(queue_warm, "LP_ANSWER", False)
    ipopt = solve_nlp_fast(CORED)
    assert ipopt.iterations > 0 and relative_gap(CORED, ipopt) <= 1e-6


def test_an_unchecked_certificate_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The column generation stopped at a 20 % gap: unchecked, its point is the answer and sits above the reference
    by more than ANSWER_GAP; checked, the certificate fails and Ipopt answers from that point, at the optimum."""
    monkeypatch.setattr(queue_warm, "LP_ANSWER", True)
    monkeypatch.setattr(queue_warm, "GAP", 0.2)
    monkeypatch.setattr(queue_warm, "CHECK_ANSWER", False)
    assert relative_gap(CORED, solve_nlp_fast(CORED)) > queue_warm.ANSWER_GAP
    monkeypatch.setattr(queue_warm, "CHECK_ANSWER", True)
    seen = warm_answers(monkeypatch)
    sol = solve_nlp_fast(CORED)
    assert any(s is not None and s.iterations > 0 for s in seen)
    assert relative_gap(CORED, sol) <= 1e-6


def test_off_by_default() -> None:
    """The relaxation stays Ipopt's (issue 16 item 1) unless switched on: the answers differ in plans (README)."""
    assert queue_warm.LP_ANSWER is False


def test_the_bench_compares_both_answers_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/queue_relax_bench.py on one cored case: the Ipopt way iterates, the LP way does not, the plans are
    compared per seed, and the switch is back afterwards."""
    from bench import queue_relax_bench as bench
    from solver.simulate import thesis_instance

    monkeypatch.setattr(bench, "cases", lambda seeds: [("25 x 10", [thesis_instance(25, 10, 0)], "2")])
    rows = bench.measure(1, 2.0)
    assert queue_warm.LP_ANSWER is False
    (row,) = rows
    assert row["ipopt_ipopt_iterations"] > 0 and row["lp_ipopt_iterations"] == 0
    assert len(row["objective_change"]) == 1 and abs(row["objective_change"][0]) < 0.5
    assert bench.summary(rows)["plans"] == 1
