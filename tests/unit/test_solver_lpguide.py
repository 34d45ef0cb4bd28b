"""The numpy price estimate (solver.lpguide) brackets the LP optimum and only ever chooses columns.

The bounds are checked against the Pyomo model's exact LP optimum (HiGHS) on random instances of both
modes with running instances; the check is shown to catch a greedy bound that ignores capacity and a
lower bound that forgets the budgets' price. The guided LP is smaller and reaches the same optimum.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import Mode, Snapshot, fastlp, lpguide
from solver.problem import Problem, build_problem, rejection_penalty
from solver.simulate import site_instance, thesis_instance
from tests.unit.test_solver_fastlp import REL, gap, instances, pyomo_lp_optimum


def bracketed(p: Problem) -> bool:
    """lower <= exact LP optimum <= upper, within rounding."""
    guide = lpguide.estimate(p, rejection_penalty(p))
    exact = pyomo_lp_optimum(p)
    slack = 1e-9 * max(1.0, abs(exact))
    return guide.lower <= exact + slack and exact <= guide.upper + slack


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from([Mode.MODE1, Mode.MODE2]))
def test_bounds_bracket_the_lp_optimum(snapshot: Snapshot, mode: Mode) -> None:
    p = build_problem(snapshot, mode)
    if p.n_classes and p.n_nodes:
        assert bracketed(p)


CONGESTED = [(50, 10, seed) for seed in range(5)] + [(25, 5, seed) for seed in range(5)]


def test_the_bracket_check_catches_a_greedy_that_ignores_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lpguide, "_room", lambda left, per_request: float("inf"))
    assert not all(bracketed(build_problem(thesis_instance(*size), Mode.MODE1)) for size in CONGESTED)


def test_the_bracket_check_catches_a_lower_bound_without_the_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Lagrangian that charges capacity prices but never credits the budgets overshoots: caught."""
    p = build_problem(thesis_instance(40, 10, 3), Mode.MODE1)
    assert bracketed(p)
    real = lpguide.estimate

    def no_credit(p: Problem, penalty: float) -> lpguide.Guide:
        g = real(p, penalty)
        charged = float(np.minimum(g.reduced, penalty).min(axis=1) @ p.class_count)
        return lpguide.Guide(g.reduced, charged, g.upper)

    monkeypatch.setattr(lpguide, "estimate", no_credit)
    assert not bracketed(p)


def test_guided_columns_give_a_smaller_lp_with_the_same_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    for p in (
        build_problem(thesis_instance(40, 10, 3), Mode.MODE1),
        build_problem(site_instance(600, 60, sites=60, seed=2), Mode.MODE2),
    ):
        guided = fastlp.solve_lp(p)
        monkeypatch.setattr(fastlp, "USE_GUIDE", False)
        plain = fastlp.solve_lp(p)
        monkeypatch.setattr(fastlp, "USE_GUIDE", True)
        assert guided.columns < plain.columns
        assert abs(guided.value - plain.value) <= REL * max(1.0, abs(plain.value))
        assert gap(p) <= REL


def test_a_full_cluster_is_not_trusted_to_subgradient_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests rejected at the optimum: without the smoothed dual (tests/unit/test_solver_nearly_full.py)
    the bounds stay far apart, so the plain candidates are used, and the LP is still exact."""
    monkeypatch.setattr(lpguide, "SMOOTHED", False)
    p = build_problem(thesis_instance(50, 10, 3), Mode.MODE1)
    penalty = rejection_penalty(p)
    assert lpguide.estimate(p, penalty).gap > fastlp.TRUST_GAP
    assert fastlp._guide(p, penalty, np.ones(p.n_nodes, dtype=bool), np.argmin(p.cost, axis=1)) == (None, "none")
    assert gap(p) <= REL


def test_rejection_columns_are_priced_in_where_rejecting_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guided LP starts without rejection columns; with a penalty below every cost the LP must reject
    everything, which only pricing the columns in finds. Switched off, the check catches it. (Every node
    gets rows, so no class is fixed on its cheapest node: fixing assumes placing beats rejecting.)"""
    p = build_problem(thesis_instance(40, 10, 3), Mode.MODE1)
    cheap = 0.5 * float(p.cost.min())
    monkeypatch.setattr(fastlp, "rejection_penalty", lambda p: cheap)
    monkeypatch.setattr(fastlp, "TRUST_GAP", float("inf"))
    monkeypatch.setattr(fastlp, "NEARLY_FULL", 0.0)
    monkeypatch.setattr(fastlp, "LAZY_REJECTION", False)
    every_r = fastlp.solve_lp(p)
    assert every_r.value == pytest.approx(cheap * p.n_requests, rel=REL)
    monkeypatch.setattr(fastlp, "LAZY_REJECTION", True)
    lazy = fastlp.solve_lp(p)
    assert lazy.guided and lazy.rounds > 0
    assert abs(lazy.value - every_r.value) <= REL * every_r.value
    monkeypatch.setattr(fastlp, "_price_rejection", lambda p, *rest: np.zeros(p.n_classes, dtype=bool))
    assert fastlp.solve_lp(p).value > every_r.value * (1 + REL)


def test_the_guided_lp_has_no_rejection_columns_when_the_greedy_places_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = build_problem(thesis_instance(40, 10, 3), Mode.MODE1)
    guide = lpguide.estimate(p, rejection_penalty(p))
    assert guide.placed is not None and guide.gap <= fastlp.TRUST_GAP
    seen: list[int] = []
    real = fastlp._ipopt

    def spy(lp: Any, options: dict[str, Any]) -> Any:
        seen.append(len(lp.r_classes))
        return real(lp, options)

    monkeypatch.setattr(fastlp, "_ipopt", spy)
    assert fastlp.solve_lp(p).guided
    assert seen == [0]
    assert gap(p) <= REL


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_guided_lp_with_running_instances_reaches_the_optimum(seed: int) -> None:
    """Mode 1 reuse (free slots, link rows) under guided columns and lazy rejection columns."""
    snapshot = thesis_instance(40, 12, seed)
    models = [m.name for m in snapshot.models]
    nodes = tuple(replace(n, instances={models[j % len(models)]: 1}) for j, n in enumerate(snapshot.nodes))
    snapshot = replace(snapshot, nodes=nodes)
    p = build_problem(snapshot, Mode.MODE1)
    assert (p.free > 0).any()
    assert fastlp.solve_lp(p).guided
    assert gap(p) <= REL
