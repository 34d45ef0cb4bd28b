"""The lazy-column queue NLP (solver.queue_lazy) reaches the whole NLP's optimum (issue 16)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver import queue_fast, queue_lazy
from solver.problem import Mode, build_problem
from solver.queue_lazy import solve_nlp_lazy
from solver.queue_model import NlpSolution, QueueProblem, build_queue_problem, solve_nlp
from solver.simulate import site_instance, thesis_instance


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.integers(5, 40),
    nodes=st.integers(4, 14),
    seed=st.integers(0, 10_000),
    candidates=st.integers(1, 3),
    mode=st.sampled_from([Mode.MODE1, Mode.MODE2]),
)
def test_lazy_optimum_equals_the_whole_nlps(requests: int, nodes: int, seed: int, candidates: int, mode: Mode) -> None:
    q = build_queue_problem(build_problem(thesis_instance(requests, nodes, seed), mode))
    full = solve_nlp(q)
    lazy = solve_nlp_lazy(q, candidates=candidates, min_pairs=0)
    assert full.status == "optimal" and lazy.status == "optimal"
    assert abs(lazy.value - full.value) <= 1e-6 * abs(full.value)
    np.testing.assert_allclose(lazy.x.sum(axis=1) + lazy.r, q.rate, rtol=1e-6, atol=1e-6)


@functools.cache
def _site() -> tuple[QueueProblem, float]:
    """The 300 x 40 site instance (Mode 2) and the whole NLP's optimum on it, solved once for the two tests below
    (~1.5 s CPU each time; neither test patches what the whole NLP reads, and the problem is only read)."""
    q = build_queue_problem(build_problem(site_instance(300, 40, 20, 1), Mode.MODE2))
    full = solve_nlp(q)
    assert full.status == "optimal"
    return q, full.value


def test_site_instance_closes_by_pricing_without_the_fallback() -> None:
    q, full = _site()
    lazy = solve_nlp_lazy(q, min_pairs=0)
    assert not lazy.fallback and lazy.columns < q.base.n_classes * q.base.n_nodes
    assert abs(lazy.value - full) <= 1e-6 * abs(lazy.value)


def test_pricing_switched_off_misses_the_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    q, full = _site()
    monkeypatch.setattr(queue_lazy, "_price", lambda q, mult, in_lp: np.zeros_like(in_lp))
    blind = solve_nlp_lazy(q, candidates=1, min_pairs=0)
    assert blind.value > full * (1 + 1e-6), "the equality check must fail when pricing is switched off"


def _binding_subproblem(monkeypatch: pytest.MonkeyPatch) -> tuple[QueueProblem, np.ndarray]:
    """The R(S) solver.queue_fast hands on for the bench's 1,000 x 100 site instance at 1 core per node, Mode 2
    (61 nodes, 4,277 allowed columns of 12,078), with its allowed columns."""
    snap = site_instance(1000, 100, 50, 0)
    snap = dataclasses.replace(snap, nodes=tuple(dataclasses.replace(n, cores=1.0) for n in snap.nodes))
    found: list[tuple[QueueProblem, np.ndarray]] = []
    solve_sub = queue_fast._solve_sub

    def spy(q: QueueProblem, allowed: np.ndarray) -> NlpSolution:
        found.append((q, allowed.copy()))
        return solve_sub(q, allowed)

    with monkeypatch.context() as patch:
        patch.setattr(queue_fast, "_solve_sub", spy)
        queue_fast.solve_nlp_fast(build_queue_problem(build_problem(snap, Mode.MODE2)))
    return found[0]


def test_pricing_on_allowed_columns_reaches_the_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only allowed columns take a stream's pricing slots: the lazy optimum of the R(S) above equals the one
    solve over every allowed column within 1e-6 relative; with ruled-out columns taking slots (and then
    dropped) pricing found nothing to add while allowed columns priced out, 4e-4 above the optimum."""
    q, allowed = _binding_subproblem(monkeypatch)
    assert 0 < allowed.sum() < allowed.size
    whole = solve_nlp_lazy(q, min_pairs=10**9, allowed=allowed)
    assert solve_nlp_lazy(q, allowed=allowed).columns == whole.columns  # cored, < LAZY_MIN_PAIRS_CORES: whole
    lazy = solve_nlp_lazy(q, min_pairs=queue_lazy.LAZY_MIN_PAIRS, allowed=allowed)
    assert lazy.columns < whole.columns and not lazy.fallback
    assert abs(lazy.value - whole.value) <= 1e-6 * abs(whole.value)
    price = queue_lazy._price
    monkeypatch.setattr(queue_lazy, "_price", lambda q, mult, blocked: price(q, mult, blocked & allowed) & allowed)
    broken = solve_nlp_lazy(q, min_pairs=queue_lazy.LAZY_MIN_PAIRS, allowed=allowed)
    assert broken.value - whole.value > 1e-5 * abs(whole.value)
