"""R(S) by Ipopt warm-started from the proven column generation (solver.queue_warm, issue 16 item 5): the
answer is Ipopt's, certified by pricing, and equals the reference NLP's optimum."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from solver import queue_fast, queue_warm
from solver.problem import Mode
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import QueueProblem, solve_restricted
from tests.unit.test_queue_start import cases, instance, keeps_cores, relative_gap

TOL = 1e-6  # relative, on the NLP objective evaluated by one function for both solutions


@pytest.fixture(autouse=True)
def _kkt_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests hold Ipopt's warm path to its KKT point (the polish's fallback, solver.queue_warm.POLISH off);
    tests/unit/test_queue_polish.py holds the polish to its certificate."""
    monkeypatch.setattr(queue_warm, "POLISH", False)


def warm_answers(mp: pytest.MonkeyPatch) -> list[Any]:
    """Every R(S) answer solver.queue_fast takes from the warm path, in order (None where it declined); the patch
    is ``mp``'s (a test's ``monkeypatch``, or a hypothesis example's own ``pytest.MonkeyPatch.context()``)."""
    seen: list[Any] = []
    real = queue_warm.solve_certified

    def kept(q: QueueProblem, allowed: Any) -> Any:
        sol = real(q, allowed)
        seen.append(sol)
        return sol

    mp.setattr(queue_fast, "solve_certified", kept)
    return seen


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_the_warm_path_reaches_the_reference_optimum(q: QueueProblem) -> None:
    """Random thesis instances, both modes, running instances, 1-4 cores per node or none, tail cap or not:
    the relaxation with the warm path equals the reference form's optimum within 1e-6 relative and keeps
    every node's cores, and the warm path answered every R(S) (none fell back: 0 of ~400 in a longer run)."""
    with pytest.MonkeyPatch.context() as mp:  # per example (hypothesis runs them all in one test call)
        seen = warm_answers(mp)
        fast = solve_nlp_fast(q)
        assert relative_gap(q, fast) <= TOL
        assert keeps_cores(q, fast)
        assert all(s is not None for s in seen)


@pytest.mark.parametrize(
    "args",
    [
        (4, 0, 0.15, (1, 2), Mode.MODE1, False),
        (4, 0, 0.0, (0,), Mode.MODE2, False),
        (2, 5, 0.0, (1,), Mode.MODE2, True),
        (4, 3, 0.4, (2,), Mode.MODE1, True),
    ],
)
def test_the_warm_path_answers_with_few_iterations(monkeypatch: pytest.MonkeyPatch, args: tuple[Any, ...]) -> None:
    """Thesis instances where capacity binds (no cores, 1-2 cores, running instances): every R(S) is answered
    by the warm path (no fallback), in fewer Ipopt iterations than the cold path, at the same optimum."""
    q = instance(*args)
    seen = warm_answers(monkeypatch)
    warm = solve_nlp_fast(q)
    assert seen and all(s is not None for s in seen)
    monkeypatch.setattr(queue_warm, "ENABLED", False)
    cold = solve_nlp_fast(q)
    assert warm.iterations < cold.iterations
    assert relative_gap(q, warm) <= TOL and relative_gap(q, cold) <= TOL


def test_the_answer_is_ipopts_on_fewer_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each R(S)'s answer is an Ipopt solve (iterations > 0) on fewer columns than R(S) allows, and its value
    is that of Ipopt's cold solve over every allowed column (what the pricing certifies)."""
    q = instance(4, 0, 0.15, (1, 2), Mode.MODE1, False)
    subs: list[tuple[QueueProblem, Any, Any]] = []
    real = queue_warm.solve_certified

    def kept(sub: QueueProblem, allowed: Any) -> Any:
        sol = real(sub, allowed)
        subs.append((sub, allowed, sol))
        return sol

    monkeypatch.setattr(queue_fast, "solve_certified", kept)
    solve_nlp_fast(q)
    assert subs
    for sub, allowed, sol in subs:
        assert sol is not None and sol.status == "optimal" and sol.iterations > 0
        assert sol.columns < int(allowed.sum())
        cold, _ = solve_restricted(sub, np.flatnonzero(allowed.ravel()))
        assert sol.value == pytest.approx(cold.value, rel=TOL)


def test_the_check_fails_without_the_pricing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With only the columns that carry rate at the LP's optimum and the pricing switched off, the warm answer
    misses the N_MIN instances' slivers of rate: the reference check sees it (and with pricing, not)."""
    q = instance(4, 0, 0.15, (1, 2), Mode.MODE1, False)
    monkeypatch.setattr(queue_warm, "SLIVERS", False)
    monkeypatch.setattr(queue_warm, "REDUCED_TOL", -1.0)
    assert relative_gap(q, solve_nlp_fast(q)) <= TOL
    monkeypatch.setattr(queue_warm, "PRICE", False)
    assert relative_gap(q, solve_nlp_fast(q)) > TOL


def test_a_failed_warm_solve_falls_back_to_the_cold_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ipopt not optimal from the warm start (iteration limit 1): the cold path answers, same optimum."""
    q = instance(4, 0, 0.15, (1, 2), Mode.MODE1, False)
    seen = warm_answers(monkeypatch)
    monkeypatch.setitem(queue_warm.WARM_OPTIONS, "max_iter", 1)
    sol = solve_nlp_fast(q)
    assert seen and all(s is None for s in seen)
    assert relative_gap(q, sol) <= TOL


def test_columns_that_still_price_out_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one warm round allowed and a restricted start that pricing must grow, the path declines."""
    q = instance(4, 0, 0.15, (1, 2), Mode.MODE1, False)
    seen = warm_answers(monkeypatch)
    monkeypatch.setattr(queue_warm, "SLIVERS", False)
    monkeypatch.setattr(queue_warm, "REDUCED_TOL", -1.0)
    monkeypatch.setattr(queue_warm, "MAX_ROUNDS", 1)
    sol = solve_nlp_fast(q)
    assert any(s is None for s in seen)
    assert relative_gap(q, sol) <= TOL


def test_the_options_bench_measures_and_restores() -> None:
    """bench/queue_warm_options.py: the cold path counts more iterations than the defaults, and every option
    it changed is back afterwards."""
    from bench import queue_warm_options as bench

    qs = bench.problems()[10:12]  # two with 2 cores per node
    before = dict(queue_warm.WARM_OPTIONS)
    warm, cold = bench.measure(qs, {}), bench.measure(qs, {"cold": True})
    pushed = bench.measure(qs, {"push": 1e-6, "slivers": False})
    assert warm["declined"] == 0 and warm["median"] < cold["median"]
    assert pushed["median"] > warm["median"]
    assert before == queue_warm.WARM_OPTIONS and queue_warm.SLIVERS and queue_warm.ENABLED


def test_stdout_stays_clean(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """Neither HiGHS nor the warm Ipopt prints: stdout carries `peerserve solve --json`."""
    seen = warm_answers(monkeypatch)
    solve_nlp_fast(instance(4, 0, 0.15, (1, 2), Mode.MODE1, False))
    assert any(s is not None for s in seen)
    assert capfd.readouterr().out == ""


def test_a_warm_point_that_is_not_complementary_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reviewer's random cluster (tests/unit/data/queue_warm_not_complementary.json: one R(S) node, every pool
    pinned at N_MIN by a compute budget of 0): the column generation let a pinned pool carry more than the compact
    NLP's throughput row allows, Ipopt stopped at status 0 after 2 iterations with a row multiplier of 74 on a row
    with 1e-4 slack, and the warm answer sat 3.4e-3 above the optimum. The duality gap check (queue_model.WARM_GAP)
    sends it to the cold path; with the check off the answer is the wrong one. That start was the column
    generation's with budgets a few millionths above the NLP's (``queue_warm.INNER`` off); from the inner budgets'
    start the answer (the warm Ipopt's, 1.4e-4 below the cold path's, which stops early on this N_MIN-scale
    cluster; or, from the first LP's feasible basis, the cold path's again) keeps every row of the compact NLP
    (to Ipopt's 1e-8 bound relaxation) and is no worse than the cold path's."""
    import json
    from pathlib import Path

    from solver import queue_model
    from solver.problem import Mode, build_problem
    from solver.queue_model import build_queue_problem
    from solver.snapshot import Snapshot

    case = json.loads((Path(__file__).parent / "data" / "queue_warm_not_complementary.json").read_text())
    q = build_queue_problem(build_problem(Snapshot.from_dict(case["snap"]), Mode(case["mode"])))
    monkeypatch.setattr(queue_warm, "ENABLED", False)
    cold = queue_fast.solve_nlp_fast(q).value
    monkeypatch.setattr(queue_warm, "ENABLED", True)
    inner = queue_fast.solve_nlp_fast(q)
    assert inner.value <= cold * (1 + 1e-9) and row_excess(q, inner) <= 1e-8
    monkeypatch.setattr(queue_warm, "INNER", False)
    assert queue_fast.solve_nlp_fast(q).value == pytest.approx(cold, rel=1e-6)
    monkeypatch.setattr(queue_model, "WARM_GAP", float("inf"))
    assert queue_fast.solve_nlp_fast(q).value > cold * (1 + 1e-4)


def row_excess(q: QueueProblem, s: Any) -> float:
    """The largest excess of the compact NLP's rows (over every column) at solution s."""
    from solver import queue_model

    lay = queue_model._Layout(q, None, compact=True)
    v = np.zeros(lay.size)
    v[: lay.r0], v[lay.r0 : lay.lam0] = s.x.ravel(), s.r
    v[lay.lam0 : lay.n0], v[lay.n0 : lay.new0] = s.lam.ravel(), s.n.ravel()
    v[lay.new0 : lay.e0] = np.maximum(s.n.ravel()[lay.linked] - q.base.free.ravel()[lay.linked], 0.0)
    rows, cols, vals, cl, cu = queue_model._jacobian(q, lay)
    g = np.bincount(rows, weights=vals * v[cols], minlength=len(cl))
    return float(np.max(np.maximum(cl - g, 0.0) + np.maximum(g - cu, 0.0), initial=0.0))
